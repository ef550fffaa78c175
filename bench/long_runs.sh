#!/usr/bin/env bash
# Several training runs side by side on one machine, each a base config plus flag overrides,
# then one table of their k-NN curves: hyperparameter variants of a long run in a single
# call of a GPU machine (they share the GPU and split the CPU cores between their workers).
#
#   BIN=dir/with/dino-train bench/long_runs.sh configs/cifar-long.toml \
#       "base:" \
#       "t04:--teacher_temp 0.04 --warmup_teacher_temp_epochs 0" \
#       "nll:--norm_last_layer false"
#
# Each variant is NAME:FLAGS. Environment: BIN (default target/release), BENCH_OUT (default
# runs/long), WORKERS (data workers per run; default the cores divided among the runs),
# LIMIT_S (stop every run after this many seconds: a time box; the table still shows what
# was reached), EXTRA (flags added to every run, e.g. a shorter schedule for a try-out).
set -euo pipefail
cd "$(dirname "$0")/.."
if (( $# < 2 )); then
    sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
BASE=$1
shift
BIN=${BIN:-target/release}
OUT=${BENCH_OUT:-runs/long}
PY=${PYTHON:-python3}
WORKERS=${WORKERS:-$(( $(nproc) / $# > 0 ? $(nproc) / $# : 1 ))}
LIMIT_S=${LIMIT_S:-0}
[[ -f "$BASE" ]] || { echo "no config file $BASE" >&2; exit 2; }
# libtorch from the python's torch when the binary was carried without its rpath.
if TORCH_LIB=$("$PY" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))' 2>/dev/null); then
    export LD_LIBRARY_PATH="$TORCH_LIB:${LD_LIBRARY_PATH:-}"
fi
mkdir -p "$OUT"

names=()
pids=()
for spec in "$@"; do
    name=${spec%%:*}
    flags=${spec#*:}
    [[ "$spec" == *:* && -n "$name" ]] || { echo "variant '$spec' is not NAME:FLAGS" >&2; exit 2; }
    rm -rf "${OUT:?}/$name"
    # Word splitting of the flags is intended: one string of options per variant.
    # shellcheck disable=SC2086
    cmd=("$BIN/dino-train" train --quiet --config "$BASE" --output_dir "$OUT/$name"
         --num_workers "$WORKERS" $flags ${EXTRA:-})
    if (( LIMIT_S > 0 )); then
        cmd=(timeout "$LIMIT_S" "${cmd[@]}")
    fi
    "${cmd[@]}" >"$OUT/$name.log" 2>&1 &
    names+=("$name")
    pids+=($!)
    echo "started $name: ${cmd[*]}" >&2
done

failed=0
for i in "${!pids[@]}"; do
    rc=0
    wait "${pids[$i]}" || rc=$?
    if (( rc == 124 )); then
        echo "${names[$i]}: stopped by LIMIT_S" >&2
    elif (( rc != 0 )); then
        echo "${names[$i]}: exit $rc (see $OUT/${names[$i]}.log)" >&2
        failed=1
    fi
done

"$PY" - "$OUT" "${names[@]}" <<'EOF'
import json, sys
from pathlib import Path

out, names = Path(sys.argv[1]), sys.argv[2:]
runs = {}
for name in names:
    rows = []
    log = out / name / "metrics.jsonl"
    if log.exists():
        for line in log.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                pass  # a run stopped mid-line
    runs[name] = rows
epochs = sorted({r["epoch"] + 1 for rows in runs.values() for r in rows if r["kind"] == "knn"})
print("k-NN top-1 (%) per epoch\n")
print("| run | " + " | ".join(str(e) for e in epochs) + " | epochs | seconds | last loss | teacher entropy |")
print("|---|" + "---|" * (len(epochs) + 4))
for name, rows in runs.items():
    knn = {r["epoch"] + 1: r["top1"] for r in rows if r["kind"] == "knn"}
    done = [r for r in rows if r["kind"] == "epoch"]
    steps = [r for r in rows if r["kind"] == "step"]
    cells = [f"{knn[e]:.1f}" if e in knn else "" for e in epochs]
    last = f"{done[-1]['loss']:.3f}" if done else ""
    ent = f"{steps[-1]['teacher_entropy']:.2f}" if steps else ""
    secs = f"{sum(r['seconds'] for r in done):.0f}"
    print(f"| {name} | " + " | ".join(cells) + f" | {len(done)} | {secs} | {last} | {ent} |")
EOF
exit $failed
