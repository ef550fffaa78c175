"""The DINO projection head of dino-models against `dino_ref.head.DINOHead`, the official
`DINOHead` written out again (Linear[, BN], GELU ... -> bottleneck, F.normalize,
weight-normalised last layer).

  head_parity.py --weights H.safetensors --input X.safetensors --out O.safetensors
"""
import argparse
import json
import sys
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "python"))
from dino_ref.head import DINOHead  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--weights", required=True)
ap.add_argument("--input", required=True)
ap.add_argument("--out", required=True)
a = ap.parse_args()
with safe_open(a.weights, "pt") as f:
    cfg = json.loads(f.metadata()["dino_rs.head"])
head = DINOHead(**cfg).eval()
state = load_file(a.weights)
head.load_state_dict(state, strict=True)
x = load_file(a.input)["x"]
with torch.no_grad():
    save_file({"y": head(x).contiguous()}, a.out)
