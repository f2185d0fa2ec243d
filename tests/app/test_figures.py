"""app/figures.py: image figures put boxes and maps where the data says, in the image's pixels."""

from __future__ import annotations

import numpy as np
import pytest
from studio_helpers import REPO  # noqa: F401  (puts the repository on sys.path)

from app import figures, views
from efpn import level_colour

DET = {"boxes": np.array([[1, 2, 9, 10], [20, 20, 40, 44]], np.float32), "scores": np.array([0.9, 0.4]),
       "labels": np.array([0, 2]), "levels": np.array([0, 1])}
NAMES = ["disc", "square", "cross"]


def test_detections_figure_colours_by_level_and_hovers_size() -> None:
    rows = views.detection_rows(DET, ["p2", "p3"], NAMES)
    fig = figures.detections_figure(np.zeros((50, 60, 3), np.uint8), rows, gt_boxes=np.array([[0, 0, 5, 5]]))
    (img,) = fig.layout.images  # the picture under the traces, over [0, w) x [0, h): pixel j covers [j, j+1)
    assert (img.x, img.y, img.sizex, img.sizey, img.xanchor, img.yanchor) == (0, 0, 60, 50, "left", "top")
    assert img.layer == "below" and img.sizing == "stretch" and all(t.type != "image" for t in fig.data)
    lines = [t for t in fig.data if t.type == "scatter" and t.mode == "lines"]
    assert {t.name for t in lines} == {"ground truth", "p2", "p3"}
    p3 = next(t for t in lines if t.name == "p3")
    assert p3.line.color == level_colour("p3") and list(p3.x[:5]) == [20, 40, 40, 20, 20]
    markers = [t for t in fig.data if t.type == "scatter" and t.mode == "markers" and t.customdata is not None]
    assert any("size 8.0 px" in s and "level p2" in s for t in markers for s in t.text)
    assert fig.layout.yaxis.range == (50, 0)


def test_large_images_are_sent_downscaled_in_original_coordinates() -> None:
    import base64
    import io

    from PIL import Image

    pic = figures.image_picture(np.zeros((100, 3000, 3), np.uint8), max_side=1000)
    sent = Image.open(io.BytesIO(base64.b64decode(pic["source"].split(",", 1)[1])))
    assert sent.size == (1000, 33) and (pic["sizex"], pic["sizey"]) == (3000, 100)


def test_image_pictures_are_encoded_once_per_content() -> None:
    """The PNG of a picture is kept by its pixels: the same pixels give the same URI without encoding again, other
    pixels (or another shape of the same bytes) their own, and the kept ones stay few."""
    rgb = np.random.default_rng(0).integers(0, 255, (40, 60, 3), dtype=np.uint8)
    uri = figures.image_picture(rgb)["source"]
    assert uri.startswith("data:image/png;base64,") and figures.image_picture(rgb.copy())["source"] == uri
    changed = rgb.copy()
    changed[0, 0, 0] ^= 1
    assert figures.image_picture(changed)["source"] != uri
    assert figures.image_picture(rgb.reshape(60, 40, 3))["source"] != uri
    for i in range(figures.PNG_CACHE_SIZE + 3):
        figures.image_picture(np.full((4, 4, 3), i, np.uint8))
    assert len(figures._png_cache) == figures.PNG_CACHE_SIZE


def test_overlay_cells_cover_their_pixels() -> None:
    fig = figures.heatmap_overlay_figure(np.zeros((32, 32, 3), np.uint8), np.ones((4, 4)), stride=8)
    hm = fig.data[0]
    assert hm.dx == 8 and hm.x0 == 4


def test_assignment_figure_marks_starved_gt_and_point_priors() -> None:
    gt = np.array([[0, 0, 10, 10], [20, 20, 30, 30]], np.float32)
    positives = {"p3": np.array([[2, 2, 12, 12], [5, 5, 5, 5]], np.float32), "p4": np.zeros((0, 4), np.float32)}
    fig = figures.assignment_figure(np.zeros((40, 40, 3), np.uint8), gt, ["GT 0", "GT 1"], [1], positives)
    names = [t.name for t in fig.data]
    assert "starved GT" in names and "GT with positives" in names and "p4 positives" not in names
    point = next(t for t in fig.data if t.name == "p3 positives" and t.mode == "markers")
    assert list(point.x) == [5] and point.marker.color == level_colour("p3")


def test_attribution_maps_are_sent_at_most_256_cells_wide() -> None:
    cells, cell_px = figures.attribution_grid((128, 512))
    assert cells == (64, 256) and cell_px == 2.0
    a = np.zeros((128, 512), np.float32)
    a[0, 0] = -3.0
    fig = figures.attribution_figure(np.zeros((128, 512, 3), np.uint8), a, np.array([[1, 2, 3, 4]]), "IG")
    hm = next(t for t in fig.data if t.type == "heatmap")
    assert np.asarray(hm.z).shape == (64, 256) and hm.dx == 2.0 and (hm.zmin, hm.zmax) == (-3.0, 3.0)


def test_zoom_window_frames_a_tiny_box_inside_the_picture() -> None:
    """A 4 px box gets a 64 px square view centred on it; near an edge the view shifts inside; it never exceeds the
    picture; the attribution figure opens on it (y down)."""
    assert figures.zoom_window([98, 98, 102, 102], (240, 320)) == (68.0, 68.0, 132.0, 132.0)
    assert figures.zoom_window([0, 0, 4, 4], (240, 320)) == (0.0, 0.0, 64.0, 64.0)
    assert figures.zoom_window([300, 200, 320, 240], (240, 320)) == (80.0, 0.0, 320.0, 240.0)  # 8 x 40 > 240
    assert figures.zoom_window([0, 0, 200, 100], (120, 320)) == (40.0, 0.0, 160.0, 120.0)  # at most the shorter side
    fig = figures.attribution_figure(np.zeros((240, 320, 3), np.uint8), np.ones((240, 320), np.float32),
                                     np.array([[98, 98, 102, 102]]), "IG", view=(68, 68, 132, 132))
    assert list(fig.layout.xaxis.range) == [68, 132] and list(fig.layout.yaxis.range) == [132, 68]


@pytest.mark.parametrize("channels", [None, 3, 4])
def test_image_pictures_are_lossless_in_rgb_order(channels: int | None) -> None:
    """The PNG sent to the browser decodes to exactly the pixels given, channels in RGB(A) order (a 1 px target
    and its colour survive the transfer)."""
    import base64
    import io

    from PIL import Image

    shape = (23, 31) if channels is None else (23, 31, channels)
    arr = np.random.default_rng(channels or 1).integers(0, 256, shape, dtype=np.uint8)
    uri = figures.png_data_uri(arr)
    back = np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))))
    assert back.shape == arr.shape and np.array_equal(back, arr)
