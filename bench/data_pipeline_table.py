"""Formats the JSON lines of bench/data_pipeline.sh ("<workload> {json}") as one table."""
import json
import sys

rows = []
for line in sys.stdin:
    label, payload = line.rstrip("\n").split(" {", 1)
    rows.append((label, json.loads("{" + payload)))


def per_core(r):
    return r["samples"] / r["cpu_seconds"]


base = {(l, r["threads"]): per_core(r) for l, r in rows if r["impl"] == "torchvision"}
head = ("workload", "pipeline", "threads", "samples/s", "samples/s/core", "per core vs tv")
print(f"{head[0]:<24} {head[1]:<12} {head[2]:>7} {head[3]:>10} {head[4]:>15} {head[5]:>15}")
for label, r in rows:
    ref = base.get((label, r["threads"]))
    ratio = f"{per_core(r) / ref:.2f}x" if ref else "-"
    print(f"{label:<24} {r['impl']:<12} {r['threads']:>7} {r['samples_per_s']:>10.1f} {per_core(r):>15.1f} {ratio:>15}")
