"""Prints the rows of bench/gpu.sh (one JSON object per line) as one markdown table."""
import json
import subprocess
import sys

rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
try:
    gpu = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                         capture_output=True, text=True, check=True).stdout.strip()
except (OSError, subprocess.CalledProcessError):
    gpu = "no GPU (CPU dry run)"
print(f"device: {gpu}\n")
print("| what | batch | throughput | step ms | peak GPU MiB | notes |")
print("|---|---|---|---|---|---|")
steps = {}
for r in rows:
    who = r.get("who", "?")
    if r.get("what") == "train_step":
        steps[who] = r["images_per_s"]
        print(f"| {who}: training step | {r['batch_size']} | {r['images_per_s']:.1f} img/s | "
              f"{r['step_ms']:.1f} | {r.get('peak_gpu_mib')} | {r.get('precision', '')}, "
              f"final loss {r.get('final_loss', float('nan')):.3f} |")
    elif "forward_ms" in r:
        print(f"| {who} | | | | | forward + loss {r['forward_ms']} ms, backward {r['backward_ms']} ms, "
              f"clip + optimizer + EMA {r['update_ms']} ms |")
    elif r.get("stage") == "photometric":
        print(f"| {who} | {r['batch']} | {r['samples_per_s']:.1f} samples/s | "
              f"{r['seconds_per_batch'] * 1e3:.1f} | | batched tensor ops, {r['views']} views per batch |")
    elif "epoch_images_per_s" in r:
        rate = r["images_per_s"]
        rate = f"{rate:.1f} img/s" if rate is not None else "n/a"
        print(f"| {who} | {r.get('batch_size', '')} | {rate} | | {r.get('peak_gpu_mib')} | "
              f"median of 5-step windows; whole epoch incl. start-up {r['epoch_images_per_s']:.1f} img/s |")
    elif "top1" in r:
        print(f"| {who} | | | | | top-1 {r['top1']:.2f}%, top-5 {r['top5']:.2f}% |")
    else:
        rate = r.get("samples_per_s", float("nan"))
        per = r["samples"] / r["cpu_seconds"] if r.get("cpu_seconds") else float("nan")
        print(f"| {who} | {r.get('batch', '')} | {rate:.1f} samples/s | | | "
              f"{r.get('threads', '?')} threads, {per:.1f} samples/s/core |")
if "dino-rs" in steps and "pytorch-reference" in steps:
    print(f"\ndino-rs / PyTorch reference: {steps['dino-rs'] / steps['pytorch-reference']:.2f}x")
