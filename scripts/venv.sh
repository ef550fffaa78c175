#!/usr/bin/env bash
# Creates (once) and prints the path of the Python venv that provides libtorch and
# libonnxruntime. It lives in a cache folder keyed by the pinned requirements, so fresh
# clones reuse it and a change of pins builds a new one beside it. A venv whose install
# did not finish (no `.complete` marker) is rebuilt from scratch.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
req="$here/python/requirements.txt"
key="$(sha256sum "$req" | cut -c1-12)"
cache="${DINO_RS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/dino-rs}"
venv="$cache/venv-$key"
if [ ! -f "$venv/.complete" ]; then
  echo "dino-rs: creating the Python venv $venv (torch, onnxruntime: several GB, once)" >&2
  mkdir -p "$cache"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req" >&2
  touch "$venv/.complete"
fi
echo "$venv"
