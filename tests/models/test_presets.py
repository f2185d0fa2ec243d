"""Contract tests for every preset: losses, gradients, detections, inspection, sizes, bad input."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

import efpn
from efpn.explain.inspection import assign_on
from efpn.layers import SGDM
from efpn.zoo import MAIN_PRESETS, PRESETS

TINY = [n for n in PRESETS if n.startswith("tiny_")]
LOSS_KEYS = {
    "retina": {"loss_cls", "loss_box"},
    "yolov5": {"loss_box", "loss_obj", "loss_cls"},
    "yolov8": {"loss_box", "loss_cls", "loss_dfl"},
}


def _batch(size: int = 96, n: int = 2, k: int = 3) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    """Bright squares on a dark noisy background, with their boxes (a few tiny, a few larger)."""
    g = torch.Generator().manual_seed(0)
    images = torch.rand(n, 3, size, size, generator=g) * 0.2
    targets = []
    for i in range(n):
        boxes, labels = [], []
        for j, s in enumerate((6, 10, 18, 28)):
            x0, y0 = 8 + 20 * j % (size - s - 8), 10 + 17 * (i + j) % (size - s - 10)
            images[i, j % 3, y0 : y0 + s, x0 : x0 + s] = 1.0
            boxes.append([x0, y0, x0 + s, y0 + s])
            labels.append(j % k)
        targets.append({"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels)})
    return images, targets


def _expected_loss_keys(model: efpn.Detector) -> set[str]:
    keys = set(LOSS_KEYS[model.config.head.kind])
    fb = model.config.neck.fbsm
    if fb is not None and fb.mask_loss_weight > 0:
        keys.add("loss_mask")
    return keys


@pytest.mark.parametrize("name", TINY)
def test_train_losses_finite_with_fixed_keys(name: str) -> None:
    model = efpn.build_model(name, num_classes=3).train()
    images, targets = _batch()
    losses = model(images, targets)
    assert set(losses) == _expected_loss_keys(model)
    for k, v in losses.items():
        assert v.dim() == 0 and torch.isfinite(v), k


@pytest.mark.parametrize("name", TINY)
def test_zero_boxes_image_trains(name: str) -> None:
    model = efpn.build_model(name, num_classes=3).train()
    images, _ = _batch(n=2)
    empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}] * 2
    losses = model(images, empty)
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_parameter_gets_gradient(name: str) -> None:
    model = efpn.build_model(name, num_classes=3).train()
    # CEM starts as the plain FPN (alpha = 0): open it so its branch weights are on the gradient path too.
    for m in model.modules():
        if hasattr(m, "alpha") and isinstance(m.alpha, torch.nn.ParameterDict):
            for p in m.alpha.values():
                p.data.fill_(0.5)
    # SGDM wrapping a pretrained conv starts with its dynamic branch at 0 (last BN gamma 0): open it likewise
    for m in model.modules():
        if isinstance(m, SGDM):
            last = m.pw[-1] if isinstance(m.pw, torch.nn.Sequential) else m.pw
            if not last.bn.weight.any():
                last.bn.weight.data.fill_(0.5)
    images, targets = _batch(size=64)
    sum(model(images, targets).values()).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    zero = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is not None and not p.grad.abs().sum()]
    assert not missing, f"parameters without gradient: {missing[:8]}"
    assert not zero, f"parameters with an all-zero gradient: {zero[:8]}"


def _overfit(name: str, size: int, steps: int) -> tuple[float, float]:
    torch.manual_seed(0)
    model = efpn.build_model(name, num_classes=3).train()
    images, targets = _batch(size=size)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    first = None
    for _ in range(steps):
        loss = sum(model(images, targets).values())
        first = float(loss.detach()) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        last = float(sum(model(images, targets).values()))
    return first, last


@pytest.mark.parametrize("name", TINY)
def test_overfits_one_batch(name: str) -> None:
    first, last = _overfit(name, 96, 40)
    assert last < 0.5 * first, f"{name}: loss {first:.3f} -> {last:.3f}"


_R50 = [n for n in MAIN_PRESETS if "r50" in n]
_SLOW = os.environ.get("EFPN_SLOW") == "1"


@pytest.mark.parametrize(
    "name",
    [n for n in MAIN_PRESETS if n not in _R50]
    + [pytest.param(n, marks=pytest.mark.skipif(not _SLOW, reason="ResNet-50 presets take ~90 s each on 2 CPU "
                                                "cores; set EFPN_SLOW=1 to run")) for n in _R50],
)
def test_main_preset_overfits_one_batch(name: str) -> None:
    """Every full-size preset learns one small batch too (64 px, so it stays cheap on CPU)."""
    first, last = _overfit(name, 64, 90 if name in _R50 else 30)
    assert last < 0.5 * first, f"{name}: loss {first:.3f} -> {last:.3f}"


@pytest.mark.parametrize("name", TINY)
def test_eval_detections_and_levels(name: str) -> None:
    model = efpn.build_model(name, num_classes=3).eval()
    images, _ = _batch(size=100)  # not a multiple of 32: the model pads
    assert all(set(d) == {"boxes", "scores", "labels", "levels"} for d in model(images))
    dets = model.predict(images, score_thresh=0.0)  # every prior may pass: an untrained model still gives boxes
    assert len(dets) == 2
    for d in dets:
        assert set(d) == {"boxes", "scores", "labels", "levels"}
        assert d["boxes"].shape[1] == 4 and d["boxes"].shape[0] == d["scores"].shape[0] > 0
        assert d["boxes"][:, 2].max() <= 100 and d["boxes"][:, 3].max() <= 100 and d["boxes"].min() >= 0
        assert int(d["levels"].max()) < len(model.levels) and int(d["levels"].min()) >= 0
    assert all(lv.startswith("p") for lv in model.levels)


@pytest.mark.parametrize("name", TINY)
def test_inspect_equals_forward_and_leaves_model_unchanged(name: str) -> None:
    model = efpn.build_model(name, num_classes=3).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images, targets = _batch(size=128, n=1)
    rgb = (images[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    view = efpn.inspect(model, rgb, targets={"boxes": targets[0]["boxes"], "labels": targets[0]["labels"]},
                        score_thresh=0.0, image_size=128)
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255
    plain = model.predict(x, score_thresh=0.0)[0]
    torch.testing.assert_close(view.detections["boxes"], plain["boxes"])
    torch.testing.assert_close(view.detections["scores"], plain["scores"])
    torch.testing.assert_close(view.detections["levels"], plain["levels"])
    after = model.state_dict()
    for k, v in before.items():
        torch.testing.assert_close(after[k], v, msg=f"inspect changed {k}")
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    assert view.assignment is not None
    acc = view.assignment.accounting
    assert acc.num_gt == 4 and set(acc.positives_per_level) == set(model.levels)
    if model.config.neck.cem is not None:
        assert set(view.cem_fused) == set(model.config.neck.cem.target_levels)
    if model.config.neck.fbsm is not None:
        for m in view.gates.values():
            assert 0 <= float(m.min()) and float(m.max()) <= 1
    if model.config.backbone.sgdm.backbone_stages and model.config.backbone.sgdm.block == "sgdm":
        assert "c3.down" in view.kernels
        km = view.kernels["c3.down"]
        torch.testing.assert_close(km.dynamic.sum(1), torch.ones_like(km.dynamic.sum(1)))



@pytest.mark.parametrize("name", TINY)
def test_assign_on_equals_inspect_with_targets(name: str) -> None:
    """Assigning boxes after a plain inspect (no second forward) gives inspect(targets=...)'s assignment."""
    model = efpn.build_model(name, num_classes=3).eval()
    images, targets = _batch(size=128, n=1)
    rgb = (images[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    t = {"boxes": targets[0]["boxes"], "labels": targets[0]["labels"]}
    with_t = efpn.inspect(model, rgb, targets=t, score_thresh=0.0, image_size=128).assignment
    plain = efpn.inspect(model, rgb, score_thresh=0.0, image_size=128)
    assert plain.assignment is None and plain.priors is not None
    view = assign_on(model, plain, t["boxes"], t["labels"])
    assert with_t is not None and view.assigner == with_t.assigner
    torch.testing.assert_close(view.assignment.prior_idx, with_t.assignment.prior_idx)
    torch.testing.assert_close(view.assignment.gt_idx, with_t.assignment.gt_idx)
    assert view.accounting.positives_per_level == with_t.accounting.positives_per_level
    assert view.accounting.starved == with_t.accounting.starved
    with pytest.raises(ValueError, match="4 boxes but 1 labels"):
        assign_on(model, plain, t["boxes"], [0])

def test_main_preset_sizes_match_references() -> None:
    """SPEC §7 / paper budgets: YOLOv5n 1.9 M ± 5 %, YOLOv8n 3.2 M ± 5 %, SGDM +0.33 M / +0.19 M ± 25 %."""
    p = {n: efpn.count_params(efpn.build_model(n, 80)) for n in ("yolov5n", "yolov5n_sgdm", "yolov8n", "yolov8n_sgdm")}
    assert abs(p["yolov5n"] - 1.9e6) <= 0.05 * 1.9e6, p
    assert abs(p["yolov8n"] - 3.2e6) <= 0.05 * 3.2e6, p
    assert abs((p["yolov5n_sgdm"] - p["yolov5n"]) - 0.33e6) <= 0.25 * 0.33e6, p
    assert abs((p["yolov8n_sgdm"] - p["yolov8n"]) - 0.19e6) <= 0.25 * 0.19e6, p


def test_gflops_of_yolov8n_near_reference() -> None:
    g = efpn.count_gflops(efpn.build_model("yolov8n", 80).eval(), 640)
    assert 8.7 * 0.9 <= g <= 8.7 * 1.1, g


def test_config_round_trip_rebuilds_identical_model() -> None:
    m = efpn.build_model("tiny_efpn_n", num_classes=2)
    cfg = efpn.ModelConfig.from_dict(m.config.to_dict())
    assert cfg == m.config
    m2 = efpn.build(cfg)
    assert [k for k in m.state_dict()] == [k for k in m2.state_dict()]


def test_main_presets_listed() -> None:
    for name in ("fpn_r18", "efpn_bs_r18", "yolov5n", "yolov5n_sgdm", "yolov8n", "yolov8n_sgdm", "efpn_n"):
        assert name in MAIN_PRESETS


# ------------------------------------------------------------------------------------------------ bad input


def test_unknown_preset_names_choices() -> None:
    with pytest.raises(ValueError, match="unknown preset 'yolov9x'.*efpn_n"):
        efpn.build_model("yolov9x")


@pytest.fixture(scope="module")
def tiny() -> efpn.Detector:
    return efpn.build_model("tiny_yolov8_sgdm", num_classes=3)


@pytest.mark.parametrize(
    "images, match",
    [
        (torch.rand(3, 64, 64), "4-D"),
        (torch.rand(1, 1, 64, 64), "3 RGB channels"),
        (torch.rand(1, 4, 64, 64), "3 RGB channels"),
        ((torch.rand(1, 3, 64, 64) * 255).to(torch.uint8), "float"),
        (torch.full((1, 3, 64, 64), math.nan), "NaN"),
        (torch.rand(2, 3, 64, 64).index_put_((torch.tensor(1), torch.tensor(2), torch.tensor(5), torch.tensor(7)),
                                             torch.tensor(math.nan)), "NaN"),  # one NaN pixel in the second image
        (torch.rand(1, 3, 64, 64).index_put_((torch.tensor(0),), torch.tensor(math.inf)), "infinite"),
        (torch.rand(1, 3, 64, 64) - 0.5, r"\[0, 1\], got range \[-0\.5"),
        (torch.rand(1, 3, 64, 64) * 255, r"\[0, 1\]"),
        ("not a tensor", "torch.Tensor"),
    ],
)
def test_bad_images_raise_clear_errors(tiny: efpn.Detector, images: object, match: str) -> None:
    tiny.eval()
    with pytest.raises(ValueError, match=match):
        tiny(images)


@pytest.mark.parametrize(
    "boxes, labels, match",
    [
        ([[10, 10, 5, 20]], [0], "not xyxy"),
        ([[10, 10, 10, 20]], [0], "zero size"),
        ([[100, 100, 120, 120]], [0], "zero size"),
        ([[1, 2, 3]], [0], r"\(M, 4\)"),
        ([[1, 2, float("nan"), 4]], [0], "NaN"),
        ([[1, 2, 10, 12]], [7], "labels must be in"),
        ([[1, 2, 10, 12]], [0, 1], "labels of shape"),
    ],
)
def test_bad_targets_raise_clear_errors(tiny: efpn.Detector, boxes: list, labels: list, match: str) -> None:
    tiny.train()
    t = [{"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels)}]
    with pytest.raises(ValueError, match=match):
        tiny(torch.rand(1, 3, 64, 64), t)


def test_boxes_partly_outside_are_clipped(tiny: efpn.Detector) -> None:
    tiny.train()
    t = [{"boxes": torch.tensor([[-5.0, -5.0, 20.0, 20.0], [50, 50, 90, 90]]), "labels": torch.tensor([0, 1])}]
    losses = tiny(torch.rand(1, 3, 64, 64), t)
    assert all(torch.isfinite(v) for v in losses.values())


def test_inspect_refuses_train_mode(tiny: efpn.Detector) -> None:
    tiny.train()
    with pytest.raises(ValueError, match="eval mode"):
        efpn.inspect(tiny, np.zeros((64, 64, 3), np.uint8))


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("rank", [3, 40])
def test_candidate_subset_keeps_detections_identical(name: str, rank: int, monkeypatch) -> None:
    """Decoding only the priors that can pass the threshold changes nothing in the detections. The threshold sits
    just under the ``rank``-th best score of the untrained model, so some priors pass and many do not."""
    import efpn.models.detector as det_mod

    model = efpn.build_model(name, num_classes=3).eval()
    images, _ = _batch(size=96, n=2)
    scores = torch.cat([d["scores"] for d in model.predict(images, score_thresh=0.0, nms_iou=1.0)])
    thresh = float(scores.sort(descending=True).values[rank - 1]) * 0.999
    fast = model.predict(images, score_thresh=thresh)
    assert sum(len(d["scores"]) for d in fast) > 0
    monkeypatch.setattr(det_mod, "candidate_subset", lambda out, priors, t: (out, priors))
    slow = model.predict(images, score_thresh=thresh)
    for a, b in zip(fast, slow):
        torch.testing.assert_close(a["scores"], b["scores"])
        torch.testing.assert_close(a["labels"], b["labels"])
        torch.testing.assert_close(a["levels"], b["levels"])
        torch.testing.assert_close(a["boxes"], b["boxes"], atol=1e-3, rtol=0)


def test_gflops_do_not_depend_on_the_native_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    """A FLOP counter cannot see inside efpn's native kernels: `efpn models` gave yolov8n_sgdm 8.89 GFLOPs with them
    and 8.97 with EFPN_NATIVE=0. Counting runs the PyTorch path, so both agree."""
    model = efpn.build_model("yolov8n_sgdm", 80).eval()
    native = efpn.count_gflops(model, 320)
    monkeypatch.setenv("EFPN_NATIVE", "0")
    assert efpn.count_gflops(model, 320) == pytest.approx(native, rel=1e-9)
