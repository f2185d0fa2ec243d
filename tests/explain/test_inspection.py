"""Inspection coordinates and the one public forward: pages ask the inspection, never compute scales themselves."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.testing import assert_close

import efpn
from efpn.infer import network_hw, prepare


def test_network_hw_is_how_prepare_resizes() -> None:
    for hw, size in (((240, 320), 320), ((377, 500), 512), ((7, 9), 128)):
        scale, (h, w) = network_hw(hw, size)
        prep = prepare(np.zeros((*hw, 3), np.uint8), size)
        assert prep.tensor.shape[-2:] == (h, w) and prep.scale == scale
    assert network_hw((20000, 8), 640)[1] == (640, 1)
    with pytest.raises(ValueError, match=r"a 8x20000 px image becomes 1x640 px.*--slice"):
        prepare(np.zeros((20000, 8, 3), np.uint8), 640)  # too thin for one network input


def test_coordinates_round_trip_and_cells_match_the_network() -> None:
    torch.manual_seed(0)
    model = efpn.build_model("tiny_efpn_n", num_classes=2).eval()
    ins = efpn.inspect(model, np.zeros((100, 160, 3), np.uint8), image_size=128)  # scale 0.8
    assert ins.image_hw == (100, 160) and abs(ins.scale - 0.8) < 1e-9
    boxes = torch.tensor([[10.0, 20.0, 30.0, 45.0]])
    assert_close(ins.to_network(boxes), boxes * 0.8)
    assert_close(ins.to_image(ins.to_network(boxes)), boxes)
    # network px -> image px, clipped to the 160 x 100 image
    assert_close(ins.to_image(torch.tensor([[-5.0, 0.0, 500.0, 40.0]])), torch.tensor([[0.0, 0.0, 160.0, 50.0]]))
    assert_close(ins.to_image(torch.tensor([[0.0, 0.0, 8.0, 90.0]])), torch.tensor([[0.0, 0.0, 10.0, 100.0]]))
    assert ins.network_stride("p3") == 8 and ins.stride_in_image("p3") == 8 / 0.8
    layer = next(iter(ins.kernels))
    assert ins.network_stride(layer) == ins.kernels[layer].stride
    # image pixel 10 is network pixel 8.0: exactly the start of cell 1 at stride 8 (10 // 10.0 in image px, too)
    assert ins.cell_of("p3", 10.0, 10.0) == (1, 1)
    assert ins.cell_of("p3", 9.99, 0.0) == (0, 0)
    # the last cell holding image pixels (the map also has cells over the padding to the size divisor)
    assert ins.network_hw == (80, 128) and ins.gates["p3"].shape == (12, 16)
    assert ins.cell_of("p3", 1e6, 1e6) == (9, 15) and ins.cell_of("p3", -4, -4) == (0, 0)


def test_run_returns_typed_internals_for_every_level_and_layer() -> None:
    torch.manual_seed(0)
    model = efpn.build_model("tiny_efpn_n", num_classes=2).eval()
    x = torch.rand(1, 3, 96, 128)
    targets = [{"boxes": torch.tensor([[10.0, 10.0, 18.0, 16.0]]), "labels": torch.tensor([1])}]
    with torch.no_grad():
        run = model.run(x, internals=True, targets=targets, detect=True, decode=True)
    assert list(run.levels) == list(model.levels)
    cem_levels = {lv for lv, r in run.levels.items() if r.cem is not None}
    assert cem_levels == set(model.config.neck.cem.target_levels)
    for lv, r in run.levels.items():
        assert r.stride == 2 ** int(lv[1:]) and r.features.shape[-2:] == (-(-96 // r.stride), -(-128 // r.stride))
        if r.cem is not None:
            assert_close(r.cem.after, r.before_cem + r.cem.alpha * r.cem.fused)
        if r.gate is not None:
            assert r.gate_target is not None and r.gate_target.shape == r.gate.mask.shape
            assert float(r.gate_target.sum()) >= 1  # the box's centre cell at least
    assert {k: v.stride for k, v in run.kernels.items()} == {f"c{i}.down": 2**i for i in (2, 3, 4, 5)}
    boxes, scores = run.decoded
    assert boxes.shape[:2] == scores.shape[:2] == (1, run.priors.boxes.shape[0])
    assert set(run.losses) >= {"loss_cls", "loss_box"} and run.stats.accounting is not None
    with torch.no_grad():  # at threshold 0 the untrained model keeps detections, so the equality is not vacuous
        kept = model.run(x, internals=True, targets=targets, detect=True, score_thresh=0.0)
    plain = model.predict(x, score_thresh=0.0)
    assert len(plain[0]["boxes"]) > 0
    assert_close(kept.detections[0]["boxes"], plain[0]["boxes"])
    assert_close(kept.detections[0]["scores"], plain[0]["scores"])
    assert_close(run.detections[0]["boxes"], model.predict(x)[0]["boxes"])


def test_inspection_carries_fbsm_beta_per_gated_level() -> None:
    """``gate_beta`` holds, per level with a gate, the FBSM's learned beta (the amplification 1 + beta * M)."""
    import numpy as np
    import torch

    import efpn
    from efpn.layers.fbsm import FBSM

    torch.manual_seed(0)
    model = efpn.build_model("tiny_efpn_n", num_classes=2).eval()
    blocks = [m for m in model.modules() if isinstance(m, FBSM)]
    assert blocks
    with torch.no_grad():
        for i, block in enumerate(blocks):
            block.beta.fill_(1.5 + i)
    ins = efpn.inspect(model, np.zeros((64, 64, 3), np.uint8))
    assert set(ins.gate_beta) == set(ins.gates) and ins.gates
    assert sorted(ins.gate_beta.values()) == [1.5 + i for i in range(len(blocks))]
