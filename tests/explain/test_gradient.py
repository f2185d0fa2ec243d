"""Gradient reach: the p5/p6 output convs get no positive-driven gradient from tiny objects in a plain FPN, and
do through CEM (SPEC §1, §2)."""

from __future__ import annotations

import pytest
import torch

import efpn
from efpn.explain.gradient import gradient_reach, high_level_grad_norms


def _tiny_scene() -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    img = torch.rand(1, 3, 128, 128) * 0.2
    boxes = torch.tensor([[20.0, 20.0, 28.0, 28.0], [70.0, 40.0, 80.0, 50.0]])  # 8 px and 10 px objects
    for x0, y0, x1, y1 in boxes.int().tolist():
        img[0, :, y0:y1, x0:x1] = 1.0
    return img, [{"boxes": boxes, "labels": torch.tensor([0, 1])}]


def _open_cem(model: efpn.Detector) -> None:
    for m in model.modules():
        if hasattr(m, "alpha") and isinstance(m.alpha, torch.nn.ParameterDict):
            for p in m.alpha.values():
                p.data.fill_(0.5)


def test_plain_fpn_starves_p5_p6_but_not_c5() -> None:
    model = efpn.build_model("tiny_fpn", num_classes=3).eval()
    images, targets = _tiny_scene()
    r = gradient_reach(model, images, targets)
    for lv in ("p5", "p6"):
        assert r[f"{lv}.output_conv.positive"] == 0.0
        assert r[f"{lv}.head_input.positive"] == 0.0
    assert r["c5.feature.positive"] > 0.0  # the top-down path still reaches the backbone
    assert r["p5.output_conv.total"] > 0.0  # negatives still produce gradient on p5


def test_cem_routes_positive_gradient_to_p5_p6_and_bypass_removes_it() -> None:
    model = efpn.build_model("tiny_efpn_bs", num_classes=3).eval()
    _open_cem(model)
    images, targets = _tiny_scene()
    with_cem = gradient_reach(model, images, targets)
    without = gradient_reach(model, images, targets, bypass_cem=True)
    for lv in ("p5", "p6"):
        assert with_cem[f"{lv}.output_conv.positive"] > 0.0
        assert without[f"{lv}.output_conv.positive"] == 0.0
        assert with_cem[f"{lv}.head_input.positive"] == 0.0  # the head itself still sees no tiny positives


def test_a_shared_backbone_pass_gives_the_same_reach() -> None:
    """The backbone's output computed once without gradients (what the studio shares between the runs with and
    without CEM) gives the same numbers as each run's own backbone pass, c5 included."""
    model = efpn.build_model("tiny_efpn_bs", num_classes=3).eval()
    _open_cem(model)
    images, targets = _tiny_scene()
    with torch.no_grad():
        features = model.backbone_features(images)
    assert not any(f.requires_grad for f in features[0].values())
    for bypass in (False, True):
        own = gradient_reach(model, images, targets, bypass_cem=bypass)
        shared = gradient_reach(model, images, targets, bypass_cem=bypass, features=features)
        assert set(shared) == set(own)
        for k, v in own.items():
            assert abs(shared[k] - v) <= 1e-5 * abs(v) + 1e-9, k
    assert not any(f.requires_grad for f in features[0].values())  # the caller's tensors are left as they were


def test_run_with_given_features_equals_a_whole_run() -> None:
    model = efpn.build_model("tiny_yolov8_sgdm", num_classes=3).eval()
    images = torch.rand(2, 3, 96, 128)
    with torch.no_grad():
        whole = model.run(images, decode=True, internals=True)
        given = model.run(images, decode=True, internals=True, features=model.backbone_features(images, True))
        assert whole.decoded is not None and given.decoded is not None
        for a, b in zip(whole.decoded, given.decoded):
            torch.testing.assert_close(a, b)
        assert set(given.kernels) == set(whole.kernels)
        with pytest.raises(ValueError, match="these 1 image"):  # another batch's features are refused
            model.run(images[:1], features=model.backbone_features(images))


def test_gradient_reach_leaves_model_untouched() -> None:
    model = efpn.build_model("tiny_efpn_bs", num_classes=3).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    gradient_reach(model, *_tiny_scene())
    assert all(p.grad is None for p in model.parameters())
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k])


def test_high_level_grad_norms_after_backward() -> None:
    model = efpn.build_model("tiny_efpn_bs", num_classes=3).train()
    _open_cem(model)
    images, targets = _tiny_scene()
    sum(model(images, targets).values()).backward()
    norms = high_level_grad_norms(model)
    assert set(norms) == {"p5", "p6"} and all(v > 0 for v in norms.values())
