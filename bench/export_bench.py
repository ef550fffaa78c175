"""dino-export against torch.onnx.export of the same weights (not run in CI).

  source scripts/env.sh && cargo build --release -p dino-export
  $PYTHON bench/export_bench.py [--arch vit_small --patch 16 --runs 5]

Builds seeded official-key weights, exports them with `dino-export` and with
`torch.onnx.export` of timm's VisionTransformer (TorchScript exporter, opset 17, dynamic
batch), checks the two agree, then prints one side-by-side table: node count, file size,
and ONNX Runtime CPU throughput at batch 1 and 32 (default session options, all cores; the
fastest of 10 x --runs (batch 1) or --runs (batch 32) runs, the two models interleaved).
"""
import argparse
import json
import os
import subprocess
import sys
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))
from dino_ref.fixtures import seeded_vit, state, timm_vit, vit_config  # noqa: E402


def best_seconds(sessions, batch, size, rounds):
    """Fastest single run of each session over `rounds` interleaved rounds: on a shared
    machine the minimum is the figure least distorted by other load."""
    x = np.random.default_rng(0).standard_normal((batch, 3, size, size), dtype=np.float32)
    best = {k: float("inf") for k in sessions}
    for s in sessions.values():
        s.run(None, {"image": x})  # warm-up
    for _ in range(rounds):
        for k, s in sessions.items():
            t = time.perf_counter()
            s.run(None, {"image": x})
            best[k] = min(best[k], time.perf_counter() - t)
    return best


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="vit_small")
    ap.add_argument("--patch", type=int, default=16)
    ap.add_argument("--runs", type=int, default=5)
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="dino-export-bench-")
    cfg = vit_config(a.arch, a.patch, 224)
    ref = seeded_vit(cfg, 0)
    sd = state(ref)
    from safetensors.torch import save_file
    weights = os.path.join(tmp, "teacher.safetensors")
    save_file(sd, weights, metadata={"dino_rs.format": "dino-rs/1", "dino_rs.kind": "backbone",
                                     "dino_rs.vit": json.dumps(cfg)})

    ours = os.path.join(tmp, "dino-export.onnx")
    exe = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release", "dino-export")
    subprocess.run([exe, "--checkpoint", weights, "--to", ours], check=True, stdout=subprocess.DEVNULL)

    theirs = os.path.join(tmp, "torch.onnx")
    m = timm_vit(cfg)
    m.load_state_dict(sd, strict=True)
    x = torch.randn(2, 3, 224, 224)
    warnings.filterwarnings("ignore")  # the TorchScript exporter's deprecation and tracer notes
    torch.onnx.export(m, (x,), theirs, input_names=["image"], output_names=["embedding"], opset_version=17,
                      dynamic_axes={"image": {0: "batch"}, "embedding": {0: "batch"}}, dynamo=False)

    # Same function: both against the PyTorch reference on one batch.
    with torch.no_grad():
        want = ref(x).numpy()
    for path in (ours, theirs):
        got = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"image": x.numpy()})[0]
        assert np.abs(got - want).max() < 1e-4, (path, np.abs(got - want).max())

    models = {"dino-export": ours, "torch.onnx.export (timm)": theirs}
    sessions = {k: ort.InferenceSession(p, providers=["CPUExecutionProvider"]) for k, p in models.items()}
    rows = {k: {"nodes": len(onnx.load(p, load_external_data=False).graph.node), "mb": os.path.getsize(p) / 1e6}
            for k, p in models.items()}
    for batch, rounds in ((1, 10 * a.runs), (32, a.runs)):
        for k, sec in best_seconds(sessions, batch, 224, rounds).items():
            rows[k][batch] = batch / sec
    print(f"\n{a.arch}/{a.patch} @ 224px, fp32, opset 17, ONNX Runtime {ort.__version__} CPU "
          f"({os.cpu_count()} cores), torch {torch.__version__.split('+')[0]}\n")
    print("| exporter | nodes | file (MB) | batch 1 (img/s) | batch 32 (img/s) |")
    print("|---|---:|---:|---:|---:|")
    for label, r in rows.items():
        print(f"| {label} | {r['nodes']} | {r['mb']:.1f} | {r[1]:.1f} | {r[32]:.1f} |")
    shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
