"""Regenerate the studio's sample images: ``python app/samples/make_samples.py`` (deterministic).

Four 256 x 256 synthetic tiny-object images (efpn.data.synthetic: discs, squares and crosses of 3-28 px on a
cluttered background) with their COCO ``annotations.json`` and a ``data.yaml``, so the Assignment page has
ground truth and a dataset-wide mode to run on.
"""

from __future__ import annotations

from pathlib import Path

from efpn.data import write_synthetic_dataset

HERE = Path(__file__).resolve().parent

if __name__ == "__main__":
    write_synthetic_dataset(
        HERE, num_images=4, image_size=256, seed=7, min_size=3, max_size=28, objects_per_image=(8, 20),
        val_fraction=0.25,
    )
    print(f"wrote samples to {HERE}")
