#!/usr/bin/env bash
# Installs (once) the system packages the build and tests need beyond Rust and the Python
# venv:
#   * gloo's headers from Debian's libgloo-dev, which dino-dist's c10d shim compiles against
#     (the torch wheel ships c10d's headers but not gloo's; the gloo code is libtorch's).
#     DINO_GLOO_INCLUDE, the folder holding gloo/, skips the package on other systems.
#   * Debian's chromium, the headless browser of the `dino-run serve` page test
#     (tests/tests/serve_page.rs, which says it was skipped when there is none). Not
#     required: without root or apt-get only a note is printed.
#   * Debian's nasm, with which the JPEG decoder (libjpeg-turbo's, built by the mozjpeg
#     crate) gets its SIMD code: the same pixels, faster. Optional like chromium.
#   * with --cross-aarch64 (make aarch64): instead, Debian's aarch64 cross compiler and
#     libraries and qemu-user, for scripts/cross_aarch64.sh (which names what is missing).
set -euo pipefail
if [ "${1:-}" = --cross-aarch64 ]; then
  cross=()
  command -v aarch64-linux-gnu-gcc >/dev/null || cross+=(gcc-aarch64-linux-gnu)
  [ -e /usr/aarch64-linux-gnu/lib/libstdc++.so.6 ] || cross+=(g++-aarch64-linux-gnu)
  command -v qemu-aarch64 >/dev/null || command -v qemu-aarch64-static >/dev/null || cross+=(qemu-user)
  if [ ${#cross[@]} -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "dino-rs: installing ${cross[*]} (the aarch64 cross build and its emulator)" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends "${cross[@]}" >&2
  fi
  exit 0
fi
include="${DINO_GLOO_INCLUDE:-/usr/include}"
packages=()
if [ ! -f "$include/gloo/config.h" ]; then
  if [ -n "${DINO_GLOO_INCLUDE:-}" ]; then
    echo "dino-rs: DINO_GLOO_INCLUDE=$include has no gloo/config.h" >&2
    exit 1
  fi
  packages+=(libgloo-dev)
fi
can_install=false
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  can_install=true
fi
if ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null; then
  if $can_install; then
    packages+=(chromium)
  else
    echo "dino-rs: no chromium: the serve page test will be skipped (apt-get install chromium)" >&2
  fi
fi
if ! command -v nasm >/dev/null && $can_install; then
  packages+=(nasm)
fi
if [ ${#packages[@]} = 0 ]; then
  exit 0
fi
if $can_install; then
  echo "dino-rs: installing ${packages[*]} (gloo headers for the c10d shim, browser for the page test, assembler for the JPEG decoder's SIMD)" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends "${packages[@]}" >&2
  exit 0
fi
cat >&2 <<'MSG'
dino-rs: gloo headers missing (/usr/include/gloo). Install Debian's libgloo-dev:
    sudo apt-get install libgloo-dev
or set DINO_GLOO_INCLUDE to a folder holding gloo/ (headers only are needed).
MSG
exit 1
