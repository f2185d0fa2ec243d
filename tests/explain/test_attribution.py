"""efpn.explain.attribution: the detection target, three Captum methods, faithfulness scores, no side effects."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import efpn
from efpn.data.synthetic import make_synthetic_sample
from efpn.explain.attribution import (
    DELETION_FRACTIONS,
    box_area_share,
    deletion_auc,
    deletion_curve,
    detection_score,
    integrated_gradients,
    layer_gradcam,
    mass_inside,
    occlusion,
    random_deletion_curve,
)
from efpn.explain.explanation import attribution_passes, explain_detection
from efpn.infer.preprocess import prepare


@pytest.fixture(scope="module")
def model() -> efpn.Detector:
    torch.manual_seed(0)
    return efpn.build_model("tiny_efpn_n", num_classes=3).eval()


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    return prepare(make_synthetic_sample(0, 2, 128, 4, 20, (4, 8)).image, 128).tensor


def _untouched(model: torch.nn.Module) -> None:
    for m in model.modules():
        assert not (m._forward_hooks or m._forward_pre_hooks or m._backward_hooks), m
    assert all(p.grad is None for p in model.parameters())
    assert not model.training


def test_target_equals_top_detection_score(model: efpn.Detector, image: torch.Tensor) -> None:
    """On the clean image T(x) of the best detection is its score (its own prior has IoU 1 with it)."""
    det = model.predict(image, score_thresh=0.0)[0]
    box, label, score = det["boxes"][0], int(det["labels"][0]), float(det["scores"][0])
    with torch.no_grad():
        t = float(detection_score(model, image, box, label)[0])
        other = float(detection_score(model, image, box, (label + 1) % model.num_classes)[0])
    assert t == pytest.approx(score, rel=1e-4)
    assert other != pytest.approx(t, rel=1e-6)  # another class scores differently


def test_target_is_differentiable_in_pixels(model: efpn.Detector, image: torch.Tensor) -> None:
    x = image.clone().requires_grad_(True)
    t = detection_score(model, x, torch.tensor([20.0, 20.0, 40.0, 40.0]), 0)
    (g,) = torch.autograd.grad(t.sum(), x)
    assert torch.isfinite(g).all() and g.abs().sum() > 0


def test_methods_shapes_and_no_side_effects(model: efpn.Detector, image: torch.Tensor) -> None:
    box = [30.0, 40.0, 46.0, 56.0]
    ig = integrated_gradients(model, image, box, 1, steps=4)
    occ = occlusion(model, image, box, 1, max_evals=16)
    cams = layer_gradcam(model, image, box, 1)
    assert ig.shape == occ.shape == (128, 128)
    assert list(cams) == list(model.levels) and all(c.shape == (128, 128) and (c >= 0).all() for c in cams.values())
    assert torch.isfinite(ig).all() and torch.isfinite(occ).all()
    # occlusion is local: nothing outside the region around the box
    assert occ[:, :4].abs().sum() == 0 or occ[:4, :].abs().sum() == 0
    _untouched(model)


def test_mass_inside_and_deletion_auc() -> None:
    a = np.zeros((10, 10), np.float32)
    a[2:4, 2:4] = 1.0
    assert mass_inside(a, [2, 2, 4, 4]) == pytest.approx(1.0)
    assert mass_inside(a, [6, 6, 9, 9]) == pytest.approx(0.0)
    assert mass_inside(np.zeros((5, 5)), [0, 0, 2, 2]) == 0.0
    assert deletion_auc([0, 0.5, 1.0], [2, 2, 2]) == pytest.approx(1.0)
    assert deletion_auc([0, 0.5, 1.0], [2, 0, 0]) == pytest.approx(0.25)


def test_deletion_curve_starts_at_the_clean_score(model: efpn.Detector, image: torch.Tensor) -> None:
    box, label = torch.tensor([30.0, 40.0, 46.0, 56.0]), 2
    with torch.no_grad():
        clean = float(detection_score(model, image, box, label)[0])
    attr = np.random.default_rng(0).random((128, 128)).astype(np.float32)
    fr, sc = deletion_curve(model, image, box, label, attr, fractions=(0.0, 0.1, 0.5))
    assert fr == [0.0, 0.1, 0.5] and sc[0] == pytest.approx(clean, rel=1e-5)
    fr_r, _ = deletion_curve(model, image, box, label, None, fractions=(0.0, 0.5))
    assert fr_r == [0.0, 0.5]


def test_explain_detection_bundle(model: efpn.Detector, image: torch.Tensor) -> None:
    ex = explain_detection(model, image, [30.0, 40.0, 46.0, 56.0], 0, ig_steps=4, occlusion_evals=16)
    assert set(ex.maps) == {"integrated_gradients", "occlusion"} and set(ex.gradcam) == set(model.levels)
    assert set(ex.deletion) == {"integrated_gradients", "occlusion", "gradcam", "random"}
    assert 0.0 < ex.mass_inside["box_area"] < 0.05
    assert all(0.0 <= v <= 1.0 for v in ex.mass_inside.values())
    # Grad-CAM's own share is that of the summed levels, the map its deletion curve follows
    summed = np.sum(list(ex.gradcam.values()), axis=0)
    assert ex.mass_inside["gradcam"] == pytest.approx(mass_inside(summed, ex.box))
    _untouched(model)


def test_bad_input_is_refused(model: efpn.Detector, image: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="xyxy"):
        integrated_gradients(model, image, [10, 10, 5, 20], 0)
    with pytest.raises(ValueError, match="label"):
        occlusion(model, image, [10, 10, 20, 20], 7)
    with pytest.raises(ValueError, match="unknown attribution"):
        explain_detection(model, image, [10, 10, 20, 20], 0, methods=("shap",))
    model.train()
    try:
        with pytest.raises(ValueError, match="eval-mode"):
            layer_gradcam(model, image, [10, 10, 20, 20], 0)
    finally:
        model.eval()


# ----------------------------------------------------------------------------------------------- progress and cancel


class Cancelled(BaseException):
    """Raised from a progress callback, as a UI's Cancel would (a BaseException: no ``except Exception`` stops it)."""


def _recorder() -> tuple[list[tuple[int, int]], object]:
    calls: list[tuple[int, int]] = []
    return calls, lambda done, total: calls.append((done, total))


def _counts_up(calls: list[tuple[int, int]], total: int) -> None:
    assert calls, "progress was never called"
    assert {t for _, t in calls} == {total}
    done = [d for d, _ in calls]
    assert done[0] >= 0 and done[-1] == total
    assert all(b > a for a, b in zip(done, done[1:])), done


def test_progress_counts_every_image_up_to_the_total(model: efpn.Detector, image: torch.Tensor) -> None:
    """IG reports path steps batch by batch, Occlusion its occluded images (+ the clean one), deletion its masked
    images, and explain_detection all of them, to the total attribution_passes counts beforehand."""
    box = [30.0, 40.0, 46.0, 56.0]
    calls, cb = _recorder()
    integrated_gradients(model, image, box, 1, steps=6, internal_batch_size=2, progress=cb)
    _counts_up(calls, 6)
    assert len(calls) == 4  # 0, 2, 4, 6: one report per batch of path points, then the end

    calls, cb = _recorder()
    occlusion(model, image, box, 1, max_evals=16, batch=4, progress=cb)
    total = calls[-1][1]
    _counts_up(calls, total)
    occ_only = attribution_passes(model, (128, 128), box, ("occlusion",), occlusion_evals=16, deletion=False,
                                  random_order=False)
    assert occ_only == {"forward_backward": 0, "forward": 1 + total}  # + the clean score explain_detection adds

    calls, cb = _recorder()
    random_deletion_curve(model, image, box, 1, progress=cb)
    _counts_up(calls, len(DELETION_FRACTIONS))

    calls, cb = _recorder()
    ex = explain_detection(model, image, box, 0, ig_steps=4, occlusion_evals=16, progress=cb)
    passes = attribution_passes(model, (128, 128), box, ig_steps=4, occlusion_evals=16)
    _counts_up(calls, passes["forward_backward"] + passes["forward"])
    assert passes["forward_backward"] == 4 + len(model.levels)  # IG steps + one pass per Grad-CAM level
    assert set(ex.pass_ms) == {"forward_backward", "forward"} and all(v > 0 for v in ex.pass_ms.values())
    _untouched(model)


@pytest.mark.parametrize("methods", [("integrated_gradients",), ("occlusion",), ("gradcam",),
                                     ("integrated_gradients", "occlusion", "gradcam")],
                         ids=["ig", "occlusion", "gradcam", "all"])
def test_an_exception_from_progress_aborts_cleanly(model: efpn.Detector, image: torch.Tensor,
                                                    methods: tuple[str, ...]) -> None:
    """A callback raising mid-way (a Cancel) stops explain_detection at once: the exception comes out, no result,
    the shared model is untouched (no hooks, no .grad, eval mode, grad mode as before) and the next call is as if
    nothing had happened."""
    box = [30.0, 40.0, 46.0, 56.0]
    reference = explain_detection(model, image, box, 1, methods=methods, ig_steps=4, occlusion_evals=16,
                                  ig_batch=1)
    seen: list[int] = []

    def cancel(done: int, total: int) -> None:
        seen.append(done)
        if done >= 3:
            raise Cancelled

    with pytest.raises(Cancelled):
        explain_detection(model, image, box, 1, methods=methods, ig_steps=4, occlusion_evals=16, ig_batch=1,
                          progress=cancel)
    passes = attribution_passes(model, (128, 128), box, methods, ig_steps=4, occlusion_evals=16)
    assert max(seen) < passes["forward_backward"] + passes["forward"]  # stopped before the end
    _untouched(model)
    assert torch.is_grad_enabled()
    again = explain_detection(model, image, box, 1, methods=methods, ig_steps=4, occlusion_evals=16, ig_batch=1)
    for name, m in reference.maps.items():
        np.testing.assert_allclose(again.maps[name], m, rtol=1e-5, atol=1e-7)
    assert again.deletion_auc == pytest.approx(reference.deletion_auc)


def test_cancelling_the_standalone_methods(model: efpn.Detector, image: torch.Tensor) -> None:
    box = [30.0, 40.0, 46.0, 56.0]

    def cancel(done: int, total: int) -> None:
        if done > 0:
            raise Cancelled

    with pytest.raises(Cancelled):
        integrated_gradients(model, image, box, 1, steps=8, internal_batch_size=2, progress=cancel)
    with pytest.raises(Cancelled):
        occlusion(model, image, box, 1, max_evals=16, batch=2, progress=cancel)
    with pytest.raises(Cancelled):
        deletion_curve(model, image, box, 1, None, progress=cancel)
    _untouched(model)
    assert torch.is_grad_enabled()


def test_random_deletion_curve_is_the_seeded_reference(model: efpn.Detector, image: torch.Tensor) -> None:
    """The random-order curve starts at the clean score, is fixed by its seed, and removes pixels in another order
    than an attribution map does; the box's area share is what a random map puts inside the box."""
    box, label = torch.tensor([30.0, 40.0, 46.0, 56.0]), 2
    with torch.no_grad():
        clean = float(detection_score(model, image, box, label)[0])
    fr, sc = random_deletion_curve(model, image, box, label)
    assert fr == list(DELETION_FRACTIONS) and sc[0] == pytest.approx(clean, rel=1e-5)
    assert random_deletion_curve(model, image, box, label) == (fr, sc)
    assert deletion_curve(model, image, box, label, None) == (fr, sc)  # the same seeded order
    _, other_seed = random_deletion_curve(model, image, box, label, seed=1)
    assert other_seed != sc
    # a map pointing exactly at the box deletes the box first: a different curve from random's
    a = np.zeros((128, 128), np.float32)
    a[40:56, 30:46] = 1.0
    _, boxed = deletion_curve(model, image, box, label, a)
    assert boxed != sc
    share = box_area_share(box, (128, 128))
    assert share == pytest.approx(16 * 16 / 128**2, rel=0.15)
    noise = np.random.default_rng(0).random((128, 128)).astype(np.float32)
    assert mass_inside(noise, box) == pytest.approx(share, rel=0.2)
    _untouched(model)
