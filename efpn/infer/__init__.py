"""Running a detector on user images: preprocessing, prediction, sliced (tiled) inference, drawing, ONNX export."""

from efpn.infer.draw import detections_to_json, draw_detections
from efpn.infer.export import ExportReport, export_onnx
from efpn.infer.predict import predict_image
from efpn.infer.preprocess import (
    MAX_PIXELS,
    Prepared,
    boxes_to_network,
    boxes_to_original,
    network_hw,
    prepare,
    to_rgb_uint8,
)
from efpn.infer.slicing import (
    MAX_TILES,
    TooManyTilesError,
    num_tiles,
    sliced_predict,
    smallest_tile,
    suggested_tile,
    tile_windows,
)

__all__ = [
    "MAX_PIXELS",
    "MAX_TILES",
    "ExportReport",
    "Prepared",
    "TooManyTilesError",
    "boxes_to_network",
    "boxes_to_original",
    "detections_to_json",
    "draw_detections",
    "export_onnx",
    "network_hw",
    "num_tiles",
    "predict_image",
    "prepare",
    "sliced_predict",
    "smallest_tile",
    "suggested_tile",
    "tile_windows",
    "to_rgb_uint8",
]
