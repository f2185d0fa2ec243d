"""``torch.compile`` (``--compile``, the GPU recipe's path): the dense network traces as one graph per part, in
training and at inference, and the compiled network computes what the eager one computes."""

from __future__ import annotations

import copy

import pytest
import torch

import efpn

#: One tiny preset per kind of part: SGDM (YOLOv8 and the MobileNetV2 flagship), CEM + FBSM, the plain FPN.
PRESETS = ("tiny_yolov8_sgdm", "tiny_efpn_mv2", "tiny_efpn_bs", "tiny_fpn")


@pytest.mark.parametrize("name", PRESETS)
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_every_part_traces_as_one_graph(name: str, mode: str) -> None:
    """A graph break splits a compiled part into pieces that run eagerly in between; at inference SGDM's cached
    BatchNorm fold once broke every layer's graph (33 breaks in the tiny YOLOv8-SGDM backbone)."""
    import torch._dynamo as dynamo

    torch.manual_seed(0)
    model = getattr(efpn.build_model(name, num_classes=2), mode)()
    x = torch.rand(2, 3, 128, 128)
    with torch.set_grad_enabled(mode == "train"):
        feats = model.backbone(x)
        pyramid = model.neck(feats)
        for part, arg in ((model.backbone, x), (model.neck, feats), (model.head, pyramid)):
            dynamo.reset()
            report = dynamo.explain(part)(arg)
            assert report.graph_break_count == 0, (type(part).__name__, [str(b.reason) for b in report.break_reasons])
    dynamo.reset()


def test_compiled_network_equals_eager() -> None:
    """Training losses and every parameter's gradient, then eval-mode detections, of a compiled SGDM model agree
    with the same model run eagerly (float32 CPU; the compiled graph may sum in another order)."""
    torch.manual_seed(0)
    eager = efpn.build_model("tiny_yolov8_sgdm", num_classes=2).train()
    compiled = copy.deepcopy(eager)
    compiled.compile_network()
    x = torch.rand(2, 3, 128, 128)
    targets = [{"boxes": torch.tensor([[10.0, 10.0, 18.0, 18.0], [60.0, 40.0, 90.0, 80.0]]),
                "labels": torch.tensor([0, 1])}] * 2
    la, lb = eager(x, targets), compiled(x, targets)
    for k in la:
        assert torch.allclose(la[k], lb[k], rtol=1e-4, atol=1e-6), (k, la[k], lb[k])
    sum(la.values()).backward()
    sum(lb.values()).backward()
    grads = {n.replace("_orig_mod.", ""): p.grad for n, p in compiled.named_parameters() if p.grad is not None}
    checked = 0
    for n, p in eager.named_parameters():
        if p.grad is None:
            continue
        scale = p.grad.abs().max().clamp_min(1e-8)
        assert ((p.grad - grads[n]).abs().max() / scale) < 2e-3, n
        checked += 1
    assert checked == len(grads) > 100
    eager.eval()
    compiled.eval()
    with torch.no_grad():
        da, db = eager.predict(x), compiled.predict(x)
    for a, b in zip(da, db, strict=True):
        assert a["boxes"].shape == b["boxes"].shape
        assert torch.allclose(a["boxes"], b["boxes"], atol=1e-3) and torch.allclose(a["scores"], b["scores"], atol=1e-5)
    torch._dynamo.reset()
