"""The YOLO "Conv" unit: ``Conv2d(bias=False) -> BatchNorm2d -> activation``.

Attribute names (``conv``, ``bn``, ``act``) and the BatchNorm hyper-parameters (eps 1e-3, momentum 0.03)
follow the YOLOv5/YOLOv8 convention, so models built from it reach the reference parameter counts and their
state dicts read naturally.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from efpn.layers.bn_act import batchnorm_act

#: Builds an activation module, e.g. ``nn.SiLU``; ``None`` means identity.
ActLayer = Callable[[], nn.Module] | None


def autopad(k: int, p: int | None = None, d: int = 1) -> int:
    """Padding giving ``H_out = ceil(H_in / s)`` for an odd kernel ``k`` (dilation ``d``); ``p`` overrides.

    >>> autopad(3), autopad(1), autopad(3, d=2), autopad(6, 2)
    (1, 0, 2, 2)
    """
    if p is not None:
        return p
    k_eff = d * (k - 1) + 1  # the receptive extent of a dilated kernel
    return k_eff // 2


def make_act(act_layer: ActLayer) -> nn.Module:
    """Instantiate ``act_layer`` (a module class or factory); ``None`` gives :class:`nn.Identity`."""
    return nn.Identity() if act_layer is None else act_layer()


class ConvBNAct(nn.Module):
    """``act(BN(conv(x)))`` with a bias-free conv: (N, c_in, H, W) -> (N, c_out, H', W').

    ``H' = floor((H + 2p - k) / s) + 1``; with the default padding ``p = k // 2`` and odd ``k`` that is
    ``ceil(H / s)``. ``g`` groups the conv; ``act_layer=None`` leaves the output linear (used when the
    activation is applied after a sum, e.g. SGDM's static branch). Parameters: ``c_in * c_out * k^2 / g + 2 *
    c_out``.
    """

    def __init__(
        self,
        c_in: int,
        c_out: int,
        k: int = 1,
        s: int = 1,
        p: int | None = None,
        g: int = 1,
        act_layer: ActLayer = nn.SiLU,
    ):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, k, s, autopad(k, p), groups=g, bias=False)
        # YOLO BN settings: eps 1e-3, momentum 0.03 (PyTorch's momentum is 1 - Keras' 0.97)
        self.bn = nn.BatchNorm2d(c_out, eps=1e-3, momentum=0.03)
        self.act = make_act(act_layer)

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x)  # (N, c_out, H', W')
        if self.training:  # BatchNorm + activation in one native pass where it applies (CPU float32), same function
            fused = batchnorm_act(y, self.bn, self.act)
            if fused is not None:
                return fused
        return self.act(self.bn(y))


def check_nchw(x: Tensor, channels: int | None, who: str, name: str = "input") -> None:
    """Raise ValueError unless ``x`` is a 4-D (N, C, H, W) tensor with ``channels`` channels (None: any)."""
    if not isinstance(x, Tensor):
        raise ValueError(f"{who}: {name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{who}: {name} must be 4-D (N, C, H, W), got shape {tuple(x.shape)}")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(
            f"{who}: {name} has {x.shape[1]} channels but the module was built for {channels} (shape {tuple(x.shape)})"
        )
