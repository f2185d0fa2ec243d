"""ONNX export reproduces PyTorch under onnxruntime."""

from __future__ import annotations

from pathlib import Path

import pytest

import efpn
from efpn.infer.export import export_onnx
from tests.layers.sgdm_helpers import perturb


@pytest.mark.parametrize("name", ["tiny_efpn_n", "tiny_yolov5_sgdm"])
def test_onnx_matches_torch(name: str, tmp_path: Path) -> None:
    # trained-like weights and BatchNorm statistics: a fresh model's identity BatchNorms hide a wrong graph
    model = perturb(efpn.build_model(name, num_classes=3), seed=0, scale=0.05).eval()
    rep = export_onnx(model, tmp_path / "m.onnx", image_size=96)
    assert rep.path.is_file() and rep.ok
    assert rep.max_abs_diff_scores < 1e-4
    import json

    import onnx

    meta = {p.key: p.value for p in onnx.load(str(rep.path)).metadata_props}  # what a deployment reads
    assert json.loads(meta["names"]) == {"0": "0", "1": "1", "2": "2"} and json.loads(meta["imgsz"]) == [96, 96]
    assert meta["num_classes"] == "3" and meta["preset"] == name
    pp = model.config.postprocess  # efpn's own post-processing travels with the graph, to reproduce its detections
    assert json.loads(meta["postprocess"]) == {"score_thresh": pp.score_thresh, "nms_iou": pp.nms_iou,
                                               "pre_nms_topk_per_level": pp.pre_nms_topk, "max_det": pp.max_det,
                                               "levels": list(model.levels)}
    assert "then pad with zeros (this model's pixel_mean) at the bottom and right" in meta["input"]


def test_export_rejects_bad_size(tmp_path: Path) -> None:
    model = efpn.build_model("tiny_yolov8_sgdm", num_classes=3).eval()
    with pytest.raises(ValueError, match="multiple of 32"):
        export_onnx(model, tmp_path / "m.onnx", image_size=100)


def test_an_untrustworthy_export_never_replaces_a_good_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The export is checked under a temporary name and moved into place only when onnxruntime agrees: a rejected
    export raises, leaves the earlier file byte for byte, and leaves no temporary file."""
    import efpn.infer.export as ex

    model = efpn.build_model("tiny_efpn_n", num_classes=3).eval()
    good = export_onnx(model, tmp_path / "m.onnx", image_size=64).path
    before = good.read_bytes()
    monkeypatch.setattr(ex.ExportReport, "ok", property(lambda self: False))
    with pytest.raises(RuntimeError, match="not trustworthy and was not written to"):
        export_onnx(perturb(model, seed=1, scale=0.05), good, image_size=64)
    assert good.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


@pytest.mark.parametrize("name", ["tiny_efpn_n", "tiny_yolov8_sgdm"])
def test_a_dynamic_export_follows_any_input_size_as_pytorch_does(name: str, tmp_path: Path) -> None:
    """The priors are computed from the input's size inside the graph: one file serves every padded size (efpn's own
    input, resized and padded to a multiple of 32) and batch, where a fixed export only takes S x S."""
    import json

    import numpy as np
    import onnx
    import onnxruntime as ort
    import torch

    model = perturb(efpn.build_model(name, num_classes=3), seed=0, scale=0.05).eval()
    rep = export_onnx(model, tmp_path / "m.onnx", image_size=96, dynamic=True)
    assert rep.ok and rep.dynamic
    sess = ort.InferenceSession(str(rep.path), providers=["CPUExecutionProvider"])
    for shape in [(1, 3, 128, 64), (3, 3, 32, 160)]:
        x = torch.rand(*shape, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            run = model.run(x, decode=True)
        assert run.decoded is not None
        boxes, scores = sess.run(["boxes", "scores"], {"images": x.numpy()})
        assert boxes.shape == tuple(run.decoded[0].shape) and scores.shape == tuple(run.decoded[1].shape)
        assert np.abs(boxes - run.decoded[0].numpy()).max() < 1e-2
        assert np.abs(scores - run.decoded[1].numpy()).max() < 1e-4
    meta = {p.key: p.value for p in onnx.load(str(rep.path)).metadata_props}
    assert json.loads(meta["dynamic"]) is True and "next multiple of 32" in meta["input"]
    fixed = export_onnx(model, tmp_path / "f.onnx", image_size=96)
    assert not fixed.dynamic and fixed.num_priors == rep.num_priors
    fixed_meta = {p.key: p.value for p in onnx.load(str(fixed.path)).metadata_props}
    assert json.loads(fixed_meta["dynamic"]) is False


def test_padding_as_the_metadata_says_gives_efpns_scores(tmp_path: Path) -> None:
    """A model with a non-zero pixel_mean (every ImageNet backbone) normalises before it pads: the border it sees is
    0 after normalisation, so a deployment must pad with the mean, which the metadata names, not with zeros."""
    import re

    import numpy as np
    import onnx
    import onnxruntime as ort
    import torch

    mean = (0.485, 0.456, 0.406)
    model = perturb(efpn.build_model("tiny_efpn_n", num_classes=3, pixel_mean=mean, pixel_std=(0.229, 0.224, 0.225)),
                    seed=0, scale=0.05).eval()
    rep = export_onnx(model, tmp_path / "m.onnx", image_size=96, dynamic=True)
    said = {p.key: p.value for p in onnx.load(str(rep.path)).metadata_props}["input"]
    fill = re.search(r"pad with the RGB value \(([^)]*)\)", said)
    assert fill is not None, said
    value = torch.tensor([float(v) for v in fill.group(1).split(",")]).view(1, 3, 1, 1)
    torch.testing.assert_close(value.flatten(), torch.tensor(mean))
    image = torch.rand(1, 3, 70, 45, generator=torch.Generator().manual_seed(2))  # efpn pads it to 96 x 64 itself
    with torch.no_grad():
        run = model.run(image, decode=True)
    assert run.decoded is not None
    padded = value.expand(1, 3, 96, 64).clone()
    padded[..., :70, :45] = image
    sess = ort.InferenceSession(str(rep.path), providers=["CPUExecutionProvider"])
    scores = sess.run(["scores"], {"images": padded.numpy()})[0]
    assert np.abs(scores - run.decoded[1].numpy()).max() < 1e-4
