"""Reference DINO projection head, written after the official `DINOHead`
(Linear[, BN], GELU ... -> bottleneck, F.normalize, weight-normalised last layer).

  head_parity.py --weights H.safetensors --input X.safetensors --out O.safetensors
"""
import argparse
import json

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file


class Head(nn.Module):
    def __init__(self, in_dim, out_dim, use_bn, norm_last_layer, nlayers, hidden_dim, bottleneck_dim):
        super().__init__()
        if nlayers == 1:
            self.mlp = nn.Linear(in_dim, bottleneck_dim)
        else:
            layers = [nn.Linear(in_dim, hidden_dim)]
            for i in range(nlayers - 1):
                if use_bn:
                    layers.append(nn.BatchNorm1d(hidden_dim))
                layers.append(nn.GELU())
                last = i == nlayers - 2
                layers.append(nn.Linear(hidden_dim, bottleneck_dim if last else hidden_dim))
            self.mlp = nn.Sequential(*layers)
        self.last_layer = nn.utils.weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))

    def forward(self, x):
        x = F.normalize(self.mlp(x), dim=-1, p=2)
        return self.last_layer(x)


ap = argparse.ArgumentParser()
ap.add_argument("--weights", required=True)
ap.add_argument("--input", required=True)
ap.add_argument("--out", required=True)
a = ap.parse_args()
with safe_open(a.weights, "pt") as f:
    cfg = json.loads(f.metadata()["dino_rs.head"])
head = Head(**cfg).eval()
state = load_file(a.weights)
head.load_state_dict(state, strict=True)
x = load_file(a.input)["x"]
with torch.no_grad():
    save_file({"y": head(x).contiguous()}, a.out)
