"""One detection explained end to end: every chosen attribution method, its faithfulness, and its cost.

:func:`explain_detection` runs the methods of :mod:`efpn.explain.attribution` on one box (same target T, same
progress contract) and scores each map against its random baselines; :func:`attribution_passes` counts the images
such a call sends through the network before anything runs, and :attr:`Explanation.pass_ms` holds what one took,
so a caller can estimate a long computation on its own machine from a short one.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from efpn.explain.attribution import (
    DELETION_FRACTIONS,
    METHODS,
    Progress,
    _check,
    _deletion_curve,
    _integrated_gradients,
    _layer_gradcam,
    _occlusion,
    _occlusion_plan,
    _Tracker,
    box_area_share,
    deletion_auc,
    detection_score,
    mass_inside,
)
from efpn.models.detector import Detector

__all__ = ["Explanation", "attribution_passes", "explain_detection"]


@dataclass
class Explanation:
    """Attributions of one detection at input resolution (all maps (H, W) float32 numpy arrays).

    ``maps``: method -> signed map (``integrated_gradients``, ``occlusion``); ``gradcam``: level -> map >= 0;
    ``mass_inside``: method (``gradcam``: the sum of the levels' maps, the map its deletion curve follows) and
    ``gradcam.<level>`` -> share of |attribution| inside the box, with
    ``box_area`` the box's share of the image for reference (what a random map puts inside); ``deletion``:
    method (and ``random``, the seeded random pixel order) -> (fractions, scores); ``deletion_auc`` likewise;
    ``score`` is T on the clean image. ``timings_ms``: wall time of each method and of the deletion curves;
    ``pass_ms``: the time one image took through the network in this run, ``"forward_backward"`` (Integrated
    Gradients steps, LayerGradCAM levels) and ``"forward"`` (occluded and masked images, the clean score), for
    the kinds this run used: with :func:`attribution_passes` they estimate another run on the same machine.
    """

    box: tuple[float, float, float, float]
    label: int
    score: float
    maps: dict[str, np.ndarray] = field(default_factory=dict)
    gradcam: dict[str, np.ndarray] = field(default_factory=dict)
    mass_inside: dict[str, float] = field(default_factory=dict)
    deletion: dict[str, tuple[list[float], list[float]]] = field(default_factory=dict)
    deletion_auc: dict[str, float] = field(default_factory=dict)
    timings_ms: dict[str, float] = field(default_factory=dict)
    pass_ms: dict[str, float] = field(default_factory=dict)


def attribution_passes(
    model: Detector,
    hw: tuple[int, int],
    box: Sequence[float] | Tensor,
    methods: Sequence[str] = METHODS,
    ig_steps: int = 16,
    occlusion_window: int | None = None,
    occlusion_evals: int = 196,
    levels: Sequence[str] | None = None,
    deletion: bool = True,
    random_order: bool = True,
) -> dict[str, int]:
    """Images :func:`explain_detection` with these arguments sends through the network, counted before anything
    runs: ``{"forward_backward": n, "forward": m}`` (Integrated Gradients steps and LayerGradCAM levels need a
    backward pass; occluded and masked images and the clean score only a forward). ``hw`` is the network input's
    (H, W), ``box`` xyxy in its pixels. Their sum is the ``total`` the call reports to ``progress``; multiplied by
    :attr:`Explanation.pass_ms` of an earlier run they estimate its time."""
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise ValueError(f"unknown attribution methods {sorted(unknown)}; valid: {', '.join(METHODS)}")
    b = torch.as_tensor(box, dtype=torch.float32).reshape(-1)
    if b.numel() != 4 or not torch.isfinite(b).all() or b[2] <= b[0] or b[3] <= b[1]:
        raise ValueError(f"box must be a finite xyxy box with x2 > x1 and y2 > y1, got {b.tolist()}")
    curve = len(DELETION_FRACTIONS)
    backward, forward = 0, 1  # the clean score
    for method in methods:
        if method == "integrated_gradients":
            backward += int(ig_steps)
        elif method == "occlusion":
            forward += _occlusion_plan(b, hw, occlusion_window, None, occlusion_evals).windows + 1
        else:
            backward += len(list(levels or model.levels))
        forward += curve if deletion else 0
    forward += curve if deletion and random_order else 0
    return {"forward_backward": backward, "forward": forward}


def explain_detection(
    model: Detector,
    images: Tensor,
    box: Sequence[float] | Tensor,
    label: int,
    methods: Sequence[str] = METHODS,
    ig_steps: int = 16,
    occlusion_window: int | None = None,
    occlusion_evals: int = 196,
    levels: Sequence[str] | None = None,
    deletion: bool = True,
    random_order: bool = True,
    ig_batch: int = 4,
    progress: Progress | None = None,
) -> Explanation:
    """Run the chosen ``methods`` on one detection and score each map (mass inside the box, deletion curve).

    The deletion curve of Grad-CAM uses the sum of the per-level maps; with ``random_order`` the seeded random
    pixel order's curve (:func:`random_deletion_curve`) is added as ``"random"``, the reference to read the others
    against. ``ig_batch``: Integrated Gradients path points per forward+backward (smaller = finer progress).
    ``progress(done, total)`` (optional) follows every image through the network, ``total`` as
    :func:`attribution_passes` counts them; an exception it raises stops the computation and nothing is returned
    (module docstring). Unknown method names raise ValueError.
    """
    b = _check(model, images, box, label)
    passes = attribution_passes(model, tuple(images.shape[-2:]), b.cpu(), methods, ig_steps, occlusion_window,
                                occlusion_evals, levels, deletion, random_order)
    h, w = images.shape[-2:]
    tracker = _Tracker(progress, passes["forward_backward"] + passes["forward"])
    spent = {"forward_backward": [0.0, 0], "forward": [0.0, 0]}  # kind -> [seconds, images]

    def timed(kind: str, images_run: int, t0: float) -> float:
        took = time.perf_counter() - t0
        spent[kind][0] += took
        spent[kind][1] += images_run
        return 1e3 * took

    t0 = time.perf_counter()
    tracker.start(1)
    with torch.no_grad():
        clean = float(detection_score(model, images, b, label)[0])
    timed("forward", 1, t0)
    box_t = tuple(float(v) for v in b.cpu())
    ex = Explanation(box=box_t, label=int(label), score=clean)  # type: ignore[arg-type]
    ex.mass_inside["box_area"] = box_area_share(box_t, (h, w))
    ordering: dict[str, np.ndarray] = {}
    for method in methods:
        t0 = time.perf_counter()
        if method == "integrated_gradients":
            m = _integrated_gradients(model, images, b, label, int(ig_steps), "blur", ig_batch, tracker).numpy()
            ex.maps[method], ordering[method] = m, m
            ex.mass_inside[method] = mass_inside(m, box_t)
            ex.timings_ms[method] = timed("forward_backward", int(ig_steps), t0)
        elif method == "occlusion":
            plan = _occlusion_plan(b.cpu(), (h, w), occlusion_window, None, occlusion_evals)
            m = _occlusion(model, images, b, label, plan, 8, tracker).numpy()
            ex.maps[method], ordering[method] = m, m
            ex.mass_inside[method] = mass_inside(m, box_t)
            ex.timings_ms[method] = timed("forward", plan.windows + 1, t0)
        else:
            cams = {lv: v.numpy() for lv, v in _layer_gradcam(model, images, b, label, levels, tracker).items()}
            ex.gradcam = cams
            for lv, v in cams.items():
                ex.mass_inside[f"gradcam.{lv}"] = mass_inside(v, box_t)
            if cams:
                ordering[method] = np.sum(list(cams.values()), axis=0)  # (H, W): every level's evidence
                ex.mass_inside[method] = mass_inside(ordering[method], box_t)
            ex.timings_ms[method] = timed("forward_backward", len(cams), t0)
    if deletion:
        t0 = time.perf_counter()
        curves = [*ordering.items(), *([("random", None)] if random_order else [])]
        for name, a in curves:
            fr, sc = _deletion_curve(model, images, b, label, a, DELETION_FRACTIONS, "blur", 5, 0, tracker)
            ex.deletion[name] = (fr, sc)
            ex.deletion_auc[name] = deletion_auc(fr, sc)
        ex.timings_ms["deletion"] = timed("forward", len(curves) * len(DELETION_FRACTIONS), t0)
    tracker.end()
    ex.pass_ms = {kind: 1e3 * sec / n for kind, (sec, n) in spent.items() if n}
    return ex
