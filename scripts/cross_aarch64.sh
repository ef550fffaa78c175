#!/usr/bin/env bash
# Cross-builds the runtime-only install for aarch64-unknown-linux-gnu (a Raspberry Pi 4/5,
# Jetson or Graviton running 64-bit Linux) with Debian's cross toolchain, puts the aarch64
# onnxruntime==1.31.1 wheel's library beside the binaries (scripts/runtime_dist.sh), and runs
# the result under qemu-user: export of demo/teacher.safetensors, embed and classify of a
# vendored image. Stops first, naming each missing piece and how to add it.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: scripts/cross_aarch64.sh [--out DIR]

  --out DIR  where the folder and the tarball go (default: target/dist)

Needs: Rust's standard library for aarch64-unknown-linux-gnu (rustup target add
aarch64-unknown-linux-gnu), Debian's gcc-aarch64-linux-gnu and g++-aarch64-linux-gnu
(the linker, the C compiler for the vendored libjpeg-turbo, and the aarch64 libc/libstdc++
qemu runs the binaries with), qemu-user (qemu-aarch64), and pip (the aarch64 wheel).
EOF
}

TARGET=aarch64-unknown-linux-gnu
SYSROOT=/usr/aarch64-linux-gnu
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT="target/dist"
while [[ $# -gt 0 ]]; do
    case "$1" in
        --out) OUT="${2:?--out needs a folder}"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "cross_aarch64.sh: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
    esac
done

missing=()
if command -v rustup >/dev/null; then
    rustup target list --installed | grep -qx "$TARGET" ||
        missing+=("Rust's standard library for $TARGET: rustup target add $TARGET (downloaded from the Rust project's server)")
elif [[ ! -d "$(rustc --print sysroot)/lib/rustlib/$TARGET" ]]; then
    missing+=("Rust's standard library for $TARGET in $(rustc --print sysroot)/lib/rustlib (no rustup: install the toolchain's rust-std-$TARGET component)")
fi
command -v aarch64-linux-gnu-gcc >/dev/null ||
    missing+=("the cross C compiler and linker aarch64-linux-gnu-gcc: apt-get install gcc-aarch64-linux-gnu")
[[ -e "$SYSROOT/lib/libstdc++.so.6" ]] ||
    missing+=("the aarch64 libstdc++ ONNX Runtime needs under qemu ($SYSROOT/lib/libstdc++.so.6): apt-get install g++-aarch64-linux-gnu")
QEMU="$(command -v qemu-aarch64 || command -v qemu-aarch64-static || true)"
[[ -n "$QEMU" ]] || missing+=("qemu-aarch64 to run the aarch64 binaries here: apt-get install qemu-user")
if [[ ${#missing[@]} -gt 0 ]]; then
    echo "cross_aarch64.sh: cannot cross-build for $TARGET; missing:" >&2
    printf '  - %s\n' "${missing[@]}" >&2
    exit 1
fi

export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
export AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar
TARBALL="$(scripts/runtime_dist.sh --target "$TARGET" --out "$OUT" | tail -n 1)"
DIR="${TARBALL%.tar.gz}"
for f in dino-run dino-export libonnxruntime.so.1.31.1; do
    readelf -h "$DIR/$f" | grep -q 'Machine: *AArch64' ||
        { echo "cross_aarch64.sh: $DIR/$f is not an aarch64 ELF file" >&2; exit 1; }
done

# The aarch64 build under qemu-user, with the cross toolchain's libc and libstdc++.
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
run() { "$QEMU" -L "$SYSROOT" "$@"; }
run "$DIR/dino-export" --checkpoint demo/teacher.safetensors --to "$WORK/model.onnx"
run "$DIR/dino-run" --no-cache index --model "$WORK/model.onnx" --images demo/data/train --out "$WORK/gallery.dgal"
QUERY="$(find demo/data/test -name '*.jpg' | sort | head -n 1)"
run "$DIR/dino-run" --no-cache classify --model "$WORK/model.onnx" --gallery "$WORK/gallery.dgal" "$QUERY" --topk 3
run "$DIR/dino-run" --no-cache embed --model "$WORK/model.onnx" "$QUERY" --json | head -c 200
echo
echo "aarch64 runtime install: $TARBALL (ran under $QEMU)" >&2
