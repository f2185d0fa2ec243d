"""Model size: parameters and GFLOPs (2 x multiply-accumulates, the convention of the YOLO reference sizes)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from efpn.layers import native


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (all, or only those requiring gradient)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


@torch.no_grad()
def count_gflops(model: nn.Module, image_size: int = 640) -> float:
    """GFLOPs of one forward through backbone, neck and head at ``image_size`` x ``image_size`` (batch 1).

    Counts convolutions and matmuls (``torch.utils.flop_counter``); decoding and NMS are excluded, as in the
    published YOLO sizes. The model's train/eval mode is left as it was (BatchNorm is not updated: no_grad
    and a module in train mode would update running stats, so eval-mode modules are required).
    """
    was_training = model.training
    if was_training:
        raise ValueError("count_gflops needs an eval-mode model (call model.eval())")
    device = next(model.parameters()).device
    x = torch.zeros(1, 3, image_size, image_size, device=device)
    # the PyTorch path (same function): a counter cannot see inside efpn's native kernels, whose FLOPs would be lost
    with native.switched_off(), FlopCounterMode(display=False) as counter:
        run = getattr(model, "_run", None)
        if run is not None:
            run(x, internals=False)
        else:
            model(x)
    return counter.get_total_flops() / 1e9
