"""Training utilities written after the official `utils.py` of facebookresearch/dino:
`cosine_scheduler`, `get_params_groups`, `clip_gradients`, `cancel_gradients_last_layer`
and `LARS`."""
import numpy as np
import torch


def cosine_scheduler(base_value, final_value, epochs, niter_per_ep, warmup_epochs=0, start_warmup_value=0):
    """Linear warmup, then half a cosine, one value per iteration."""
    warmup = np.array([])
    warmup_iters = warmup_epochs * niter_per_ep
    if warmup_epochs > 0:
        warmup = np.linspace(start_warmup_value, base_value, warmup_iters)
    iters = np.arange(epochs * niter_per_ep - warmup_iters)
    cosine = final_value + 0.5 * (base_value - final_value) * (1 + np.cos(np.pi * iters / len(iters)))
    out = np.concatenate((warmup, cosine))
    assert len(out) == epochs * niter_per_ep
    return out


def get_params_groups(named):
    """No weight decay for biases and 1-D parameters."""
    regularized, not_regularized = [], []
    for name, p in named:
        if not p.requires_grad:
            continue
        if name.endswith(".bias") or len(p.shape) == 1:
            not_regularized.append(p)
        else:
            regularized.append(p)
    return [{"params": regularized}, {"params": not_regularized, "weight_decay": 0.0}]


def clip_gradients(named, clip):
    """Each gradient clipped on its own to norm `clip`; returns the norms before clipping."""
    norms = []
    for _, p in named:
        if p.grad is not None:
            param_norm = p.grad.data.norm(2)
            norms.append(param_norm)
            clip_coef = clip / (param_norm + 1e-6)
            if clip_coef < 1:
                p.grad.data.mul_(clip_coef)
    return norms


def cancel_gradients_last_layer(epoch, named, freeze_last_layer):
    """Drops the head's last-layer gradients during the first `freeze_last_layer` epochs."""
    if epoch >= freeze_last_layer:
        return
    for n, p in named:
        if "last_layer" in n:
            p.grad = None


class LARS(torch.optim.Optimizer):
    """LARS as in Barlow Twins: no weight decay and no trust ratio for 1-D parameters."""

    def __init__(self, params, lr=0, weight_decay=0, momentum=0.9, eta=0.001):
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum, eta=eta))

    @torch.no_grad()
    def step(self):
        for g in self.param_groups:
            for p in g["params"]:
                dp = p.grad
                if dp is None:
                    continue
                if p.ndim != 1:
                    dp = dp.add(p, alpha=g["weight_decay"])
                    param_norm = torch.norm(p)
                    update_norm = torch.norm(dp)
                    one = torch.ones_like(param_norm)
                    q = torch.where(param_norm > 0.0,
                                    torch.where(update_norm > 0, (g["eta"] * param_norm / update_norm), one),
                                    one)
                    dp = dp.mul(q)
                state = self.state[p]
                if "mu" not in state:
                    state["mu"] = torch.zeros_like(p)
                mu = state["mu"]
                mu.mul_(g["momentum"]).add_(dp)
                p.add_(mu, alpha=-g["lr"])
