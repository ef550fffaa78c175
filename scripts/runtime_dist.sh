#!/usr/bin/env bash
# The runtime-only install: dino-run and dino-export with ONNX Runtime's library beside them,
# a README and the licences, as target/dist/dino-rs-runtime-<version>-<target>/ and a .tar.gz
# of it. No Python, torch or environment variable is needed where it is unpacked.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: scripts/runtime_dist.sh [--target TRIPLE] [--prebuilt DIR] [--out DIR]

  --target TRIPLE  Rust target of the binaries (default: the host's). For another target
                   the onnxruntime==1.31.1 wheel of that platform is fetched with pip;
                   the host's comes from the project's venv ($DINO_RS_VENV).
  --prebuilt DIR   take dino-run and dino-export from DIR instead of building them
                   (the tests use target/release); default: build them in release in
                   target/dist-build with no build-time venv path baked in and the source
                   paths remapped, so the binaries name nothing of the build machine.
  --out DIR        where the folder and the tarball go (default: target/dist)

Prints the sizes of the folder and of the tarball, and the tarball's path last.
EOF
}

ORT_VERSION=1.31.1
LIB="libonnxruntime.so.$ORT_VERSION"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

TARGET=""
PREBUILT=""
OUT="target/dist"
while [[ $# -gt 0 ]]; do
    case "$1" in
        --target) TARGET="${2:?--target needs a triple}"; shift 2 ;;
        --prebuilt) PREBUILT="${2:?--prebuilt needs a folder}"; shift 2 ;;
        --out) OUT="${2:?--out needs a folder}"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "runtime_dist.sh: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
    esac
done

HOST="$(rustc -vV | sed -n 's/^host: //p')"
TARGET="${TARGET:-$HOST}"
VERSION="$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml)"
[[ -n "$VERSION" ]] || { echo "runtime_dist.sh: no version in Cargo.toml's [workspace.package]" >&2; exit 1; }
NAME="dino-rs-runtime-$VERSION-$TARGET"

# --- the binaries -----------------------------------------------------------------------
if [[ -n "$PREBUILT" ]]; then
    BIN_DIR="$PREBUILT"
else
    CARGO_HOME_DIR="${CARGO_HOME:-$HOME/.cargo}"
    echo "building dino-run and dino-export for $TARGET (release, target/dist-build)" >&2
    DINO_RS_BAKE_ORT=0 CARGO_TARGET_DIR="$ROOT/target/dist-build" \
        RUSTFLAGS="${RUSTFLAGS:-} --remap-path-prefix=$CARGO_HOME_DIR=/cargo --remap-path-prefix=$ROOT=/dino-rs" \
        "${CARGO:-cargo}" build --release -p dino-runtime -p dino-export --bins --target "$TARGET"
    BIN_DIR="$ROOT/target/dist-build/$TARGET/release"
fi
for b in dino-run dino-export; do
    [[ -x "$BIN_DIR/$b" ]] || { echo "runtime_dist.sh: $BIN_DIR/$b is missing (not built?)" >&2; exit 1; }
done

# --- ONNX Runtime: the pinned wheel's library and licence --------------------------------
if [[ "$TARGET" == "$HOST" ]]; then
    PY="${DINO_RS_VENV:+$DINO_RS_VENV/bin/python3}"
    PY="${PY:-${PYTHON:-python3}}"
    ORT_PKG="$("$PY" -c 'import os, onnxruntime as o; assert o.__version__ == "'"$ORT_VERSION"'", o.__version__; print(os.path.dirname(o.__file__))')" || {
        echo "runtime_dist.sh: onnxruntime==$ORT_VERSION not importable by $PY (run make once to create the venv)" >&2
        exit 1
    }
else
    case "$TARGET" in
        aarch64-unknown-linux-gnu) PLATFORM=manylinux_2_28_aarch64 ;;
        x86_64-unknown-linux-gnu) PLATFORM=manylinux_2_28_x86_64 ;;
        *) echo "runtime_dist.sh: no onnxruntime wheel platform known for $TARGET" >&2; exit 1 ;;
    esac
    WHEELS="$ROOT/target/dist/wheels/$PLATFORM"
    mkdir -p "$WHEELS"
    if ! ls "$WHEELS"/onnxruntime-"$ORT_VERSION"-*.whl >/dev/null 2>&1; then
        "${PYTHON:-python3}" -m pip download --no-deps --only-binary=:all: --platform "$PLATFORM" \
            "onnxruntime==$ORT_VERSION" -d "$WHEELS" >&2
    fi
    WHEEL="$(ls "$WHEELS"/onnxruntime-"$ORT_VERSION"-*.whl | head -n 1)"
    ORT_UNPACKED="$WHEELS/unpacked"
    rm -rf "$ORT_UNPACKED"
    unzip -q -o "$WHEEL" "onnxruntime/capi/$LIB" onnxruntime/LICENSE onnxruntime/ThirdPartyNotices.txt -d "$ORT_UNPACKED"
    ORT_PKG="$ORT_UNPACKED/onnxruntime"
fi
for f in "capi/$LIB" LICENSE ThirdPartyNotices.txt; do
    [[ -f "$ORT_PKG/$f" ]] || { echo "runtime_dist.sh: $ORT_PKG/$f is missing from the onnxruntime wheel" >&2; exit 1; }
done

# All three files must be built for the target (no x86-64 binaries beside an aarch64 library).
case "$TARGET" in
    x86_64-*) MACHINE="X86-64" ;;
    aarch64-*) MACHINE="AArch64" ;;
    *) MACHINE="" ;;
esac
if [[ -n "$MACHINE" ]]; then
    for f in "$BIN_DIR/dino-run" "$BIN_DIR/dino-export" "$ORT_PKG/capi/$LIB"; do
        got="$(readelf -h "$f" 2>/dev/null | sed -n 's/^ *Machine: *//p')"
        [[ "$got" == *"$MACHINE"* ]] ||
            { echo "runtime_dist.sh: $f is not an $MACHINE ELF file (target $TARGET): ${got:-not ELF}" >&2; exit 1; }
    done
fi

# --- the folder ---------------------------------------------------------------------------
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
DIR="$OUT/$NAME"
rm -rf "$DIR" "$DIR.tar.gz"
mkdir -p "$DIR/licenses"
install -m 755 "$BIN_DIR/dino-run" "$BIN_DIR/dino-export" "$DIR/"
install -m 644 "$ORT_PKG/capi/$LIB" "$DIR/$LIB"
# Symbols are not needed to run (panic messages keep their text); the wheel's library is stripped.
case "$TARGET" in
    "$HOST") STRIP="${STRIP:-strip}" ;;
    aarch64-unknown-linux-gnu) STRIP="${STRIP:-aarch64-linux-gnu-strip}" ;;
    *) STRIP="${STRIP:-}" ;;
esac
if [[ -n "$STRIP" ]] && command -v "$STRIP" >/dev/null; then
    "$STRIP" "$DIR/dino-run" "$DIR/dino-export"
else
    echo "runtime_dist.sh: no strip tool for $TARGET (${STRIP:-none}): binaries left with their symbols" >&2
fi
install -m 644 "$ORT_PKG/LICENSE" "$DIR/licenses/onnxruntime-LICENSE.txt"
install -m 644 "$ORT_PKG/ThirdPartyNotices.txt" "$DIR/licenses/onnxruntime-ThirdPartyNotices.txt"
install -m 644 LICENSE "$DIR/licenses/dino-rs-LICENSE.txt"

cat >"$DIR/README.txt" <<EOF
dino-rs runtime $VERSION for $TARGET
====================================

DINO self-supervised Vision Transformers on ONNX Runtime, without Python or torch:

  dino-export                  teacher checkpoint (safetensors or .pth) -> self-describing ONNX model
  dino-run                     embeddings, k-NN classification, search, attention maps, HTTP serving
  $LIB   ONNX Runtime $ORT_VERSION (CPU), from the onnxruntime==$ORT_VERSION PyPI wheel

dino-run loads $LIB from its own folder: keep the three files together and
nothing needs setting (--ort-lib or ORT_DYLIB_PATH choose another library, e.g. the
onnxruntime-gpu build for --device cuda). Neither binary links libtorch.

Usage
-----
  ./dino-export --checkpoint teacher.safetensors --to model.onnx
  ./dino-export --checkpoint teacher.safetensors --to model-fp16.onnx --precision fp16
  ./dino-run index --model model.onnx --images train/ --out gallery.dgal   (train/<class>/<image>)
  ./dino-run classify --model model.onnx --gallery gallery.dgal photo.jpg --topk 3
  ./dino-run embed --model model.onnx photo.jpg --json
  ./dino-run serve --model model.onnx --gallery gallery.dgal --bind 127.0.0.1:8080
  curl --data-binary @photo.jpg 127.0.0.1:8080/v1/classify?topk=3

Every command has --help. dino-run caches optimised graphs under \$XDG_CACHE_HOME/dino-rs/ort
(else ~/.cache/dino-rs/ort; --no-cache turns it off).

Licences
--------
  licenses/dino-rs-LICENSE.txt                  dino-rs: Apache License 2.0
  licenses/onnxruntime-LICENSE.txt              ONNX Runtime: MIT License (Microsoft Corporation)
  licenses/onnxruntime-ThirdPartyNotices.txt    the notices of the code ONNX Runtime includes
EOF

# --- the tarball: sorted, fixed owner and date, so equal inputs give equal archives ---------
MTIME="@$(git log -1 --format=%ct 2>/dev/null || echo 0)"
tar -C "$OUT" --sort=name --mtime="$MTIME" --owner=0 --group=0 --numeric-owner \
    --format=gnu -cf - "$NAME" | gzip -n -9 >"$DIR.tar.gz"

echo "folder:  $(du -sh --apparent-size "$DIR" | cut -f1)  ($(du -sb "$DIR" | cut -f1) bytes)  $DIR" >&2
echo "tarball: $(du -sh --apparent-size "$DIR.tar.gz" | cut -f1)  ($(stat -c %s "$DIR.tar.gz") bytes)  $DIR.tar.gz" >&2
echo "$DIR.tar.gz"
