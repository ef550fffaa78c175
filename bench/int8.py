"""dino-export --precision int8 against fp32 and ONNX Runtime's quantize_dynamic, side by side.

  cargo build --release -p dino-export
  $PYTHON bench/int8.py [--threads 2] [--runs 5] [--out DIR]

For two models, the shipped demo teacher (demo/teacher.safetensors, 32 px) and a seeded
ViT-S/16 at 224 px (random weights: speed does not depend on their values), it writes
  * dino-export fp32,
  * dino-export --precision int8 (weights ±127) and with --int8-range reduced (±63),
  * onnxruntime.quantization.quantize_dynamic(per_channel=True, weight_type=QInt8) of the
    fp32 file,
then prints file size and ONNX Runtime CPU throughput (images/s; intra-op threads as given,
one inter-op thread, default graph optimisation) at batch 1 and 32: the fastest single run
of 10 x --runs (batch 1) or --runs (batch 32) rounds, the three sessions interleaved, so that
load from other processes on a shared machine distorts the figures least. Also the worst
cosine of each int8 variant's embedding against fp32 on the benchmark batch.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnxruntime.quantization import QuantType, quantize_dynamic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))
EXE = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release", "dino-export")


def vit_small(out_dir):
    """Seeded ViT-S/16 weights at 224 px as a dino-rs backbone file."""
    from safetensors.torch import save_file

    from dino_ref.fixtures import seeded_vit, state, vit_config

    cfg = vit_config("vit_small", 16, 224)
    path = os.path.join(out_dir, "vit_small16.safetensors")
    save_file(state(seeded_vit(cfg, 0)), path, metadata={
        "dino_rs.format": "dino-rs/1", "dino_rs.kind": "backbone", "dino_rs.vit": json.dumps(cfg)})
    return path, 224


def variants(weights, out_dir, tag):
    """The three ONNX files of one checkpoint, by label."""
    fp32 = os.path.join(out_dir, f"{tag}-fp32.onnx")
    int8 = os.path.join(out_dir, f"{tag}-int8.onnx")
    qd = os.path.join(out_dir, f"{tag}-quantize_dynamic.onnx")
    subprocess.run([EXE, "--checkpoint", weights, "--to", fp32], check=True, stdout=subprocess.DEVNULL)
    int8r = os.path.join(out_dir, f"{tag}-int8-reduced.onnx")
    for path, extra in ((int8, []), (int8r, ["--int8-range", "reduced"])):
        subprocess.run([EXE, "--checkpoint", weights, "--to", path, "--precision", "int8"] + extra, check=True,
                       stdout=subprocess.DEVNULL)
    quantize_dynamic(fp32, qd, per_channel=True, weight_type=QuantType.QInt8)
    return {"dino-export fp32": fp32, "dino-export int8": int8, "dino-export int8 --int8-range reduced": int8r,
            "quantize_dynamic (per-channel QInt8)": qd}


def session(path, threads):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def best_seconds(sessions, x, rounds):
    best = {k: float("inf") for k in sessions}
    for s in sessions.values():
        s.run(None, {"image": x})  # warm-up
    for _ in range(rounds):
        for k, s in sessions.items():
            t = time.perf_counter()
            s.run(None, {"image": x})
            best[k] = min(best[k], time.perf_counter() - t)
    return best


def cosine(a, b):
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def bench(label, models, size, a):
    sessions = {k: session(p, a.threads) for k, p in models.items()}
    x = np.random.default_rng(0).standard_normal((32, 3, size, size), dtype=np.float32)
    rows = {k: {"mb": os.path.getsize(p) / 1e6} for k, p in models.items()}
    for batch, rounds in ((1, 10 * a.runs), (32, a.runs)):
        for k, sec in best_seconds(sessions, x[:batch], rounds).items():
            rows[k][batch] = batch / sec
    ref = sessions["dino-export fp32"].run(["embedding"], {"image": x})[0]
    for k, s in sessions.items():
        rows[k]["cos"] = cosine(s.run(["embedding"], {"image": x})[0], ref).min()
    base = rows["dino-export fp32"]
    print(f"\n{label}\n")
    print("| model | file (MB) | batch 1 (img/s) | x fp32 | batch 32 (img/s) | x fp32 | worst cosine vs fp32 |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for k, r in rows.items():
        print(f"| {k} | {r['mb']:.1f} | {r[1]:.1f} | {r[1] / base[1]:.2f} | {r[32]:.1f} | "
              f"{r[32] / base[32]:.2f} | {r['cos']:.5f} |")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--out", default=None, help="where the ONNX files go (default: a temporary folder)")
    a = ap.parse_args()
    out = a.out or tempfile.mkdtemp(prefix="dino-int8-bench-")
    os.makedirs(out, exist_ok=True)
    print(f"ONNX Runtime {ort.__version__} CPU, {a.threads} intra-op threads ({os.cpu_count()} cores)")
    demo = os.path.join(ROOT, "demo", "teacher.safetensors")
    bench("shipped demo teacher (custom /4, 192-d, 6 blocks) @ 32px, random normal input",
          variants(demo, out, "demo"), 32, a)
    weights, size = vit_small(out)
    bench("seeded ViT-S/16 @ 224px, random normal input", variants(weights, out, "vit_small16"), size, a)


if __name__ == "__main__":
    main()
