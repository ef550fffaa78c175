#!/usr/bin/env bash
# Cold start of dino-run (process start to the first embedding of one image, cache warm),
# two builds side by side in one run, alternating, so that both see the same machine.
#   bench/cold_start.sh OLD/dino-run NEW/dino-run MODEL.onnx IMAGE [RUNS]
# Prints the median and minimum wall time of each.
set -euo pipefail
old=$1 new=$2 model=$3 image=$4 runs=${5:-9}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for who in old new; do
  bin=$old; [ "$who" = new ] && bin=$new
  XDG_CACHE_HOME="$work/$who" "$bin" --threads 2 embed --model "$model" "$image" >/dev/null 2>&1
done
for _ in $(seq "$runs"); do
  for who in old new; do
    bin=$old; [ "$who" = new ] && bin=$new
    s=$(date +%s.%N)
    XDG_CACHE_HOME="$work/$who" "$bin" --threads 2 embed --model "$model" "$image" >/dev/null 2>&1
    e=$(date +%s.%N)
    echo "$who $(echo "$e - $s" | bc)"
  done
done | python3 -c '
import statistics, sys
d = {}
for line in sys.stdin:
    who, t = line.split()
    d.setdefault(who, []).append(float(t))
for who, ts in d.items():
    print(f"{who}: median {statistics.median(ts):.3f} s, min {min(ts):.3f} s ({len(ts)} runs)")
'
