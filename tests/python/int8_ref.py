"""Independent reference for `dino-export --precision int8` (tests/tests/export_int8.rs).

    python int8_ref.py check MODEL.onnx
        onnx.checker.check_model(full_check=True).
    python int8_ref.py compare --weights W.safetensors --int8 M8.onnx --fp32 M32.onnx \
            --out DIR [--qmax 127|63] IMAGE...
        DIR/manifest.json and little-endian float32 files: for each output of the int8
        model, ONNX Runtime's values (`ort`), this script's numpy values of the same
        dynamically quantised computation (`ref`) and ONNX Runtime's values of the fp32
        model (`fp32`); and `weights`: how many int8 weights and scales in the file differ
        from this script's quantisation of the safetensors weights (exact comparison).

The numpy model is the DINO ViT written from its definition (not from dino-export's graph):
every Linear of the blocks is
    x_q, x_scale, x_zp = DynamicQuantizeLinear(x)      (ONNX spec: uint8, per tensor,
                                                         range widened to include 0)
    y = float32((x_q - x_zp) @ W_q) * (x_scale * w_scale) + bias      (exact int64 matmul)
with W_q, w_scale the per-output-channel symmetric quantisation below (the int64 matmul
modelling, on x86 CPUs without VNNI, the int16 saturation of ONNX Runtime's kernel there:
see `saturating_kernel`); the patch embedding,
norms, attention and GELU are float32. Rounding is numpy's `round` (half to even) in
float32 throughout. Without `patch_tokens` the last block runs on the CLS rows only, each
Linear then quantising just the rows it sees, as the exported graph documents.
"""

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "python"))

QMAX = np.float32(127)  # 63 with --qmax 63


def quantize_rows(w):
    """Per output channel (row of a PyTorch [out, in] weight): scale = max|row| / QMAX
    (1 for a zero row), q = round_half_even(w / scale) clipped to [-QMAX, QMAX]."""
    w = w.astype(np.float32)
    m = np.abs(w).max(axis=1)
    scale = np.where(m > 0, m / QMAX, np.float32(1)).astype(np.float32)
    q = np.clip(np.round(w / scale[:, None]), -QMAX, QMAX).astype(np.int8)
    return q, scale


def dynamic_quantize(x):
    """ONNX DynamicQuantizeLinear: uint8 with a per-tensor scale and zero point."""
    lo = np.minimum(np.float32(0), x.min())
    hi = np.maximum(np.float32(0), x.max())
    scale = np.float32((hi - lo) / np.float32(255))
    zp = np.round(np.clip(np.float32(0) - lo / scale, 0, 255)).astype(np.int64)
    q = np.clip(np.round(x / scale) + zp, 0, 255).astype(np.int64)
    return q, scale, zp


def saturating_kernel():
    """Whether ONNX Runtime's uint8 x int8 kernel on this CPU adds products in int16 pairs.

    On x86 without VNNI (AVX2, AVX-512BW), MLAS multiplies with VPMADDUBSW, which adds the
    products of inputs 2j and 2j+1 into an int16 with saturation; VNNI, AMX and Arm's dot
    product instructions accumulate in int32 exactly (ONNX Runtime documents this for
    its quantised models)."""
    import platform

    if platform.machine() not in ("x86_64", "AMD64"):
        return False
    flags = open("/proc/cpuinfo").read()
    return not any(f in flags.split() for f in ("avx512_vnni", "avx_vnni", "amx_int8"))


SATURATE = saturating_kernel()


def accumulate(xq, xzp, wq):
    """sum_k (xq - xzp)[m, k] * wq[k, n], as the kernel computes it: the uint8 products of
    each pair of k saturated to int16 when SATURATE, then the zero point's share taken off."""
    if not SATURATE:
        return (xq - xzp) @ wq
    if wq.shape[0] % 2:
        xq, wq = np.pad(xq, ((0, 0), (0, 1))), np.pad(wq, ((0, 1), (0, 0)))
    acc = np.zeros((xq.shape[0], wq.shape[1]), dtype=np.int64)
    for j in range(0, wq.shape[0], 2):
        pair = np.outer(xq[:, j], wq[j]) + np.outer(xq[:, j + 1], wq[j + 1])
        acc += np.clip(pair, -32768, 32767)
    return acc - xzp * wq.sum(axis=0)


def qlinear(x, w, b):
    """x [..., in] through a Linear with int8 weights and a dynamically quantised input."""
    shape = x.shape
    xq, xs, xzp = dynamic_quantize(x.reshape(-1, shape[-1]))
    wq, ws = quantize_rows(w)
    acc = accumulate(xq, xzp, wq.astype(np.int64).T)
    y = acc.astype(np.float32) * (xs * ws) + b
    return y.reshape(*shape[:-1], w.shape[0]).astype(np.float32)


def layer_norm(x, g, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return ((x - mu) / np.sqrt(var + np.float32(eps)) * g + b).astype(np.float32)


def gelu(x):
    import torch  # only for erf, which numpy lacks

    return (x * 0.5 * (1.0 + torch.from_numpy(x / np.float32(np.sqrt(2))).erf().numpy())).astype(np.float32)


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def attention(w, i, h, heads, cls_only):
    """Multi-head self-attention of block i; returns (output [B, T or 1, D], probs)."""
    B, T, D = h.shape
    hd = D // heads
    W, bias = w[f"blocks.{i}.attn.qkv.weight"], w[f"blocks.{i}.attn.qkv.bias"]
    if cls_only:
        q = qlinear(h[:, :1], W[:D], bias[:D])
        kv = qlinear(h, W[D:], bias[D:])
        k, v = kv[..., :D], kv[..., D:]
    else:
        qkv = qlinear(h, W, bias)
        q, k, v = qkv[..., :D], qkv[..., D:2 * D], qkv[..., 2 * D:]
    split = lambda t: t.reshape(B, t.shape[1], heads, hd).transpose(0, 2, 1, 3)  # noqa: E731
    q, k, v = split(q), split(k), split(v)
    probs = softmax((q * np.float32(hd ** -0.5)) @ k.transpose(0, 1, 3, 2))
    ctx = (probs @ v).transpose(0, 2, 1, 3).reshape(B, q.shape[2], D)
    out = qlinear(ctx, w[f"blocks.{i}.attn.proj.weight"], w[f"blocks.{i}.attn.proj.bias"])
    return out, probs


def forward(w, cfg, x, all_tokens):
    """Normed tokens [B, T or 1, D] and the last block's attention probabilities."""
    B, C, H, _ = x.shape
    p, D, eps = cfg["patch_size"], cfg["embed_dim"], cfg["layer_norm_eps"]
    n = H // p
    patches = x.reshape(B, C, n, p, n, p).transpose(0, 2, 4, 1, 3, 5).reshape(B, n * n, C * p * p)
    tok = patches @ w["patch_embed.proj.weight"].reshape(D, -1).T + w["patch_embed.proj.bias"]
    cls = np.broadcast_to(w["cls_token"].reshape(1, 1, D), (B, 1, D))
    tok = (np.concatenate([cls, tok], axis=1) + w["pos_embed"]).astype(np.float32)
    depth = cfg["depth"]
    for i in range(depth):
        cls_only = i == depth - 1 and not all_tokens
        h = layer_norm(tok, w[f"blocks.{i}.norm1.weight"], w[f"blocks.{i}.norm1.bias"], eps)
        a, probs = attention(w, i, h, cfg["num_heads"], cls_only)
        tok = (tok[:, :1] if cls_only else tok) + a
        h = layer_norm(tok, w[f"blocks.{i}.norm2.weight"], w[f"blocks.{i}.norm2.bias"], eps)
        h = gelu(qlinear(h, w[f"blocks.{i}.mlp.fc1.weight"], w[f"blocks.{i}.mlp.fc1.bias"]))
        tok = tok + qlinear(h, w[f"blocks.{i}.mlp.fc2.weight"], w[f"blocks.{i}.mlp.fc2.bias"])
    return layer_norm(tok, w["norm.weight"], w["norm.bias"], eps), probs


def weight_mismatches(model, w, cfg):
    """Counts of int8 values and scales of `model` unequal to quantize_rows of `w`."""
    import onnx
    from onnx import numpy_helper

    init = {t.name: numpy_helper.to_array(t) for t in onnx.load(model).graph.initializer}
    D, hd = cfg["embed_dim"], cfg["embed_dim"] // cfg["num_heads"]
    q_scale = np.float32(hd ** -0.5)  # the exporter folds it into the query rows
    bad_q = bad_s = checked = 0
    for i in range(cfg["depth"]):
        b = f"blocks.{i}."
        qkv = w[b + "attn.qkv.weight"]
        parts = [(b + "attn.proj.weight", w[b + "attn.proj.weight"], 1),
                 (b + "mlp.fc1.weight", w[b + "mlp.fc1.weight"], 1),
                 (b + "mlp.fc2.weight", w[b + "mlp.fc2.weight"], 1)]
        if b + "attn.qkv.weight.kv.int8" in init:
            parts += [(b + "attn.qkv.weight.q_scaled", qkv[:D], q_scale), (b + "attn.qkv.weight.kv", qkv[D:], 1)]
        else:
            parts.append((b + "attn.qkv.weight.q_scaled", qkv, None))
        for name, weight, fold in parts:
            q, s = quantize_rows(weight)
            if fold is None:  # the whole qkv: only its query rows are scaled
                s = s.copy()
                s[:D] *= q_scale
            else:
                s = s * np.float32(fold)
            got_q, got_s = init[name + ".int8"], init[name + ".scale"]
            assert got_q.dtype == np.int8 and got_q.shape == q.T.shape, (name, got_q.dtype, got_q.shape)
            bad_q += int((got_q != q.T).sum())
            bad_s += int((got_s != s).sum())
            checked += q.size
    return {"checked": checked, "int8_mismatches": bad_q, "scale_mismatches": bad_s}


def layer_by_layer(model, x):
    """Each int8 Linear of `model` on ONNX Runtime's own input to it: the worst absolute
    difference of ONNX Runtime's output from `DynamicQuantizeLinear` + `accumulate` + scale
    + bias computed here (the file's int8 weights, checked above, scales and bias)."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    m = onnx.load(model)
    init = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    by_out = {o: n for n in m.graph.node for o in n.output}
    layers = []
    for n in m.graph.node:
        if n.op_type == "DynamicQuantizeLinear":
            name = n.name.rsplit("/", 1)[0]
            mm = by_out[f"{name}/matmul_int8"]
            scale = by_out[f"{name}/scale"]
            layers.append((name, n.input[0], init[mm.input[1]], init[scale.input[1]], init[by_out[name].input[1]]))
    for _, inp, *_ in layers:
        m.graph.output.append(onnx.ValueInfoProto(name=inp))
    for name, *_ in layers:
        m.graph.output.append(onnx.ValueInfoProto(name=name))
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    got = dict(zip(names, sess.run(names, {"image": x})))
    worst, size = 0.0, 0.0
    for name, inp, wq, ws, b in layers:
        xq, xs, xzp = dynamic_quantize(got[inp])
        want = accumulate(xq, xzp, wq.astype(np.int64)).astype(np.float32) * (xs * ws) + b
        worst = max(worst, float(np.abs(got[name] - want).max()))
        size = max(size, float(np.abs(want).max()))
    return {"count": len(layers), "max_abs_diff": worst, "max_abs": size}


def compare(a):
    import onnxruntime as ort
    import torch
    from PIL import Image
    from safetensors.numpy import load_file

    from dino_ref.transforms import eval_transform

    sess = ort.InferenceSession(a.int8, providers=["CPUExecutionProvider"])
    meta = sess.get_modelmeta().custom_metadata_map
    cfg, ev = json.loads(meta["dino_rs.vit"]), json.loads(meta["dino_rs.eval"])
    tf = eval_transform(ev["resize_size"], ev["crop_size"], ev["mean"], ev["std"])
    x = torch.stack([tf(Image.open(p).convert("RGB")) for p in a.images]).numpy()
    names = [o.name for o in sess.get_outputs()]
    got = dict(zip(names, sess.run(names, {"image": x})))
    fp32 = ort.InferenceSession(a.fp32, providers=["CPUExecutionProvider"])
    base = dict(zip(names, fp32.run(names, {"image": x})))
    w = {k: v.astype(np.float32) for k, v in load_file(a.weights).items()}
    normed, probs = forward(w, cfg, x, "patch_tokens" in names)
    ref = {"embedding": normed[:, 0], "patch_tokens": normed[:, 1:], "attention": probs[:, :, 0, 1:]}
    os.makedirs(a.out, exist_ok=True)
    manifest = {"batch": len(a.images), "weights": weight_mismatches(a.int8, w, cfg), "saturating": SATURATE,
                "layers": layer_by_layer(a.int8, x)}
    for n in names:
        entry = {"shape": list(got[n].shape)}
        for tag, v in (("ort", got[n]), ("ref", ref[n]), ("fp32", base[n])):
            assert v.shape == got[n].shape, (n, tag, v.shape, got[n].shape)
            np.ascontiguousarray(v, dtype="<f4").tofile(os.path.join(a.out, f"{n}.{tag}.f32"))
            entry[tag] = f"{n}.{tag}.f32"
        manifest[n] = entry
    with open(os.path.join(a.out, "manifest.json"), "w") as f:
        json.dump(manifest, f)


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("check")
    c.add_argument("model")
    c = sub.add_parser("compare")
    for k in ("--weights", "--int8", "--fp32", "--out"):
        c.add_argument(k, required=True)
    c.add_argument("--qmax", type=int, choices=(127, 63), default=127,
                   help="the weights' range: 127, or 63 for --int8-range reduced")
    c.add_argument("images", nargs="+")
    a = ap.parse_args()
    if a.cmd == "check":
        import onnx

        onnx.checker.check_model(onnx.load(a.model), full_check=True)
        print("ok")
    else:
        global QMAX
        QMAX = np.float32(a.qmax)
        compare(a)


if __name__ == "__main__":
    main()
