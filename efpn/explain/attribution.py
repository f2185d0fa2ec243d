"""Why did the detector find this box? Input and per-level attributions for one detection, with Captum.

A detection is not a model output you can differentiate directly (it comes out of thresholding and NMS), so
the attribution target is a smooth stand-in that is differentiable in the input pixels::

    T(x) = max over priors r of  score_r,c(x) * IoU(decoded_box_r(x), B)

for the chosen box ``B`` and class ``c``: the best-aligned prediction's confidence. It equals the detection's
score times its IoU with itself (= the score) on the clean image, whenever the detection's own prior wins.

Methods (Captum):

* Integrated Gradients - path integral of ∂T/∂x from a baseline (black or blurred image) to the image;
* Occlusion - drop in T when a window around each pixel is replaced by the image's mean colour; evaluated on a
  region around the box (a tiny object's evidence is local; the whole image would cost thousands of
  forwards), zero outside it;
* LayerGradCAM per pyramid level - ReLU(Σ_c mean(∂T/∂A_c) · A_c) on each level's feature map A,
  upsampled to the input.

Shared model, no hooks left behind: Integrated Gradients and Occlusion only call the forward function.
LayerGradCAM needs a forward hook on "the layer"; here that layer is a fresh ``nn.Identity`` tap, created for
this call and inserted between the neck's output and the head in our own forward function. Captum's hook
lands on the tap, never on a module of the shared model, so no copy of the model and no lock are needed,
and concurrent calls from other users see an untouched model. Gradients are taken with
``torch.autograd.grad`` inside Captum: no ``.grad`` is written on parameters, no mode is switched.

Every function takes the network input ``images`` (1, 3, H, W) in [0, 1] (``efpn.infer.preprocess.prepare``) and
the box in the same (network) pixels; maps are returned at that input resolution (H, W).

Progress and cost. The long computations (Integrated Gradients, Occlusion, deletion curves, and
``efpn.explain.explanation.explain_detection`` over all of them) take an optional ``progress(done, total)``
callback, counted in images through the network (one Integrated Gradients step = one forward+backward image; one
occluded image = one forward). It is called from the calling thread between batches, never from inside a backward
pass, with ``done`` increasing from 0 to ``total``; an exception it raises (a user's Cancel) propagates out of the
call and stops the computation: nothing is returned, and the model is as untouched as after a normal return (no
hooks, no ``.grad``, grad mode and train/eval mode as before). :mod:`efpn.explain.explanation` runs them together
on one detection, counts their images beforehand and times one, for estimates.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torchvision.transforms.functional as TF
from torch import Tensor, nn

from efpn.det.boxes import box_iou_pairwise
from efpn.models.detector import Detector

__all__ = [
    "DELETION_FRACTIONS",
    "METHODS",
    "Progress",
    "box_area_share",
    "deletion_auc",
    "deletion_curve",
    "detection_score",
    "integrated_gradients",
    "layer_gradcam",
    "mass_inside",
    "occlusion",
    "random_deletion_curve",
]

Method = Literal["integrated_gradients", "occlusion", "gradcam"]
#: Methods :func:`explain_detection` knows, in display order.
METHODS: tuple[str, ...] = ("integrated_gradients", "occlusion", "gradcam")
#: Shares of the pixels removed (most important first) along a deletion curve.
DELETION_FRACTIONS: tuple[float, ...] = (0.0, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.35, 0.5)

ScoreFn = Callable[[Tensor], Tensor]
#: ``progress(done, total)``: images through the network so far and in all (see the module docstring).
Progress = Callable[[int, int], None]


def _check(model: Detector, images: Tensor, box: Sequence[float] | Tensor, label: int) -> Tensor:
    """Validate inputs; returns the box as a float (4,) tensor on the images' device."""
    if model.training:
        raise ValueError("attribution needs an eval-mode model (train mode would update BatchNorm statistics)")
    model.check_images(images)
    if images.shape[0] != 1:
        raise ValueError(f"explain one image at a time: images must be (1, 3, H, W), got {tuple(images.shape)}")
    b = torch.as_tensor(box, dtype=torch.float32, device=images.device).reshape(-1)
    if b.numel() != 4 or not torch.isfinite(b).all() or b[2] <= b[0] or b[3] <= b[1]:
        raise ValueError(f"box must be a finite xyxy box with x2 > x1 and y2 > y1, got {b.tolist()}")
    if not 0 <= int(label) < model.num_classes:
        raise ValueError(f"label {label} outside [0, {model.num_classes})")
    return b


def detection_score(
    model: Detector,
    images: Tensor,
    box: Tensor,
    label: int,
    taps: Mapping[str, nn.Module] | None = None,
) -> Tensor:
    """T(x) for every image of a batch: (N, 3, H, W) -> (N,), differentiable in ``images``.

    ``box`` (4,) xyxy network px, ``label`` the class. ``taps`` (optional) are modules applied to each pyramid
    level between neck and head (identity taps that give LayerGradCAM a layer to observe).
    """
    run = model.run(images, decode=True, head_taps=taps)
    assert run.decoded is not None
    boxes, scores = run.decoded  # (N, R, 4) px, (N, R, K)
    iou = box_iou_pairwise(boxes.float(), box.view(1, 1, 4))  # (N, R)
    return (scores[..., int(label)].float() * iou).amax(dim=1)


def _score_fn(model: Detector, box: Tensor, label: int, taps: Mapping[str, nn.Module] | None = None) -> ScoreFn:
    return lambda x: detection_score(model, x, box, label, taps)


def _blurred(images: Tensor, sigma: float = 5.0) -> Tensor:
    k = 2 * int(math.ceil(3 * sigma)) + 1
    k = min(k, 2 * (min(images.shape[-2:]) // 2) - 1) if min(images.shape[-2:]) > 2 else 1
    return TF.gaussian_blur(images, [max(k, 1), max(k, 1)], [sigma, sigma]) if k > 1 else images.clone()


def _baseline(images: Tensor, kind: str) -> Tensor:
    if kind == "black":
        return torch.zeros_like(images)
    if kind == "blur":
        return _blurred(images)
    if kind == "mean":
        return images.mean(dim=(2, 3), keepdim=True).expand_as(images).contiguous()
    raise ValueError(f"unknown baseline {kind!r}; use 'black', 'blur' or 'mean'")


class _Tracker:
    """Counts images through the network and reports them to a :data:`Progress` callback.

    ``start(k)`` is called just before a batch of ``k`` images runs: the batch announced before it has finished,
    so ``done`` grows by that one and is reported. ``end()`` after the last batch reports the rest. Reports whose
    ``done`` did not change are skipped, so ``done`` strictly increases; it is capped at ``total``. One tracker may
    follow several computations in a row (:func:`explain_detection`).
    """

    def __init__(self, progress: Progress | None, total: int) -> None:
        self.progress = progress
        self.total = max(1, int(total))
        self.done = 0
        self._pending = 0
        self._reported = -1

    def start(self, k: int) -> None:
        self.done += self._pending
        self._pending = int(k)
        self._report()

    def end(self) -> None:
        self.done += self._pending
        self._pending = 0
        self._report()

    def _report(self) -> None:
        shown = min(self.done, self.total)
        if self.progress is not None and shown != self._reported:
            self._reported = shown
            self.progress(shown, self.total)  # may raise (a Cancel): the caller's computation stops here


def integrated_gradients(
    model: Detector,
    images: Tensor,
    box: Sequence[float] | Tensor,
    label: int,
    steps: int = 16,
    baseline: Literal["black", "blur", "mean"] = "blur",
    internal_batch_size: int = 4,
    progress: Progress | None = None,
) -> Tensor:
    """Integrated Gradients of T, summed over colour channels -> (H, W) float (signed).

    ``steps`` points on the straight path from the baseline to the image, ``internal_batch_size`` of them per
    forward+backward. ``progress(done, total)`` (optional) counts path steps: ``total = steps``, reported before
    each batch and once at the end; an exception it raises stops the computation (module docstring).
    """
    b = _check(model, images, box, label)
    tracker = _Tracker(progress, int(steps))
    attr = _integrated_gradients(model, images, b, label, int(steps), baseline, internal_batch_size, tracker)
    tracker.end()
    return attr


def _integrated_gradients(model: Detector, images: Tensor, b: Tensor, label: int, steps: int, baseline: str,
                          internal_batch_size: int, tracker: _Tracker) -> Tensor:
    from captum.attr import IntegratedGradients

    score = _score_fn(model, b, label)

    def counted(x: Tensor) -> Tensor:  # x: (k, 3, H, W), k path points of this batch
        tracker.start(x.shape[0])  # before the forward, outside autograd: a raise here leaves nothing behind
        return score(x)

    ig = IntegratedGradients(counted)
    attr = ig.attribute(
        images, baselines=_baseline(images, baseline), n_steps=steps, internal_batch_size=internal_batch_size
    )
    return attr[0].sum(dim=0).detach().cpu()


def _roi(box: Tensor, hw: tuple[int, int], side: int) -> tuple[int, int, int, int]:
    """A ``side`` x ``side`` window (clipped to the image) centred on the box: (x1, y1, x2, y2)."""
    h, w = hw
    cx, cy = float(box[0] + box[2]) / 2, float(box[1] + box[3]) / 2
    sw, sh = min(side, w), min(side, h)
    x1 = int(np.clip(round(cx - sw / 2), 0, w - sw))
    y1 = int(np.clip(round(cy - sh / 2), 0, h - sh))
    return x1, y1, x1 + sw, y1 + sh


@dataclass(frozen=True)
class _OcclusionPlan:
    """Where and how Occlusion slides its window: the region (x1, y1, x2, y2), window and stride in px, and the
    occluded images Captum evaluates (``windows``; it also runs the clean region once)."""

    roi: tuple[int, int, int, int]
    window: int
    stride: int

    @property
    def windows(self) -> int:
        x1, y1, x2, y2 = self.roi
        # Captum's count per axis: ceil((side - window) / stride) + 1
        per_axis = [math.ceil((side - self.window) / self.stride) + 1 for side in (y2 - y1, x2 - x1)]
        return per_axis[0] * per_axis[1]


def _occlusion_plan(b: Tensor, hw: tuple[int, int], window: int | None, stride: int | None,
                    max_evals: int) -> _OcclusionPlan:
    h, w = hw
    side_box = float(((b[2] - b[0]) * (b[3] - b[1])).sqrt())
    win = int(window or np.clip(round(side_box / 2), 4, 48))
    win = max(1, min(win, h, w))
    roi_side = int(max(4 * side_box, 8 * win, 64))
    x1, y1, x2, y2 = _roi(b, (h, w), roi_side)
    rh, rw = y2 - y1, x2 - x1
    st = int(stride or max(1, win // 2))
    per_axis = max(1, int(math.sqrt(max_evals)))
    if per_axis > 1:
        st = max(st, math.ceil((max(rh, rw) - win) / (per_axis - 1)))
    st = max(1, st)
    win = min(max(win, st), rh, rw)  # Captum needs stride <= window: a coarser grid also widens the window
    st = min(st, win)
    return _OcclusionPlan((x1, y1, x2, y2), win, st)


def occlusion(
    model: Detector,
    images: Tensor,
    box: Sequence[float] | Tensor,
    label: int,
    window: int | None = None,
    stride: int | None = None,
    max_evals: int = 196,
    batch: int = 8,
    progress: Progress | None = None,
) -> Tensor:
    """Occlusion sensitivity of T around the box -> (H, W) float (positive = occluding lowers the score).

    Windows of ``window`` px (default: half the box side, 4..48) slide with ``stride`` (default window/2) over
    a square region centred on the box (side max(4 x box side, 8 x window, 64), clipped to the image); the
    stride grows if needed so that at most about ``max_evals`` occluded images are evaluated, ``batch`` per
    forward. Pixels outside the region get 0. ``progress(done, total)`` (optional) counts evaluated images:
    ``total`` = occluded images + 1 (the clean region), reported before each batch and once at the end; an
    exception it raises stops the computation (module docstring).
    """
    b = _check(model, images, box, label)
    plan = _occlusion_plan(b, tuple(images.shape[-2:]), window, stride, max_evals)
    tracker = _Tracker(progress, plan.windows + 1)
    out = _occlusion(model, images, b, label, plan, batch, tracker)
    tracker.end()
    return out


def _occlusion(model: Detector, images: Tensor, b: Tensor, label: int, plan: _OcclusionPlan, batch: int,
               tracker: _Tracker) -> Tensor:
    from captum.attr import Occlusion

    h, w = images.shape[-2:]
    x1, y1, x2, y2 = plan.roi
    base_colour = images.mean(dim=(2, 3), keepdim=True)  # (1, 3, 1, 1)
    score = _score_fn(model, b, label)

    def on_region(region: Tensor) -> Tensor:  # region: (k, 3, rh, rw), k occluded copies of the region
        tracker.start(region.shape[0])  # between batches, under Captum's no_grad: a raise leaves nothing behind
        full = images.expand(region.shape[0], -1, -1, -1).clone()  # (k, 3, H, W)
        full[:, :, y1:y2, x1:x2] = region
        return score(full)

    crop = images[:, :, y1:y2, x1:x2]
    occ = Occlusion(on_region)
    attr = occ.attribute(
        crop,
        sliding_window_shapes=(3, plan.window, plan.window),
        strides=(3, plan.stride, plan.stride),
        baselines=base_colour.expand_as(crop).contiguous(),
        perturbations_per_eval=batch,
    )
    out = torch.zeros((h, w), dtype=torch.float32)
    out[y1:y2, x1:x2] = attr[0].mean(dim=0).detach().float().cpu()
    return out


def layer_gradcam(
    model: Detector,
    images: Tensor,
    box: Sequence[float] | Tensor,
    label: int,
    levels: Sequence[str] | None = None,
) -> dict[str, Tensor]:
    """LayerGradCAM of T on each pyramid level as the head reads it -> {level: (H, W) float >= 0}.

    Each level's map is computed at the level's resolution (one forward+backward per level) and upsampled
    bilinearly to the input size. Hooks go on per-call identity taps only (see the module docstring).
    """
    b = _check(model, images, box, label)
    return _layer_gradcam(model, images, b, label, levels, _Tracker(None, 1))


def _layer_gradcam(model: Detector, images: Tensor, b: Tensor, label: int, levels: Sequence[str] | None,
                   tracker: _Tracker) -> dict[str, Tensor]:
    from captum.attr import LayerAttribution, LayerGradCam

    names = list(levels or model.levels)
    taps = nn.ModuleDict({lv: nn.Identity() for lv in names})  # owned by this call alone
    fn = _score_fn(model, b, label, taps)
    out: dict[str, Tensor] = {}
    for lv in names:
        tracker.start(1)  # outside Captum: its hook on this call's tap is not yet registered
        cam = LayerGradCam(fn, taps[lv]).attribute(images, relu_attributions=True)  # (1, 1, h, w)
        up = LayerAttribution.interpolate(cam.detach(), tuple(images.shape[-2:]), "bilinear")
        out[lv] = up[0, 0].float().cpu()
    return out


def _box_pixels(box: Tensor | Sequence[float], hw: tuple[int, int]) -> Tensor:
    """(H, W) bool: pixels whose centre lies inside the box, and always the pixel holding the box centre."""
    b = torch.as_tensor(box, dtype=torch.float32).reshape(4)
    h, w = hw
    ys = torch.arange(h, dtype=torch.float32) + 0.5
    xs = torch.arange(w, dtype=torch.float32) + 0.5
    inside = ((ys >= b[1]) & (ys <= b[3]))[:, None] & ((xs >= b[0]) & (xs <= b[2]))[None, :]
    cy = int(np.clip(float(b[1] + b[3]) / 2, 0, h - 1))
    cx = int(np.clip(float(b[0] + b[2]) / 2, 0, w - 1))
    inside[cy, cx] = True
    return inside


def mass_inside(attr: Tensor | np.ndarray, box: Sequence[float] | Tensor) -> float:
    """Share of the attribution's absolute mass ``Σ|a|`` inside the box (0 for an all-zero map).

    Compare with the box's share of the image area (:func:`box_area_share`): a map that ignores the box (or a
    random one) scores about that much.
    """
    a = torch.as_tensor(np.asarray(attr, dtype=np.float32)).abs()
    total = float(a.sum())
    if total <= 0:
        return 0.0
    return float(a[_box_pixels(box, tuple(a.shape))].sum()) / total


def box_area_share(box: Sequence[float] | Tensor, hw: tuple[int, int]) -> float:
    """The box's share of the image's pixels (the pixels :func:`mass_inside` counts as inside): what a random or
    uniform map puts inside the box, the reference for :func:`mass_inside`."""
    return float(_box_pixels(box, hw).float().mean())


def deletion_curve(
    model: Detector,
    images: Tensor,
    box: Sequence[float] | Tensor,
    label: int,
    attr: Tensor | np.ndarray | None,
    fractions: Sequence[float] = DELETION_FRACTIONS,
    baseline: Literal["black", "blur", "mean"] = "blur",
    batch: int = 5,
    seed: int = 0,
    progress: Progress | None = None,
) -> tuple[list[float], list[float]]:
    """T after replacing the top-``f`` most attributed pixels by the baseline, for each ``f`` in ``fractions``.

    Pixels are removed in decreasing order of the (signed) attribution; ``attr=None`` removes them in a
    seeded random order (:func:`random_deletion_curve`, the reference a faithful map should beat: its curve
    drops faster). Returns ``(fractions, scores)``. ``progress(done, total)`` (optional) counts the masked images
    (``total = len(fractions)``), ``batch`` per forward.
    """
    b = _check(model, images, box, label)
    tracker = _Tracker(progress, len(fractions))
    out = _deletion_curve(model, images, b, label, attr, fractions, baseline, batch, seed, tracker)
    tracker.end()
    return out


def _deletion_curve(model: Detector, images: Tensor, b: Tensor, label: int, attr: Tensor | np.ndarray | None,
                    fractions: Sequence[float], baseline: str, batch: int, seed: int,
                    tracker: _Tracker) -> tuple[list[float], list[float]]:
    h, w = images.shape[-2:]
    if attr is None:
        gen = torch.Generator().manual_seed(seed)
        order = torch.randperm(h * w, generator=gen)
    else:
        a = torch.as_tensor(np.asarray(attr, dtype=np.float32)).reshape(-1)
        if a.numel() != h * w:
            raise ValueError(f"attribution has {a.numel()} values for a {h}x{w} input")
        order = torch.argsort(a, descending=True, stable=True)
    base = _baseline(images, baseline)
    fr = [float(f) for f in fractions]
    scores: list[Tensor] = []
    with torch.no_grad():
        for i in range(0, len(fr), batch):
            chunk = fr[i : i + batch]
            masked = []
            for f in chunk:
                m = torch.zeros(h * w, dtype=images.dtype, device=images.device)
                m[order[: int(round(f * h * w))].to(images.device)] = 1.0
                m = m.view(1, 1, h, w)
                masked.append(images * (1 - m) + base * m)
            tracker.start(len(chunk))
            scores.append(detection_score(model, torch.cat(masked), b, label))  # (len(chunk),)
    return fr, [float(s) for s in torch.cat(scores).cpu()]


def random_deletion_curve(
    model: Detector,
    images: Tensor,
    box: Sequence[float] | Tensor,
    label: int,
    fractions: Sequence[float] = DELETION_FRACTIONS,
    baseline: Literal["black", "blur", "mean"] = "blur",
    batch: int = 5,
    seed: int = 0,
    progress: Progress | None = None,
) -> tuple[list[float], list[float]]:
    """The deletion curve of a random pixel order (fixed by ``seed``): the reference every attribution map's
    :func:`deletion_curve` is read against. A map whose curve (and :func:`deletion_auc`) lies below this one
    points at pixels the score depends on; one on or above it does no better than chance. Same arguments and
    return value as :func:`deletion_curve`; the same ``seed`` gives the same curve."""
    return deletion_curve(model, images, box, label, None, fractions, baseline, batch, seed, progress)


def deletion_auc(fractions: Sequence[float], scores: Sequence[float]) -> float:
    """Area under a deletion curve, normalised by the clean score and the fraction range (lower = more
    faithful; about 1 when deleting changes nothing). 0 when the clean score is 0."""
    f = np.asarray(fractions, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    if len(f) < 2 or s[0] <= 0 or f[-1] <= f[0]:
        return 0.0
    area = float(np.sum((s[1:] + s[:-1]) / 2 * np.diff(f)))
    return area / (s[0] * (f[-1] - f[0]))
