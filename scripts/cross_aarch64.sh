#!/usr/bin/env bash
# Cross-builds the runtime-only install for aarch64-unknown-linux-gnu (a Raspberry Pi 4/5,
# Jetson or Graviton running 64-bit Linux) with Debian's cross toolchain, puts the aarch64
# onnxruntime==1.31.1 wheel's library beside the binaries (scripts/runtime_dist.sh), and runs
# the result under qemu-user against the host's build: export of demo/teacher.safetensors
# (fp32 and int8, the same bytes), index, classify and embed of vendored images (within
# 1e-4), int8 embeddings (cosine >= 0.999 to fp32). Stops first, naming each missing piece.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: scripts/cross_aarch64.sh [--out DIR]

  --out DIR  where the folder and the tarball go (default: target/dist)

Needs: Rust's standard library for aarch64-unknown-linux-gnu (rustup's target where it is
installed, else Debian's rustc-web and libstd-rust-web-dev:arm64, fetched and unpacked by
scripts/debian_rust_aarch64.sh), Debian's gcc-aarch64-linux-gnu and g++-aarch64-linux-gnu
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
# Rust for aarch64: rustup's target where it is installed, else Debian's rustc-web with its
# arm64 standard library (scripts/debian_rust_aarch64.sh), so that only the registries are used.
if command -v rustup >/dev/null && rustup target list --installed | grep -qx "$TARGET"; then
    echo "cross_aarch64.sh: using rustup's $TARGET standard library" >&2
elif [[ -d "$(rustc --print sysroot)/lib/rustlib/$TARGET" ]]; then
    echo "cross_aarch64.sh: using $(rustc --print sysroot)'s $TARGET standard library" >&2
elif RUSTC="$(scripts/debian_rust_aarch64.sh | tail -n 1)"; then
    export RUSTC
    echo "cross_aarch64.sh: using Debian's rustc-web, $("$RUSTC" --version)" >&2
else
    missing+=("Rust's standard library for $TARGET: scripts/debian_rust_aarch64.sh failed (above)")
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

# The host's build, to compare with: the same binaries for x86-64, with the venv's library.
echo "cross_aarch64.sh: building the host's dino-run and dino-export to compare with" >&2
env -u RUSTC "${CARGO:-cargo}" build --release -q -p dino-runtime -p dino-export --bins
HOST_BIN="$ROOT/target/release"
HOST_RUN=("$HOST_BIN/dino-run")
if [[ -n "${DINO_RS_VENV:-}" ]]; then
    HOST_RUN=(env "ORT_DYLIB_PATH=$(ls "$DINO_RS_VENV"/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.1.31.1 | head -n 1)" "${HOST_RUN[@]}")
fi

# qemu-user 7.2 shows the guest the host's /proc/cpuinfo (x86's), which ONNX Runtime's CPU
# detection (the cpuinfo library) cannot parse: it dereferences a null pointer. So each
# aarch64 run sees, in a private mount namespace, the /proc/cpuinfo of the CPU qemu emulates:
# a Cortex-A76 (Raspberry Pi 5), whose dot-product instructions ONNX Runtime's kernels use.
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
for n in 0 1; do
    printf '%s\n' "processor	: $n" "BogoMIPS	: 108.00" \
        "Features	: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp" \
        "CPU implementer	: 0x41" "CPU architecture: 8" "CPU variant	: 0x4" "CPU part	: 0xd0b" \
        "CPU revision	: 1" ""
done >"$WORK/cpuinfo"
if [[ "$(id -u)" == 0 ]]; then UNSHARE=(unshare -m); else UNSHARE=(unshare -r -m); fi
"${UNSHARE[@]}" true 2>/dev/null || {
    echo "cross_aarch64.sh: cannot make a mount namespace ('${UNSHARE[*]}' failed): run as root, or allow unprivileged user namespaces" >&2
    exit 1
}
run() {
    QEMU_CPU=cortex-a76 "${UNSHARE[@]}" sh -c 'mount --bind "$0" /proc/cpuinfo && exec "$@"' \
        "$WORK/cpuinfo" "$QEMU" -L "$SYSROOT" "$@"
}

# A gallery of each class's first training image and three test images: emulation runs the
# model about 200 times slower than the host, so the whole demo set would take half an hour.
for c in demo/data/train/*/; do
    c="$(basename "$c")"
    mkdir -p "$WORK/gallery/$c"
    cp "$(find "demo/data/train/$c" -type f | sort | head -n 1)" "$WORK/gallery/$c/"
done
mapfile -t QUERIES < <(find demo/data/test -name '*.jpg' | sort | head -n 3)

t0=$SECONDS
run "$DIR/dino-export" --checkpoint demo/teacher.safetensors --to "$WORK/a.onnx"
"$HOST_BIN/dino-export" --checkpoint demo/teacher.safetensors --to "$WORK/x.onnx" 2>/dev/null
run "$DIR/dino-export" --checkpoint demo/teacher.safetensors --to "$WORK/a-int8.onnx" --precision int8
"$HOST_BIN/dino-export" --checkpoint demo/teacher.safetensors --to "$WORK/x-int8.onnx" --precision int8 2>/dev/null
for p in "" -int8; do
    cmp -s "$WORK/a$p.onnx" "$WORK/x$p.onnx" ||
        { echo "cross_aarch64.sh: the aarch64 dino-export wrote another ONNX file$p than the host's" >&2; exit 1; }
done
echo "cross_aarch64.sh: aarch64 and x86-64 dino-export wrote the same bytes (fp32 and int8)" >&2
for arch in a x; do
    if [[ "$arch" == a ]]; then bin=(run "$DIR/dino-run"); else bin=("${HOST_RUN[@]}"); fi
    "${bin[@]}" --no-cache index --model "$WORK/x.onnx" --images "$WORK/gallery" --out "$WORK/$arch.dgal"
    "${bin[@]}" --no-cache classify --model "$WORK/x.onnx" --gallery "$WORK/$arch.dgal" --k 5 \
        --json "${QUERIES[@]}" >"$WORK/$arch-classify.json"
    "${bin[@]}" --no-cache embed --model "$WORK/x.onnx" --json "${QUERIES[@]}" >"$WORK/$arch-embed.json"
done
run "$DIR/dino-run" --no-cache embed --model "$WORK/x-int8.onnx" --json "${QUERIES[@]}" >"$WORK/a-embed-int8.json"
echo "cross_aarch64.sh: the aarch64 runs under qemu took $((SECONDS - t0)) s" >&2

# fp32 equal within 1e-4: every embedding value, and each query's classes in order with their vote shares.
"${PYTHON:-python3}" - "$WORK" <<'EOF'
import json, sys
work = sys.argv[1]
def load(name):
    with open(f"{work}/{name}.json") as f:
        return json.load(f)
worst = 0.0
for a, x in zip(load("a-embed"), load("x-embed"), strict=True):
    ea, ex = a["embedding"], x["embedding"]
    assert len(ea) == len(ex), (len(ea), len(ex))
    worst = max([worst] + [abs(p - q) for p, q in zip(ea, ex)])
assert worst <= 1e-4, f"aarch64 embeddings differ from x86-64's by {worst:.3g} > 1e-4"
print(f"cross_aarch64.sh: embeddings of {len(load('x-embed'))} images: max |aarch64 - x86-64| = {worst:.3g}", file=sys.stderr)
# int8 rounds differently on each architecture's kernels: it is held to the accuracy goal
# (cosine >= 0.999 to the fp32 embedding), not to equality with x86-64.
cos = []
for q, f in zip(load("a-embed-int8"), load("a-embed"), strict=True):
    eq, ef = q["embedding"], f["embedding"]
    dot = sum(p * r for p, r in zip(eq, ef))
    cos.append(dot / (sum(p * p for p in eq) * sum(r * r for r in ef)) ** 0.5)
assert min(cos) >= 0.999, f"aarch64 int8 against fp32: cosine {min(cos):.6f} < 0.999"
print(f"cross_aarch64.sh: aarch64 int8 against fp32: cosine min {min(cos):.6f}", file=sys.stderr)
for a, x in zip(load("a-classify"), load("x-classify"), strict=True):
    assert [c["class"] for c in a["top"]] == [c["class"] for c in x["top"]], (a, x)
    gap = max(abs(p["share"] - q["share"]) for p, q in zip(a["top"], x["top"]))
    assert gap <= 1e-4, f"{x['image']}: vote shares differ by {gap:.3g} > 1e-4"
    print(f"cross_aarch64.sh: {x['image']}: {x['top'][0]['class']} on both (share gap {gap:.3g})", file=sys.stderr)
EOF
echo "aarch64 runtime install: $TARBALL (ran under $QEMU, equal to x86-64 within 1e-4)" >&2
