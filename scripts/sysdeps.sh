#!/usr/bin/env bash
# Installs (once) the system packages the build needs beyond Rust and the Python venv:
# gloo's headers from Debian's libgloo-dev, which dino-dist's c10d shim compiles against
# (the torch wheel ships c10d's headers but not gloo's; the gloo code is libtorch's).
# DINO_GLOO_INCLUDE, the folder holding gloo/, skips the package on other systems.
set -euo pipefail
include="${DINO_GLOO_INCLUDE:-/usr/include}"
if [ -f "$include/gloo/config.h" ]; then
  exit 0
fi
if [ -n "${DINO_GLOO_INCLUDE:-}" ]; then
  echo "dino-rs: DINO_GLOO_INCLUDE=$include has no gloo/config.h" >&2
  exit 1
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "dino-rs: installing libgloo-dev (gloo headers for the c10d shim)" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends libgloo-dev >&2
  exit 0
fi
cat >&2 <<'MSG'
dino-rs: gloo headers missing (/usr/include/gloo). Install Debian's libgloo-dev:
    sudo apt-get install libgloo-dev
or set DINO_GLOO_INCLUDE to a folder holding gloo/ (headers only are needed).
MSG
exit 1
