"""What the novel blocks reveal when asked: typed return values, no hooks, no dotted-string keys.

Every block with internals has ``forward(x, return_internals=False)``; with ``True`` it returns ``(out, internals)``
where ``internals`` is one of the frozen dataclasses below. Tensors keep the batch dimension and stay in the graph
(a caller that wants gradients through them gets them; the studio detaches and copies what it shows).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass(frozen=True)
class KernelInternals:
    """Per-pixel kernels of one RDConv/SGDM layer.

    ``dynamic`` D (N, G, k*k, H', W'), softmax over k*k; ``guided`` K (N, G or C, k*k, H', W'), the kernel SGDM
    applies (None for plain RDConv, whose applied kernel is D); ``bank`` S (G or C, k*k), the shared static skeleton
    (None without guidance); ``entropy`` of D and ``hf_energy`` (Laplacian norm) of K, (N, G, H', W') or None.
    """

    dynamic: Tensor
    guided: Tensor | None = None
    bank: Tensor | None = None
    entropy: Tensor | None = None
    hf_energy: Tensor | None = None

    @property
    def kernel_size(self) -> int:
        return int(round(self.dynamic.shape[2] ** 0.5))


@dataclass(frozen=True)
class AttentionInternals:
    """CBAM's attention maps: ``channel`` (N, C, 1, 1) and ``spatial`` (N, 1, H, W), both in [0, 1]."""

    channel: Tensor
    spatial: Tensor


@dataclass(frozen=True)
class CEMInternals:
    """CEM at one target level: ``p_t' = p_t + α·F``.

    ``before`` p_t and ``after`` p_t' (N, C, H_t, W_t); ``fused`` the context term F (N, C, H_t, W_t);
    ``alpha`` the scalar α, or the mean of the learned gate when CEM is gated; ``gate`` the gate
    (N, 1, H_t, W_t) in [0, 1] or None.
    """

    before: Tensor
    fused: Tensor
    after: Tensor
    alpha: Tensor
    gate: Tensor | None = None


@dataclass(frozen=True)
class GateInternals:
    """FBSM at one level: foreground gate ``mask`` M (N, 1, H, W) in [0, 1] and its ``logits`` (N, 2, H, W)
    ([background, foreground]); the learned scalars of ``x' = x * (1 + beta * M) - delta * x * (1 - M)``: ``beta``
    (how much a foreground cell is amplified: a gate of 1 multiplies the feature by 1 + beta) and ``delta`` (the
    background suppression, None when the block has none), 0-d tensors."""

    mask: Tensor
    logits: Tensor
    beta: Tensor | None = None
    delta: Tensor | None = None
