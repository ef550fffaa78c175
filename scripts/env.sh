# Source this to work on dino-rs by hand with the same environment as the Makefile:
#   source scripts/env.sh && cargo test --release -p dino-models
DINO_RS_VENV="$("$(dirname "${BASH_SOURCE[0]}")/venv.sh")"
export DINO_RS_VENV
export PATH="$DINO_RS_VENV/bin:$PATH"
export PYTHON="$DINO_RS_VENV/bin/python"
export LIBTORCH_USE_PYTORCH=1
