#!/usr/bin/env bash
# Cold start of dino-run (process start to the first embedding of one image, cache warm),
# several builds side by side in one run, alternating, so that all see the same machine.
#   bench/cold_start.sh MODEL.onnx IMAGE RUNS NAME=path/to/dino-run [NAME=...]
# e.g. bench/cold_start.sh m.onnx photo.png 15 before=old/dino-run after=target/release/dino-run
# Prints, per build, the median and minimum wall time and the median CPU time (user + system,
# less sensitive than wall time to other work on the machine).
set -euo pipefail
[ $# -ge 4 ] || { echo "usage: $0 MODEL IMAGE RUNS NAME=BIN [NAME=BIN ...]" >&2; exit 2; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 - "$work" "$@" <<'PY'
import os, statistics, subprocess, sys, time
work, model, image, runs, *specs = sys.argv[1:]
builds = [s.split("=", 1) for s in specs]
def once(name, binary):
    env = dict(os.environ, XDG_CACHE_HOME=os.path.join(work, name))
    cmd = [binary, "--threads", "2", "embed", "--model", model, image]
    start = time.perf_counter()
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, use = os.wait4(p.pid, 0)
    wall = time.perf_counter() - start
    if status != 0:
        sys.exit(f"{name}: {binary} failed: {p.stderr.read().decode()}")
    return wall, use.ru_utime + use.ru_stime
for name, binary in builds:  # warm-up: builds each build's graph cache
    once(name, binary)
times = {name: [] for name, _ in builds}
for _ in range(int(runs)):
    for name, binary in builds:
        times[name].append(once(name, binary))
for name, ts in times.items():
    wall = [w for w, _ in ts]
    cpu = [c for _, c in ts]
    print(f"{name:>10}: wall median {statistics.median(wall):.3f} s, min {min(wall):.3f} s; "
          f"CPU median {statistics.median(cpu):.3f} s ({len(ts)} runs)")
PY
