"""Pack datasets compactly for a GPU machine that receives at most 64 MiB of files with the repository.

For each data YAML given, both splits are loaded with efpn's loaders (masks become boxes here, so the GPU side
needs only COCO JSON), images are re-encoded (single-channel PNG when the image is grey, as infrared and SAR
images are; JPEG at ``--quality`` for colour, or for grey images when ``--jpeg`` is set) and written with one COCO
JSON per split and a data YAML under ``carry/data/<name>/``. It also fetches the wheels the GPU image lacks
(pycocotools for Python 3.12) into ``carry/whl`` when ``--wheels`` is given, and writes float16 backbone-only
copies of the ImageNet weights the pretrained presets start from into ``carry/weights`` (``--weights``; the GPU
recipe points ``EFPN_PRETRAINED_DIR`` there). Prints the sizes against the budget.

    python recipes/pack_gpu_data.py recipes/data/sirst.yaml recipes/data/ssdd.yaml --jpeg ssdd --wheels
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from efpn.data.images import read_image  # noqa: E402
from efpn.data.splits import load_split  # noqa: E402
from efpn.models.pretrained import pack_backbone_weights  # noqa: E402

BUDGET = 64 << 20


def _encode(rgb: np.ndarray, jpeg: bool, quality: int) -> tuple[bytes, str]:
    grey = bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())
    img = rgb[..., 0] if grey else cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    if jpeg or not grey:
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
        return buf.tobytes(), ".jpg"
    ok, buf = cv2.imencode(".png", img, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    return buf.tobytes(), ".png"


def pack(yaml_path: Path, out_root: Path, jpeg: bool, quality: int) -> int:
    name = yaml_path.stem
    out = out_root / name
    if out.exists():  # files of an earlier pack (other names) would travel too
        shutil.rmtree(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    yaml_lines = ["format: coco", f"root: {name}", ""]
    names: list[str] = []
    for split in ("train", "val"):
        records, names, _ = load_split(yaml_path, split)
        images, anns = [], []
        for rec in records:
            data, suffix = _encode(read_image(rec.path), jpeg, quality)
            file_name = f"{split}_{rec.image_id:06d}{suffix}"
            (out / "images" / file_name).write_bytes(data)
            images.append({"id": rec.image_id, "file_name": file_name, "width": rec.width, "height": rec.height})
            for box, label in zip(rec.boxes.tolist(), rec.labels.tolist()):
                x1, y1, x2, y2 = box
                anns.append({"id": len(anns) + 1, "image_id": rec.image_id, "category_id": int(label),
                             "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
        cats = [{"id": i, "name": n} for i, n in enumerate(names)]
        (out / f"{split}.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
        yaml_lines += [f"{split}:", f"  annotations: {split}.json", "  images: images"]
    yaml_lines.insert(2, f"names: [{', '.join(names)}]")
    (out_root / f"{name}.yaml").write_text("\n".join(yaml_lines) + "\n")
    return sum(f.stat().st_size for f in out.rglob("*") if f.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("yamls", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, default=REPO / "carry" / "data")
    ap.add_argument("--jpeg", nargs="*", default=[], help="dataset names whose grey images are stored as JPEG")
    ap.add_argument("--quality", type=int, default=90)
    ap.add_argument("--wheels", action="store_true", help="also download pycocotools for the GPU image's Python 3.12")
    ap.add_argument("--weights", nargs="*", default=["mobilenet_v2"], metavar="NAME",
                    help="ImageNet backbones to carry as float16 backbone-only copies in carry/weights (the GPU "
                         "image has neither weight wheel; default: mobilenet_v2, 4.4 MiB; efficientnet_lite0 adds "
                         "5.6 MiB, beyond what a call takes beside the repository today)")
    args = ap.parse_args()
    total = 0
    for y in args.yamls:
        size = pack(y, args.out, y.stem in args.jpeg, args.quality)
        total += size
        print(f"{y.stem}: {size / 2**20:.1f} MiB")
    if args.wheels:
        whl = args.out.parent / "whl"
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                        "--python-version", "3.12", "--implementation", "cp", "--platform", "manylinux_2_17_x86_64",
                        "--platform", "manylinux2014_x86_64", "-d", str(whl), "pycocotools==2.0.10"], check=True)
        total += sum(f.stat().st_size for f in whl.glob("*.whl"))
    for name in args.weights:
        packed = pack_backbone_weights(name, args.out.parent / "weights")
        total += packed.stat().st_size
        print(f"{name}: {packed.stat().st_size / 2**20:.1f} MiB ({packed.relative_to(REPO)})")
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    tracked = [REPO / p.decode() for p in listed.split(b"\0") if p]
    size_tracked = sum(p.stat().st_size for p in tracked if p.is_file())
    print(f"carried {total / 2**20:.1f} MiB + {len(tracked)} tracked files {size_tracked / 2**20:.1f} MiB = "
          f"{(total + size_tracked) / 2**20:.1f} MiB of the {BUDGET >> 20} MiB a device call takes")
    if total + size_tracked > BUDGET:
        sys.exit(f"over the budget by {(total + size_tracked - BUDGET) / 2**20:.1f} MiB: carry fewer datasets or "
                 "weights, or store large checkpoints more compactly")


if __name__ == "__main__":
    main()
