"""Assigners on hand-computed cases, edge cases (no boxes, degenerate boxes, boxes off the image), the SPEC §1
table claims, and the per-level accounting."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
import torch
from torch import Tensor
from torch.testing import assert_close

import efpn.det.assign as assign_mod
from efpn.det.accounting import LevelAccounting, account
from efpn.det.assign import Assignment, assign_atss, assign_fcos, assign_maxiou, assign_yolov5
from efpn.det.priors import Priors, anchor_priors, feature_sizes_for, point_priors, yolo_priors
from efpn.det.protocols import PROTOCOLS, assign_boxes
from efpn.det.tal import assign_tal

P3_P7 = ("p3", "p4", "p5", "p6", "p7")
P3_ONLY_YOLO = ((10, 13, 16, 30, 33, 23),)


def square(cx: float, cy: float, side: float) -> list[float]:
    return [cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2]


def boxes(*rows: list[float]) -> Tensor:
    return torch.tensor(rows, dtype=torch.float32).reshape(-1, 4)


def grid_2x2() -> Priors:
    """p3 2x2, one 32 px anchor per cell: (-12,-12,20,20) (-4,-12,28,20) (-12,-4,20,28) (-4,-4,28,28)."""
    return anchor_priors({"p3": (2, 2)}, anchor_scale=4.0, scales=(1.0,), ratios=(1.0,))


def tal_inputs(priors: Priors, k: int = 2) -> tuple[Tensor, Tensor]:
    return torch.full((len(priors), k), 0.5), torch.zeros(len(priors), 4)


def pairs(a: Assignment) -> list[tuple[int, int]]:
    return list(zip(a.prior_idx.tolist(), a.gt_idx.tolist()))


# ---------------------------------------------------------------------------------------------- MaxIoU


def test_maxiou_anchor_equal_to_gt_is_positive() -> None:
    # GT == anchor 0: IoU 1; anchors 1, 2 overlap it 24x32 -> 768 / 1280 = 0.6; anchor 3: 576 / 1472 < 0.4
    a = assign_maxiou(grid_2x2(), boxes([-12, -12, 20, 20]))
    assert_close(a.matched_gt(), torch.tensor([0, 0, 0, -1]))
    assert_close(a.iou, torch.tensor([1.0, 0.6, 0.6]))
    assert not a.fallback.any() and a.num_pos == 3


def test_maxiou_between_thresholds_is_ignored() -> None:
    # IoUs: 640/1408 = 0.455 (ignore), 896/1152 = 0.778 (pos), 480/1616 = 0.297 (neg),
    # 672/1424 = 0.472 (ignore)
    a = assign_maxiou(grid_2x2(), boxes([0, -12, 32, 20]))
    assert_close(a.matched_gt(), torch.tensor([-2, 0, -1, -2]))
    assert_close(a.iou, torch.tensor([896 / 1152]))


def test_maxiou_prior_positive_for_two_gts_goes_to_highest_iou() -> None:
    # GT0 == anchor 1, GT1 == anchor 0; each anchor's IoUs with the two GTs are {1, 0.6} or {0.6, 0.39}
    a = assign_maxiou(grid_2x2(), boxes([-4, -12, 28, 20], [-12, -12, 20, 20]))
    assert_close(a.matched_gt(), torch.tensor([1, 0, 1, 0]))
    assert pairs(a) == [(0, 1), (1, 0), (2, 1), (3, 0)]


def test_maxiou_low_quality_prior_keeps_its_highest_iou_gt() -> None:
    # one anchor (-12,-12,20,20); both GTs' best anchor is it: IoU 16/1024 vs 64/1024 -> it serves GT1 only
    p = anchor_priors({"p3": (1, 1)}, scales=(1.0,), ratios=(1.0,))
    a = assign_maxiou(p, boxes([0, 0, 4, 4], [0, 0, 8, 8]))
    assert pairs(a) == [(0, 1)] and a.fallback.tolist() == [True]
    assert_close(a.iou, torch.tensor([64 / 1024]))
    acc = account(a, p, boxes([0, 0, 4, 4], [0, 0, 8, 8]), pos_iou=0.5)
    assert acc.starved == [0, 1] and acc.positives_per_gt == [0, 1] and acc.regular_per_gt == [0, 0]
    # without low-quality matching nothing is positive
    assert assign_maxiou(p, boxes([0, 0, 8, 8]), low_quality=False).num_pos == 0


def test_maxiou_10px_box_gets_only_fallback_on_p3() -> None:
    priors = anchor_priors(feature_sizes_for((256, 256), P3_P7))
    gt = boxes(square(100, 100, 10))  # (100, 100) is the p3 centre of cell (12, 12)
    a = assign_maxiou(priors, gt)
    assert a.num_pos > 0 and a.fallback.all()
    assert priors.level[a.prior_idx].eq(0).all()
    # the box lies inside 1024 px^2 anchors (any ratio at scale 1): IoU 100 / 1024, up to float rounding
    assert_close(a.iou, torch.full((a.num_pos,), 100 / 1024))
    acc = account(a, priors, gt, pos_iou=0.5)
    assert acc.starved == [0] and acc.fallback_per_level["p3"] == a.num_pos


def test_maxiou_low_quality_includes_exact_ties() -> None:
    # square 32 px anchors on integer coordinates: the 3x3 cells around (100, 100) all contain the 10 px box
    priors = anchor_priors(feature_sizes_for((256, 256), ("p3",)), scales=(1.0,), ratios=(1.0,))
    a = assign_maxiou(priors, boxes(square(100, 100, 10)))
    assert a.prior_idx.tolist() == [y * 32 + x for y in (11, 12, 13) for x in (11, 12, 13)]
    assert a.fallback.all()
    assert_close(a.iou, torch.full((9,), 100 / 1024), rtol=0, atol=0)


def test_maxiou_ignore_regions() -> None:
    # no GT: nothing is ignored except priors covered by a region for >= 50% of their area
    p = grid_2x2()
    assert not assign_maxiou(p, boxes()).ignore.any()
    a = assign_maxiou(p, boxes(), ignore_regions=boxes([4, 4, 40, 40]))  # covers 1/4, 3/8, 3/8, 9/16
    assert a.ignore.tolist() == [False, False, False, True]
    assert_close(a.matched_gt(), torch.tensor([-1, -1, -1, -2]))


# ---------------------------------------------------------------------------------------------- ATSS


def test_atss_16px_box_only_p3() -> None:
    # p3 centres are 4 + 8k: a 16 px box centred on (100, 100) strictly contains only the centre (100, 100)
    a, priors, acc = assign_boxes("atss", boxes(square(100, 100, 16)), (256, 256))
    assert a.prior_idx.tolist() == [12 * 32 + 12]
    assert_close(a.iou, torch.tensor([256 / 4096]))  # 16 px box inside a 64 px anchor
    assert acc.positives_per_level == {"p3": 1, "p4": 0, "p5": 0, "p6": 0, "p7": 0}


def test_atss_conflict_goes_to_highest_iou() -> None:
    # same centre (a p3 centre): the 24 px box overlaps the 64 px anchors more (576 vs 256 / 4096)
    gt = boxes(square(100, 100, 16), square(100, 100, 24))
    a, _, acc = assign_boxes("atss", gt, (256, 256))
    assert a.num_pos == 9 and a.gt_idx.eq(1).all()  # 3x3 p3 centres strictly inside the 24 px box
    assert_close(a.iou, torch.full((9,), 576 / 4096))
    assert acc.starved == [0]


def test_atss_two_levels_threshold_can_exceed_every_iou() -> None:
    # with only p3, p4 the 9 + 9 candidate IoUs are {256/4096} x 9 and {256/16384} x 9: mean + std (unbiased)
    # is above 0.0625, so the 16 px box gets nothing - ATSS's statistics need several levels
    priors = anchor_priors(feature_sizes_for((128, 128), ("p3", "p4")), 8.0, (1.0,), (1.0,))
    assert assign_atss(priors, boxes(square(60, 60, 16))).num_pos == 0


# ---------------------------------------------------------------------------------------------- YOLOv5


@pytest.mark.parametrize(
    ("centre", "cells"),
    [
        ((18.0, 27.0), [(2, 3), (1, 3), (2, 2)]),  # g = (2.25, 3.375): left and up neighbours
        ((22.0, 30.0), [(2, 3), (3, 3), (2, 4)]),  # g = (2.75, 3.75): right and down
        ((20.0, 28.0), [(2, 3)]),  # g = (2.5, 3.5): fractions exactly 0.5, no neighbour
        ((2.0, 2.0), [(0, 0)]),  # g = (0.25, 0.25): left/up would leave the grid (box partly off the image)
    ],
)
def test_yolov5_neighbour_cells(centre: tuple[float, float], cells: list[tuple[int, int]]) -> None:
    priors = yolo_priors({"p3": (8, 8)}, P3_ONLY_YOLO)
    a = assign_yolov5(priors, boxes(square(*centre, 12)))  # 12 px matches all three p3 anchors
    expected = sorted((y * 8 + x) * 3 + k for x, y in cells for k in range(3))
    assert a.prior_idx.tolist() == expected and a.gt_idx.eq(0).all()


@pytest.mark.parametrize(
    ("side", "level_anchors"),
    [
        # max(w/a_w, a_w/w, h/a_h, a_h/h) < 4 with the YOLOv5 anchors (SPEC §8)
        (12, {(0, 0), (0, 1), (0, 2)}),  # p4's smallest side ratio is 61/12 = 5.1
        (28, {(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)}),  # p4 59x119: 119/28 = 4.25; p5 116/28 = 4.14
        (40, {(0, 1), (0, 2), (1, 0), (1, 1), (1, 2), (2, 0)}),  # p3 10x13: 40/10 = 4.0 is not < 4; p5 116/40
    ],
)
def test_yolov5_ratio_rule(side: int, level_anchors: set[tuple[int, int]]) -> None:
    a, priors, _ = assign_boxes("yolov5", boxes(square(100, 100, side)), (256, 256))
    got = set(zip(priors.level[a.prior_idx].tolist(), (a.prior_idx % 3).tolist()))
    assert got == level_anchors


def test_yolov5_repeated_prior_matches_highest_iou_gt() -> None:
    priors = yolo_priors({"p3": (8, 8)}, P3_ONLY_YOLO)
    # both at cell (2, 3); anchor 10x13 vs 10 px box: 100/130 = 0.769, vs 12 px box: 120/154 = 0.779
    a = assign_yolov5(priors, boxes(square(20, 28, 10), square(20, 28, 12)))
    prior = (3 * 8 + 2) * 3
    assert pairs(a)[:2] == [(prior, 0), (prior, 1)]
    assert_close(a.iou[:2], torch.tensor([100 / 130, 120 / 154]))
    assert a.matched_gt()[prior].item() == 1


# ---------------------------------------------------------------------------------------------- TAL


def test_tal_perfect_prediction_picks_inside_points() -> None:
    priors = point_priors({"p3": (8, 8)})
    gt = boxes([10, 10, 40, 30])  # strictly holds x in {12, 20, 28, 36}, y in {12, 20, 28}
    scores = torch.zeros(64, 2)
    scores[:, 1] = 1.0
    a = assign_tal(priors, gt, torch.tensor([1]), scores, gt.expand(64, 4), topk=20)
    inside = sorted(y * 8 + x for y in (1, 2, 3) for x in (1, 2, 3, 4))
    assert a.prior_idx.tolist() == inside
    assert_close(a.quality, torch.ones(12))
    assert_close(a.iou, torch.ones(12))
    top10 = assign_tal(priors, gt, torch.tensor([1]), scores, gt.expand(64, 4), topk=10)
    assert top10.num_pos == 10 and set(top10.prior_idx.tolist()) <= set(inside)


def test_tal_topk_by_metric_and_normalised_quality() -> None:
    priors = point_priors({"p3": (8, 8)})
    gt = boxes([10, 10, 40, 30])
    scores = (torch.arange(64, dtype=torch.float32)[:, None] + 1) / 64  # (R, 1): prior i scores (i + 1) / 64
    a = assign_tal(priors, gt, torch.tensor([0]), scores, gt.expand(64, 4), topk=3)
    assert a.prior_idx.tolist() == [26, 27, 28]  # the best-scored inside points
    # t = s^0.5 * 1^6 -> quality = t / max t * max IoU = sqrt(s / s_max)
    assert_close(a.quality, torch.tensor([27 / 29, 28 / 29, 1.0]).sqrt())


def test_tal_shared_point_goes_to_highest_iou() -> None:
    priors = point_priors({"p3": (8, 8)})
    gt = boxes([10, 10, 40, 30], [26, 10, 50, 30])  # both strictly hold x in {28, 36}
    pred = gt[1].expand(64, 4)  # every prediction is GT1: IoU 1 with it, 280/800 = 0.35 with GT0
    a = assign_tal(priors, gt, torch.tensor([0, 1]), torch.ones(64, 2), pred, topk=20)
    got = dict(zip(a.prior_idx.tolist(), a.gt_idx.tolist()))
    assert {p for p, g in got.items() if g == 0} == {y * 8 + x for y in (1, 2, 3) for x in (1, 2)}
    assert {p for p, g in got.items() if g == 1} == {y * 8 + x for y in (1, 2, 3) for x in (3, 4, 5)}
    assert_close(a.quality[a.gt_idx == 0], torch.full((6,), 0.35))
    with pytest.raises(ValueError, match="gt_labels"):
        assign_tal(priors, gt, torch.tensor([0, 2]), torch.ones(64, 2), pred)


# ---------------------------------------------------------------------------------------------- FCOS


def test_fcos_size_range_and_centre_sampling() -> None:
    # 160 px box centred on (128, 128): the centre region (+-1.5 stride) holds 2x2 points per level;
    # max(l,t,r,b) = 84 on p3 (> 64), 88 on p4 (in [64, 128]), 96 on p5 (< 128) -> p4 only
    priors = point_priors(feature_sizes_for((256, 256), P3_P7))
    a = assign_fcos(priors, boxes(square(128, 128, 160)))
    off = priors.level_slices()["p4"].start
    assert a.prior_idx.tolist() == sorted(off + y * 16 + x for y in (7, 8) for x in (7, 8))
    assert a.iou is None


def test_fcos_shared_point_goes_to_smallest_box() -> None:
    priors = point_priors(feature_sizes_for((256, 256), P3_P7))
    gt = boxes(square(120, 120, 48), square(120, 120, 40))
    a = assign_fcos(priors, gt)
    assert a.num_pos == 4 and a.gt_idx.eq(1).all()
    assert account(a, priors, gt).starved == [0]


# ---------------------------------------------------------------------------------------------- all assigners


def _run(name: str, priors_fn: Callable[[], Priors], gt: Tensor) -> Assignment:
    priors = priors_fn()
    if name == "tal":
        scores, pred = tal_inputs(priors)
        return assign_tal(priors, gt, torch.zeros(gt.shape[0], dtype=torch.int64), scores, pred)
    fn = {"maxiou": assign_maxiou, "atss": assign_atss, "yolov5": assign_yolov5, "fcos": assign_fcos}[name]
    return fn(priors, gt)


ASSIGNERS: dict[str, Callable[[], Priors]] = {
    "maxiou": lambda: anchor_priors(feature_sizes_for((64, 64), P3_P7)),
    "atss": lambda: anchor_priors(feature_sizes_for((64, 64), P3_P7), 8.0, (1.0,), (1.0,)),
    "yolov5": lambda: yolo_priors(feature_sizes_for((64, 64), ("p3", "p4", "p5"))),
    "fcos": lambda: point_priors(feature_sizes_for((64, 64), P3_P7)),
    "tal": lambda: point_priors(feature_sizes_for((64, 64), ("p3", "p4", "p5"))),
}


@pytest.mark.parametrize("name", list(ASSIGNERS))
def test_no_boxes_gives_no_positives_and_nothing_ignored(name: str) -> None:
    a = _run(name, ASSIGNERS[name], torch.zeros(0, 4))
    r = len(ASSIGNERS[name]())
    assert a.num_pos == 0 and a.num_priors == r and a.ignore.shape == (r,) and not a.ignore.any()
    assert_close(a.matched_gt(), torch.full((r,), -1))
    acc = account(a, ASSIGNERS[name](), torch.zeros(0, 4))
    d = json.loads(json.dumps(acc.to_dict()))
    assert d["num_gt"] == 0 and d["starved_rate"] == 0.0 and d["histogram"] == []


@pytest.mark.parametrize("name", list(ASSIGNERS))
def test_degenerate_boxes_are_never_positive(name: str) -> None:
    gt = boxes([12, 12, 12, 40], [12, 12, 40, 12], [40, 40, 12, 12], [float("nan"), 0, 10, 10])
    a = _run(name, ASSIGNERS[name], gt)
    assert a.num_pos == 0
    acc = account(a, ASSIGNERS[name](), gt)
    assert acc.starved == [0, 1, 2, 3] and acc.gt_sizes == [0.0] * 4 and acc.gt_buckets == ["vt"] * 4
    json.dumps(acc.to_dict(), allow_nan=False)


@pytest.mark.parametrize("protocol", ["maxiou", "atss", "yolov5", "fcos"])
def test_box_smaller_than_a_cell_lands_on_p3(protocol: str) -> None:
    # a 4 px box centred on the p3 centre (12, 12)
    a, priors, acc = assign_boxes(protocol, boxes([10, 10, 14, 14]), (64, 64))
    assert a.num_pos > 0 and priors.level[a.prior_idx].eq(0).all()
    if protocol == "yolov5":  # g = (1.5, 1.5): centre cell only; only 10x13 is within ratio 4 of 4 px
        assert a.prior_idx.tolist() == [(1 * 8 + 1) * 3]


def test_box_between_point_centres_starves_point_assigners() -> None:
    gt = boxes([5, 5, 7, 7])  # 2 px box strictly holding no p3 centre (4 + 8k)
    for protocol in ("atss", "fcos"):
        assert assign_boxes(protocol, gt, (64, 64))[2].starved == [0]
    a, _, acc = assign_boxes("maxiou", gt, (64, 64))
    assert a.num_pos > 0 and a.fallback.all() and acc.starved == [0]


@pytest.mark.parametrize("name", ["maxiou", "atss", "fcos", "tal"])
def test_blocked_computation_matches_single_block(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    g = torch.Generator().manual_seed(1)
    centres, sides = torch.rand(12, 2, generator=g) * 60, torch.rand(12, 1, generator=g) * 40 + 2
    gt = torch.cat([centres - sides / 2, centres + sides / 2], dim=1)
    gt = torch.cat([gt, gt[3:4]])  # a duplicate annotation: every tie goes to the lower index, GT 3
    whole = _run(name, ASSIGNERS[name], gt)
    assert 12 not in whole.gt_idx.tolist() and 3 in whole.gt_idx.tolist()
    monkeypatch.setattr(assign_mod, "_BLOCK_ELEMS", 1)  # one GT per block
    blocked = _run(name, ASSIGNERS[name], gt)
    assert pairs(whole) == pairs(blocked) and whole.num_pos > 0
    assert_close(whole.matched_gt(), blocked.matched_gt())


# ---------------------------------------------------------------------------------------------- SPEC §1 table


def random_squares(n: int, lo: float, hi: float, image: int = 256) -> Tensor:
    g = torch.Generator().manual_seed(0)
    side = torch.rand(n, 1, generator=g) * (hi - lo) + lo
    centre = torch.rand(n, 2, generator=g) * (image - 2 * hi) + hi
    return torch.cat([centre - side / 2, centre + side / 2], dim=1)


@pytest.mark.parametrize("protocol", ["maxiou", "atss", "fcos"])
def test_boxes_up_to_64px_never_reach_p5(protocol: str) -> None:
    acc = assign_boxes(protocol, random_squares(24, 4, 64), (256, 256))[2]
    assert acc.zero_high_level_share() == {"p5": 1.0, "p6": 1.0, "p7": 1.0}
    assert acc.to_dict()["zero_high_level_share"]["p5"] == 1.0


def test_16px_boxes_under_maxiou_are_fallback_on_p3_only() -> None:
    a, priors, acc = assign_boxes("maxiou", random_squares(16, 16, 16), (256, 256))
    assert a.fallback.all() and priors.level[a.prior_idx].eq(0).all()
    assert all(n > 0 for n in acc.positives_per_gt) and acc.regular_per_gt == [0] * 16
    assert acc.starved == list(range(16))  # fallback-only GTs are starved under pos_iou
    assert_close(a.iou.max(), torch.tensor(0.25))  # at best the box sits inside a 32 px anchor


@pytest.mark.parametrize(
    ("protocol", "side", "levels"),
    [
        ("maxiou", 32, {"p3"}),
        ("maxiou", 64, {"p3", "p4"}),
        ("atss", 32, {"p3"}),
        ("atss", 64, {"p3"}),
        ("yolov5", 28, {"p3", "p4"}),  # p5 needs w > 116 / 4 = 29 px
        ("yolov5", 30, {"p3", "p4", "p5"}),
    ],
)
def test_spec_table_levels_with_positives(protocol: str, side: float, levels: set[str]) -> None:
    acc = assign_boxes(protocol, random_squares(8, side, side), (256, 256))[2]
    assert {lv for lv, n in acc.positives_per_level.items() if n} == levels


def test_rpn_16px_boxes_have_no_regular_positive() -> None:
    a, priors, acc = assign_boxes("rpn", random_squares(8, 16, 16), (256, 256))
    assert acc.regular_per_gt == [0] * 8 and len(acc.starved) == 8
    assert a.iou.max() < 0.3 and priors.levels == ["p2", "p3", "p4", "p5", "p6"]


def test_unknown_protocol_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="maxiou, atss, yolov5, fcos, rpn"):
        assign_boxes("retina", boxes(), (64, 64))
    assert PROTOCOLS == ("maxiou", "atss", "yolov5", "fcos", "rpn")


# ---------------------------------------------------------------------------------------------- accounting


def test_account_buckets_use_original_size() -> None:
    priors = grid_2x2()
    gt = boxes([-12, -12, 20, 20], [0, 0, 12, 12])  # 32 px and 12 px in network pixels
    a = assign_maxiou(priors, gt)
    acc = account(a, priors, gt, scale=0.5)  # the network saw the image at half size
    assert acc.gt_buckets == ["l", "s"] and acc.gt_sizes == [64.0, 24.0]
    # GT1 is inside all four anchors (IoU 144/1024, a 4-way tie), but each anchor overlaps GT0 more: anchors
    # 0-2 regularly, anchor 3 (IoU 0.39) through GT1's low-quality match -> 4 positives of GT0, GT1 starved
    assert acc.per_level_bucket["p3"] == {"vt": 0, "t": 0, "s": 0, "m": 0, "l": 4}
    assert acc.fallback_per_level == {"p3": 1} and acc.positives_per_gt == [4, 0] and acc.starved == [1]
    with pytest.raises(ValueError):
        account(a, priors, gt, scale=0.0)


def test_accounting_merge_sums_and_offsets() -> None:
    priors = grid_2x2()
    gt1 = boxes([-12, -12, 20, 20])
    gt2 = boxes([0, -12, 32, 20], [100, 100, 110, 110])  # the second GT overlaps nothing: starved
    acc1 = account(assign_maxiou(priors, gt1), priors, gt1, pos_iou=0.5)
    acc2 = account(assign_maxiou(priors, gt2), priors, gt2, pos_iou=0.5)
    merged = LevelAccounting.empty(["p3"]).merge(acc1).merge(acc2)
    assert merged.num_images == 2 and merged.num_gt == 3
    assert merged.positives_per_level == {"p3": 4} and merged.fallback_per_level == {"p3": 0}
    assert merged.positives_per_gt == [3, 1, 0] and merged.starved == [2]
    assert merged.histogram() == [1, 1, 0, 1]
    d = json.loads(json.dumps(merged.to_dict()))
    assert d["starved_rate"] == pytest.approx(1 / 3) and d["zero_positive_rate"] == pytest.approx(1 / 3)
    assert d["per_level_bucket"]["p3"]["m"] == 4 and d["zero_high_level_share"] == {}
    with pytest.raises(ValueError):
        merged.merge(LevelAccounting.empty(["p3", "p4"]))


def test_zero_high_level_share_per_level() -> None:
    acc = LevelAccounting.empty(["p4", "p5", "p6"])
    acc.positives_per_gt_level = [[1, 0, 0], [0, 2, 0], [0, 0, 1], [0, 0, 0]]
    acc.num_gt = 4
    assert acc.zero_high_level_share() == {"p5": 0.5, "p6": 0.75}
