"""Detection losses: pure functions of predictions and targets, plus the stateful :class:`DCLoss` weighting.

Assignment happens elsewhere (``efpn/det/assign.py``); these functions only see tensors already paired up
(one row per positive, or dense per prior). Reductions follow torch: ``"none"`` keeps the elementwise loss,
``"mean"`` and ``"sum"`` reduce over everything. Normalising by the number of positives is the caller's
(criterion's) job, except for :func:`mask_focal_loss`, which is self-contained.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from efpn.det.boxes import ciou_pairwise, giou_pairwise
from efpn.vocab import BUCKETS

__all__ = [
    "DCLoss",
    "Reduction",
    "bce_with_logits",
    "ciou_loss",
    "dfl_loss",
    "giou_loss",
    "mask_focal_loss",
    "sigmoid_focal_loss",
]

Reduction = Literal["none", "mean", "sum"]


def _reduce(loss: Tensor, reduction: Reduction) -> Tensor:
    if reduction == "none":
        return loss
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    raise ValueError(f"reduction must be 'none', 'mean' or 'sum', got {reduction!r}")


def _check_same_shape(a: Tensor, b: Tensor, names: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{names} must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")


# ----------------------------------------------------------------------------------------------------------
# Classification


def sigmoid_focal_loss(
    logits: Tensor,
    targets: Tensor,
    alpha: float | None = 0.25,
    gamma: float = 2.0,
    reduction: Reduction = "none",
) -> Tensor:
    """Focal loss (Lin et al. 2017) on independent sigmoids; ``logits`` and ``targets`` share any shape.

    ``targets`` in [0, 1] may be soft (IoU-aware / TAL quality scores). Per element, with ``p = σ(logit)``::

        loss = α_t · |t − p|^γ · BCE(logit, t),   α_t = α·t + (1 − α)·(1 − t)

    For hard targets ``|t − p|`` is the usual ``1 − p_t``; for soft targets it is the Quality-Focal-Loss
    factor, which vanishes when the prediction equals the target. ``alpha=None`` disables the α balance.
    Ours rather than ``torchvision.ops.sigmoid_focal_loss``, whose ``(1 − p_t)^γ`` stays non-zero when a soft
    target is predicted exactly (it equals ours for hard 0/1 targets; tested).
    """
    _check_same_shape(logits, targets, "logits and targets")
    targets = targets.to(logits.dtype)
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    loss = ce * (targets - p).abs().pow(gamma)
    if alpha is not None:
        loss = loss * (alpha * targets + (1 - alpha) * (1 - targets))
    return _reduce(loss, reduction)


def bce_with_logits(
    logits: Tensor, targets: Tensor, weight: Tensor | None = None, reduction: Reduction = "none"
) -> Tensor:
    """Binary cross-entropy on logits (YOLO objectness and classes); optional elementwise ``weight``.

    ``targets`` may be soft (YOLOv5 objectness target = IoU of the matched prediction).
    """
    _check_same_shape(logits, targets, "logits and targets")
    loss = F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype), reduction="none")
    if weight is not None:
        loss = loss * weight
    return _reduce(loss, reduction)


# ----------------------------------------------------------------------------------------------------------
# Box regression


def giou_loss(pred: Tensor, target: Tensor, reduction: Reduction = "none") -> Tensor:
    """``1 − GIoU`` of xyxy ``pred (..., 4)`` vs ``target (..., 4)`` -> ``(...,)`` in [0, 2)."""
    _check_same_shape(pred, target, "pred and target")
    return _reduce(1.0 - giou_pairwise(pred, target), reduction)


def ciou_loss(pred: Tensor, target: Tensor, reduction: Reduction = "none") -> Tensor:
    """``1 − CIoU`` of xyxy ``pred (..., 4)`` vs ``target (..., 4)`` -> ``(...,)``, 0 for a perfect box."""
    _check_same_shape(pred, target, "pred and target")
    return _reduce(1.0 - ciou_pairwise(pred, target), reduction)


def dfl_loss(pred_logits: Tensor, target_dist: Tensor, reduction: Reduction = "none") -> Tensor:
    """Distribution Focal Loss (Li et al. 2020, GFL) per positive -> ``(P,)`` (mean over the 4 sides).

    Args:
        pred_logits: ``(P, 4, reg_max)`` or ``(P, 4·reg_max)`` (side-major) bin logits.
        target_dist: ``(P, 4)`` target distances in bins (stride units), from
            :func:`efpn.det.boxes.bbox2dist`.

    A target ``y`` between bins ``j = ⌊y⌋`` and ``j + 1`` is the two-bin distribution ``(j + 1 − y, y − j)``;
    the loss is its cross-entropy with the predicted softmax, minimal (and the bin expectation equal to ``y``)
    when the prediction puts exactly those masses on the two bins. Targets are clamped into
    ``[0, reg_max − 1 − 0.01]`` so the upper bin always exists.
    """
    if pred_logits.ndim == 2:
        if pred_logits.shape[-1] % 4:
            raise ValueError(
                f"pred_logits (P, 4*reg_max) needs a multiple of 4, got {tuple(pred_logits.shape)}"
            )
        pred_logits = pred_logits.unflatten(-1, (4, pred_logits.shape[-1] // 4))
    if pred_logits.ndim != 3 or pred_logits.shape[1] != 4:
        raise ValueError(
            f"pred_logits must be (P, 4, reg_max) or (P, 4*reg_max), got {tuple(pred_logits.shape)}"
        )
    p, _, reg_max = pred_logits.shape
    if target_dist.shape != (p, 4):
        raise ValueError(f"target_dist must be (P, 4) = ({p}, 4), got {tuple(target_dist.shape)}")
    y = target_dist.to(pred_logits.dtype).clamp(0.0, reg_max - 1 - 0.01)  # (P, 4)
    left = y.floor().long()  # (P, 4) lower bin
    w_left = (left + 1).to(y.dtype) - y  # mass on the lower bin
    logp = pred_logits.log_softmax(dim=-1)  # (P, 4, reg_max)
    nll_left = -logp.gather(-1, left[..., None]).squeeze(-1)  # (P, 4)
    nll_right = -logp.gather(-1, (left + 1)[..., None]).squeeze(-1)
    loss = (w_left * nll_left + (1 - w_left) * nll_right).mean(dim=-1)  # (P,)
    return _reduce(loss, reduction)


# ----------------------------------------------------------------------------------------------------------
# FBSM mask supervision (SPEC §3)


def mask_focal_loss(
    logits: Tensor,
    target: Tensor,
    gamma: float = 2.0,
    alpha: float = 0.25,
    fg_index: int = 1,
    eps: float = 1e-6,
) -> Tensor:
    """Focal BCE of the FBSM foreground gate against a rasterised box mask -> scalar.

    Args:
        logits: ``(N, 2, H, W)`` FBSM logits (channel ``fg_index`` is foreground; the foreground probability
            is the 2-way softmax, computed in log space for stability), or ``(N, 1, H, W)`` an
            already-computed foreground probability ``M`` in [0, 1] (clamped to ``[eps, 1 − eps]``).
        target: ``(N, 1, H, W)`` in [0, 1] (1 inside GT boxes / at box centres; see ``FBSM.box_mask_target``).

    Per pixel ``α_t·|t − p|^γ·BCE(p, t)`` as in :func:`sigmoid_focal_loss`, **summed** over pixels and divided
    by ``max(1, Σ target)`` — the number of foreground cells, as RetinaNet normalises by positives — so the
    loss does not shrink with image size when tiny objects cover a handful of cells.
    """
    if logits.ndim != 4 or logits.shape[1] not in (1, 2):
        raise ValueError(
            f"logits must be (N, 2, H, W) logits or an (N, 1, H, W) mask, got {tuple(logits.shape)}"
        )
    n, _, h, w = logits.shape
    if target.shape != (n, 1, h, w):
        raise ValueError(f"target must be (N, 1, H, W) = ({n}, 1, {h}, {w}), got {tuple(target.shape)}")
    t = target.to(logits.dtype)
    if logits.shape[1] == 2:
        if fg_index not in (0, 1):
            raise ValueError(f"fg_index must be 0 or 1, got {fg_index}")
        logp = logits.log_softmax(dim=1)  # (N, 2, H, W)
        log_fg, log_bg = logp[:, fg_index : fg_index + 1], logp[:, 1 - fg_index : 2 - fg_index]
        p = log_fg.exp()
    else:
        p = logits.clamp(eps, 1 - eps)
        log_fg, log_bg = p.log(), (1 - p).log()
    ce = -(t * log_fg + (1 - t) * log_bg)  # (N, 1, H, W)
    loss = (alpha * t + (1 - alpha) * (1 - t)) * (t - p).abs().pow(gamma) * ce
    return loss.sum() / t.sum().clamp(min=1.0)


# ----------------------------------------------------------------------------------------------------------
# DCLoss (SPEC §4)


class DCLoss(nn.Module):
    """Dynamic Gradient-Balanced Loss: per-positive weights that equalise gradient across size buckets.

    Why: a positive's gradient magnitude is proxied by ``g = (1 − p) + (1 − IoU)`` (``|∂CE/∂logit|`` for a
    positive, plus the regression shortfall). Summed per image, a bucket that gets *less* of that gradient —
    because it has few positives (tiny objects starve under standard assigners, SPEC §1) or because its
    samples already look easy — has little say in the update. DCLoss keeps, per size bucket ``b``
    (``efpn.vocab.BUCKETS``), a running mean ``G_b`` of that per-image gradient and reweights positives by
    ``w_b = clip((mean_{b'} G_{b'} / G_b)^η, w_min, w_max)`` — less gradient, higher weight — then rescales
    the batch so that ``Σ_i w_{b(i)} = P``: the total positive loss scale is unchanged, only its split across
    buckets moves. Negatives are not reweighted.

    Running statistics (buffers, saved with the model, never part of the graph):

    * ``G (B,)``: EMA (``momentum``) of the per-image sum of ``g`` over the bucket's positives;
    * ``N (B,)``: EMA of the per-image positive count;
    * ``steps ()``: training calls seen so far.

    Every training-mode call updates all buckets (a bucket absent from the batch contributes a 0 observation,
    so ``G_b`` stays a per-image mean); the first call initialises the EMA with its observation. Buckets with
    ``G_b = 0`` (never seen) get weight 1, and the mean runs over buckets with ``G_b > 0``. For the first
    ``warmup`` training calls the weights are all 1 (statistics still update). In eval mode nothing updates.

    Not synchronised across DDP ranks: each rank keeps statistics of its own batches (inside a DDP-wrapped
    model with ``broadcast_buffers=True``, rank 0's statistics overwrite the others at every forward).
    """

    G: Tensor
    N: Tensor
    steps: Tensor

    def __init__(
        self,
        num_buckets: int = len(BUCKETS),
        eta: float = 0.5,
        momentum: float = 0.9,
        warmup: int = 500,
        w_min: float = 0.5,
        w_max: float = 4.0,
        base_gamma: float = 2.0,
        gamma_span: float = 2.0,
    ) -> None:
        super().__init__()
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if not 0 < w_min <= 1.0 <= w_max:
            raise ValueError(f"need 0 < w_min <= 1 <= w_max, got {w_min}, {w_max}")
        if warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {warmup}")
        self.num_buckets = num_buckets
        self.eta = eta
        self.momentum = momentum
        self.warmup = warmup
        self.w_min = w_min
        self.w_max = w_max
        self.base_gamma = base_gamma
        self.gamma_span = gamma_span
        self.register_buffer("G", torch.zeros(num_buckets))
        self.register_buffer("N", torch.zeros(num_buckets))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def extra_repr(self) -> str:
        return (
            f"buckets={self.num_buckets}, eta={self.eta}, momentum={self.momentum}, warmup={self.warmup}, "
            f"clip=({self.w_min}, {self.w_max})"
        )

    @property
    def in_warmup(self) -> bool:
        """True while the next training call still returns unit weights."""
        return int(self.steps) < self.warmup

    @torch.no_grad()
    def update(self, cls_prob_pos: Tensor, iou_pos: Tensor, bucket: Tensor, num_images: int) -> None:
        """Fold one batch of positives into ``G``, ``N`` (and count a step); see the class docstring."""
        g = (1 - cls_prob_pos.float()).clamp(0, 1) + (1 - iou_pos.float()).clamp(0, 2)  # (P,)
        g_sum = torch.zeros(self.num_buckets, device=g.device).index_add_(0, bucket, g)  # (B,)
        count = torch.bincount(bucket, minlength=self.num_buckets).float()  # (B,)
        obs_g = (g_sum / num_images).to(self.G)
        obs_n = (count / num_images).to(self.N)
        if int(self.steps) == 0:
            self.G.copy_(obs_g)
            self.N.copy_(obs_n)
        else:
            self.G.mul_(self.momentum).add_(obs_g, alpha=1 - self.momentum)
            self.N.mul_(self.momentum).add_(obs_n, alpha=1 - self.momentum)
        self.steps += 1

    def bucket_weights(self) -> Tensor:
        """Equilibrium weight per bucket ``(B,)`` from the statistics, before batch renormalisation."""
        present = self.G > 0
        if not bool(present.any()):
            return torch.ones_like(self.G)
        mean_g = self.G[present].mean()
        raw = (mean_g / self.G.clamp(min=torch.finfo(self.G.dtype).tiny)).pow(self.eta)
        return torch.where(present, raw.clamp(self.w_min, self.w_max), torch.ones_like(raw))

    @torch.no_grad()
    def weights(self, cls_prob_pos: Tensor, iou_pos: Tensor, bucket: Tensor, num_images: int) -> Tensor:
        """Detached weights ``(P,)`` for the batch's positives, with ``Σ w = P``.

        Args:
            cls_prob_pos: ``(P,)`` predicted probability of each positive's GT class (after sigmoid).
            iou_pos: ``(P,)`` IoU of each positive's decoded box with its GT.
            bucket: ``(P,)`` long, size bucket of the positive's GT, index into ``efpn.vocab.BUCKETS``.
            num_images: images in the batch (statistics are per image).

        In training mode the statistics are updated first (this batch included); the first ``warmup`` training
        calls return ones. Multiply the per-positive cls/box losses by the result before summing.
        """
        p = cls_prob_pos.shape[0] if cls_prob_pos.ndim == 1 else -1
        if p < 0 or iou_pos.shape != (p,) or bucket.shape != (p,):
            raise ValueError(
                "cls_prob_pos, iou_pos and bucket must all be (P,), got "
                f"{tuple(cls_prob_pos.shape)}, {tuple(iou_pos.shape)}, {tuple(bucket.shape)}"
            )
        if bucket.dtype != torch.long:
            raise ValueError(f"bucket must be int64, got {bucket.dtype}")
        if p and (int(bucket.min()) < 0 or int(bucket.max()) >= self.num_buckets):
            raise ValueError(
                f"bucket indices must lie in [0, {self.num_buckets}), got {bucket.unique().tolist()}"
            )
        if num_images < 1:
            raise ValueError(f"num_images must be >= 1, got {num_images}")
        warm = self.in_warmup
        if self.training:
            self.update(cls_prob_pos, iou_pos, bucket, num_images)
        ones = torch.ones(p, dtype=cls_prob_pos.dtype, device=cls_prob_pos.device)
        if warm or p == 0:
            return ones
        w = self.bucket_weights().to(ones)[bucket]  # (P,)
        return w * (p / w.sum())

    forward = weights

    def focusing_gamma(self, bucket: Tensor) -> Tensor:
        """EFL-style focusing γ per positive ``(P,)``: ``γ_b = base + span·(1 − G_b / max G)``.

        The bucket with the most gradient keeps the base γ; starved buckets focus harder, up to ``base +
        span``. Buckets without statistics (``G_b = 0``), and everything during warm-up, get the base γ.
        """
        if self.in_warmup or not bool((self.G > 0).any()):
            gamma = torch.full_like(self.G, self.base_gamma)
        else:
            gamma = self.base_gamma + self.gamma_span * (1 - self.G / self.G.max())
            gamma = torch.where(self.G > 0, gamma, torch.full_like(gamma, self.base_gamma))
        return gamma[bucket]

    def stats(self) -> dict[str, dict[str, float] | int | bool]:
        """Plain-Python snapshot for logging and the app.

        ``{"G": {bucket: float}, "N": {...}, "w": {...}, "gamma": {...}, "steps": int, "warmup": bool}``,
        where ``w`` is the bucket weight in effect now (ones during warm-up), before per-batch
        renormalisation.
        """
        names = (
            BUCKETS if self.num_buckets == len(BUCKETS) else tuple(str(i) for i in range(self.num_buckets))
        )
        w = torch.ones_like(self.G) if self.in_warmup else self.bucket_weights()
        gamma = self.focusing_gamma(torch.arange(self.num_buckets, device=self.G.device))
        return {
            "G": dict(zip(names, self.G.tolist())),
            "N": dict(zip(names, self.N.tolist())),
            "w": dict(zip(names, w.tolist())),
            "gamma": dict(zip(names, gamma.tolist())),
            "steps": int(self.steps),
            "warmup": self.in_warmup,
        }
