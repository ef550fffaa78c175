#!/usr/bin/env bash
# A Rust compiler that builds for aarch64-unknown-linux-gnu, from Debian's archive only:
# rustc-web (the newer rustc Debian 12 keeps for its browsers) with its standard library for
# the host and, through multiarch, for arm64. rustup's aarch64 standard library would come
# from the Rust project's own server, which is not a package registry.
#
# The packages are unpacked, not installed, into a cache folder (nothing in /usr changes
# except the one library apt installs, libllvmNN, and arm64 in dpkg's architectures), and
# a wrapper `rustc` there is printed on the last line: use it as RUSTC.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: scripts/debian_rust_aarch64.sh

Prints the path of a rustc wrapper able to build for aarch64-unknown-linux-gnu, made from
Debian's rustc-web, libstd-rust-web-dev (amd64 and arm64) and libllvmNN. Cached under
${DINO_RS_CACHE:-~/.cache/dino-rs}/rustc-web-<version>; needs root (or a prepared cache)
the first time, to add arm64 to dpkg's architectures and install libllvmNN.
EOF
}
case "${1:-}" in
    -h|--help) usage; exit 0 ;;
    "") ;;
    *) echo "debian_rust_aarch64.sh: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
esac

die() { echo "debian_rust_aarch64.sh: $*" >&2; exit 1; }
command -v apt-cache >/dev/null || die "no apt-cache: this needs Debian (12 or later) or a derivative"
[[ "$(dpkg --print-architecture)" == amd64 ]] || die "the host must be amd64 (is $(dpkg --print-architecture))"

candidate() { apt-cache policy rustc-web | sed -n 's/^ *Candidate: //p'; }
VERSION="$(candidate)"
if [[ -z "$VERSION" || "$VERSION" == "(none)" ]] && [[ "$(id -u)" == 0 ]]; then
    apt-get update -qq >&2
    VERSION="$(candidate)"
fi
[[ -n "$VERSION" && "$VERSION" != "(none)" ]] ||
    die "Debian's rustc-web is not in apt's lists (run apt-get update; Debian 12 has it in bookworm and bookworm-security)"
UPSTREAM="${VERSION%%+*}"                # 1.96.0
SERIES="$(cut -d. -f1,2 <<<"$UPSTREAM")" # 1.96
CACHE="${DINO_RS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/dino-rs}/rustc-web-$VERSION"
WRAPPER="$CACHE/bin/rustc"

if [[ ! -x "$WRAPPER" ]]; then
    as_root() {
        if [[ "$(id -u)" == 0 ]]; then "$@"; else die "needs root for: $*"; fi
    }
    if ! dpkg --print-foreign-architectures | grep -qx arm64; then
        echo "debian_rust_aarch64.sh: adding arm64 to dpkg's architectures (for libstd-rust-web-dev:arm64)" >&2
        as_root dpkg --add-architecture arm64 >&2
        as_root apt-get update -qq >&2
    fi
    LLVM="$(apt-cache depends "libstd-rust-web-$SERIES=$VERSION" | sed -n 's/^ *Depends: \(libllvm[0-9]*\)$/\1/p' | head -n 1)"
    [[ -n "$LLVM" ]] || die "cannot tell which libllvm libstd-rust-web-$SERIES $VERSION needs"
    if ! dpkg -s "$LLVM" >/dev/null 2>&1; then
        echo "debian_rust_aarch64.sh: installing $LLVM (rustc-web's code generator)" >&2
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$LLVM" >&2
    fi
    TMP="$(mktemp -d)"
    trap 'rm -rf "$TMP"' EXIT
    echo "debian_rust_aarch64.sh: fetching Debian's rustc-web $VERSION and its amd64 and arm64 standard libraries" >&2
    # apt-get download writes into the current folder; _apt must be able to write there.
    chmod 777 "$TMP"
    (cd "$TMP" && apt-get download -q "rustc-web=$VERSION" "libstd-rust-web-$SERIES=$VERSION" \
        "libstd-rust-web-dev=$VERSION" "libstd-rust-web-dev:arm64=$VERSION" >&2)
    mkdir -p "$TMP/root"
    for deb in "$TMP"/*.deb; do dpkg-deb -x "$deb" "$TMP/root"; done
    mkdir -p "$TMP/root/bin"
    # rustc finds its sysroot (root/usr) from its own path; the wrapper only adds the
    # compiler's shared library, which Debian keeps in the multiarch library folder.
    cat >"$TMP/root/bin/rustc" <<'EOF'
#!/bin/sh
here="$(dirname "$(readlink -f "$0")")/.."
LD_LIBRARY_PATH="$here/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" exec "$here/usr/bin/rustc" "$@"
EOF
    chmod 755 "$TMP/root/bin/rustc"
    for t in x86_64-unknown-linux-gnu aarch64-unknown-linux-gnu; do
        ls "$TMP/root/usr/lib/rustlib/$t/lib/"libstd-*.rlib >/dev/null 2>&1 ||
            die "the unpacked packages hold no standard library for $t"
    done
    got="$("$TMP/root/bin/rustc" --version)" || die "the unpacked rustc does not run"
    [[ "$got" == "rustc $UPSTREAM "* ]] || die "the unpacked rustc says '$got', expected $UPSTREAM"
    mkdir -p "$(dirname "$CACHE")"
    rm -rf "$CACHE.partial" "$CACHE"
    mv "$TMP/root" "$CACHE.partial"
    mv -T "$CACHE.partial" "$CACHE"
fi
echo "$WRAPPER"
