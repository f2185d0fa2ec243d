"""Every checkpoint in checkpoints/ loads, rebuilds from its card, and still behaves as when it was shipped."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

import efpn
from efpn.checkpoint import read_card
from efpn.cli.ship import load_sanity_image
from efpn.infer.predict import predict_image
from tests.conftest import REPO, SHARED_DATA

CKPT = REPO / "checkpoints"
SHIPPED = sorted(CKPT.glob("*.safetensors"))
DEFAULT = CKPT / "efpn_mv2_sirst.safetensors"  # real data, both papers: what make app opens
SYNTHETIC = CKPT / "efpn_n_synth.safetensors"  # the Learn page's flagship on synthetic objects


def test_default_checkpoints_are_shipped() -> None:
    assert DEFAULT.is_file(), "make app opens checkpoints/efpn_mv2_sirst.safetensors; it must be in the repository"
    assert SYNTHETIC.is_file(), "the synthetic flagship stays for the Learn page"
    assert read_card(DEFAULT)["data"]["dataset"] == "sirst"


def test_checkpoints_folder_stays_light() -> None:
    # under 50 MiB: a GPU call carries the tracked files (about 3 MiB besides checkpoints/) plus the packed SIRST,
    # pycocotools and MobileNetV2 weights (9.1 MiB) in 64 MiB (recipes/pack_gpu_data.py checks the sum)
    total = sum(p.stat().st_size for p in CKPT.iterdir() if p.is_file())
    assert total < 50 * 2**20, f"checkpoints/ is {total / 2**20:.1f} MiB; keep it under 50 MiB"


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_checkpoint_reproduces_its_card(path: Path) -> None:
    card = read_card(path)
    for key in ("preset", "config", "metrics", "sanity", "data", "epochs", "hardware", "wall_time_s"):
        assert key in card, f"{path.name}: card lacks {key!r}"
    model = efpn.load_model(path)
    rebuilt = efpn.build(efpn.ModelConfig.from_dict(card["config"]))
    assert list(rebuilt.state_dict()) == list(model.state_dict())
    checked = 0
    for entry in card["sanity"]["images"]:
        image = load_sanity_image(entry, SHARED_DATA)
        if image is None:
            continue
        det = predict_image(model, image, score_thresh=card["sanity"]["score_thresh"],
                            image_size=card["sanity"]["image_size"])
        assert abs(len(det["scores"]) - entry["count"]) <= max(1, entry["count"] // 10), (entry, len(det["scores"]))
        checked += 1
    if checked == 0:
        pytest.skip(f"{path.name}: its sanity images live in {SHARED_DATA}, which is not present")


@pytest.mark.parametrize(("path", "samples"), [(DEFAULT, REPO / "app" / "samples" / "sirst"),
                                               (SYNTHETIC, REPO / "app" / "samples")], ids=["sirst", "synth"])
def test_default_checkpoint_finds_an_object_on_a_bundled_sample(path: Path, samples: Path) -> None:
    gt = json.loads((samples / "annotations.json").read_text())
    model = efpn.load_model(path)
    best = 0.0
    for img in gt["images"]:
        anns = [a for a in gt["annotations"] if a["image_id"] == img["id"]]
        if not anns:
            continue
        boxes = torch.tensor([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                              for a in anns])
        det = predict_image(model, samples / "images" / img["file_name"], score_thresh=0.3)
        if len(det["boxes"]):
            best = max(best, float(box_iou(det["boxes"], boxes).max()))
    assert best >= 0.5, f"best IoU of a detection with a ground-truth box on the samples: {best:.2f}"


def test_sanity_images_of_synthetic_checkpoints_regenerate_exactly() -> None:
    entry = {"synthetic": {"seed": 0, "index": 3, "image_size": [96, 96], "min_size": 2, "max_size": 16,
                           "objects_per_image": [5, 10]}}
    a, b = load_sanity_image(entry), load_sanity_image(entry)
    assert isinstance(a, np.ndarray) and a.shape == (96, 96, 3)
    np.testing.assert_array_equal(a, b)
