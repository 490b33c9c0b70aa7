"""Losses: weighted-MSE heatmap regression, identification CE + gamma * Sequence Loss (paper Eq. 1-3).

Sequence Loss (differentiable max-plus dynamic programme, torch): for one image, P (n, c) holds the
mean predicted class probability (channels 1..C of the softmax; background left out and each
row renormalised to sum 1, as `vertedge.labelling.label` does at inference) inside each vertebra's 22 mm square, rows cranial -> caudal. With step weights
W (c, c) from `vertedge.sequence.transition_weights` (beta for "next", alpha for "same" and "skip
one", 0 = not allowed; T12 -> T13/L1, T13 -> L1, L5 -> L6 variant rules):

    OPT[1, j] = beta * P[1, j]
    OPT[i, j] = max_a OPT[i-1, a] + W[a, j] * P[i, j]     (allowed steps only)
    Ls = 1 - max_j OPT[n, j] / (beta * n)

so Ls = 0 for a perfect one-hot ascending P. Computed in units of beta, like the NumPy version.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.nn import functional as F


def transition_matrix(classes: Sequence[int], alpha: float = 0.1, beta: float = 0.8) -> np.ndarray:
    """(c, c) step weights (0 = not allowed): `vertedge.sequence.transition_weights`."""
    from vertedge.sequence import transition_weights

    return transition_weights(tuple(int(c) for c in classes), alpha, beta)


def heatmap_loss(pred: torch.Tensor, target: torch.Tensor, amplitude: float = 1.0, fg_weight: float = 10.0) -> torch.Tensor:
    """Weighted MSE: pixel weight 1 + fg_weight * target / amplitude (peaks count more than the background)."""
    w = 1.0 + fg_weight * target / amplitude
    return (w * (pred - target) ** 2).mean()


class SequenceLoss(torch.nn.Module):
    """Batched differentiable Sequence Loss over padded maps P (B, n, c) with a row mask valid (B, n)."""

    def __init__(self, classes: Sequence[int], alpha: float = 0.1, beta: float = 0.8) -> None:
        super().__init__()
        w = transition_matrix(classes, alpha, beta)
        self.weights: torch.Tensor
        self.penalty: torch.Tensor
        self.register_buffer("weights", torch.tensor(w / beta, dtype=torch.float32))
        self.register_buffer("penalty", torch.tensor(np.where(w > 0, 0.0, -1e9), dtype=torch.float32))

    def forward(self, P: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """(B,) losses; an image with no valid row gets loss 1 (no evidence)."""
        B, n, c = P.shape
        if valid is None:
            valid = torch.ones(B, n, dtype=torch.bool, device=P.device)
        opt = torch.zeros(B, c, dtype=P.dtype, device=P.device)
        started = torch.zeros(B, dtype=torch.bool, device=P.device)
        for i in range(n):
            v = valid[:, i]
            row = torch.where(v[:, None], P[:, i], torch.zeros_like(P[:, i]))
            cand = opt[:, :, None] + self.weights[None] * row[:, None, :] + self.penalty[None]
            step = cand.max(dim=1).values
            new = torch.where(started[:, None], step, row)
            opt = torch.where(v[:, None], new, opt)
            started = started | v
        count = valid.sum(dim=1).clamp(min=1).to(P.dtype)
        return 1.0 - opt.max(dim=1).values / count


def square_means(prob: torch.Tensor, boxes: list[np.ndarray], n_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded P (B, n_max, c) of mean class probabilities (channels 1..c) in each box, and valid (B, n_max).

    prob: (B, 1 + c, H, W) softmax output; boxes[b]: (n_b, 4) int [r0, r1, c0, c1), cranial -> caudal.
    Empty boxes are marked invalid. Separable row/column masks and two einsums (cheap backward).
    """
    B, _, H, W = prob.shape
    n_max = max([len(b) for b in boxes] + [1])
    rows = np.zeros((B, n_max, H), np.float32)
    cols = np.zeros((B, n_max, W), np.float32)
    area = np.ones((B, n_max), np.float32)
    ok = np.zeros((B, n_max), bool)
    for b, bx in enumerate(boxes):
        for i, (r0, r1, c0, c1) in enumerate(np.asarray(bx, int).reshape(-1, 4)):
            if r1 > r0 and c1 > c0:
                rows[b, i, r0:r1] = 1.0
                cols[b, i, c0:c1] = 1.0
                area[b, i] = (r1 - r0) * (c1 - c0)
                ok[b, i] = True
    R = torch.from_numpy(rows).to(prob)
    C = torch.from_numpy(cols).to(prob)
    t = torch.einsum("bchw,bnh->bncw", prob[:, 1:], R)
    P = torch.einsum("bncw,bnw->bnc", t, C) / torch.from_numpy(area).to(prob)[..., None]
    return P, torch.from_numpy(ok).to(prob.device)


def id_loss(logits: torch.Tensor, target: torch.Tensor, boxes: list[np.ndarray], seq: SequenceLoss | None,
            bg_weight: float = 0.1, gamma: float = 1.0) -> tuple[torch.Tensor, dict[str, float]]:
    """CE (background pixels weighted `bg_weight`) + gamma * mean Sequence Loss over the images."""
    n_ch = logits.shape[1]
    w = torch.ones(n_ch, dtype=logits.dtype, device=logits.device)
    w[0] = bg_weight
    ce = F.cross_entropy(logits, target, weight=w)
    total = ce
    parts = {"ce": float(ce.detach())}
    if seq is not None and gamma > 0:
        P, valid = square_means(torch.softmax(logits, dim=1), boxes, n_ch - 1)
        P = P / P.sum(dim=-1, keepdim=True).clamp(min=1e-6)  # background left out, as the runtime does
        has = valid.any(dim=1)
        if has.any():
            ls = seq(P[has], valid[has]).mean()
            total = total + gamma * ls
            parts["seq"] = float(ls.detach())
    parts["loss"] = float(total.detach())
    return total, parts
