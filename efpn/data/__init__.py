"""Datasets for tiny-object detection: format loaders, records, the torch dataset, transforms, synthetic data.

Every loader returns ``(records, class_names, SkipReport)`` with records in one form (:class:`ImageRecord`,
boxes ``xyxy`` px, contiguous labels ``0..K-1``); a data YAML (:func:`load_data_config`, :func:`load_split`)
picks the loader and its sources; :func:`parse_annotation_bytes` reads one image's annotation file from memory
(an upload). See ``docs/architecture.md`` (Data) for the boundaries.
"""

from efpn.config.data import FORMATS, DataConfig, load_data_config, parse_data_config
from efpn.config.names import read_names
from efpn.data.coco import load_coco, parse_coco, records_to_coco
from efpn.data.dataset import DetectionDataset, collate
from efpn.data.dota import DOTA_V1_CLASSES, load_dota
from efpn.data.images import CorruptImageError, ImageTooLargeError, image_size, read_image
from efpn.data.masks import boxes_from_mask, load_masks
from efpn.data.records import POLICIES, ImageRecord, Policy, SkipReport
from efpn.data.splits import category_ids, category_ids_for, load_split, split_records
from efpn.data.synthetic import SYNTH_CLASSES, make_synthetic_sample, write_synthetic_dataset
from efpn.data.transforms import (
    DetectionTransform,
    LetterboxInfo,
    RandomTileCrop,
    build_transforms,
    letterbox,
    unletterbox_boxes,
)
from efpn.data.uploads import (
    ANNOTATION_FORMATS,
    MAX_OBJECTS_PER_IMAGE,
    AnnotationError,
    ParsedAnnotation,
    map_class_names,
    parse_annotation_bytes,
)
from efpn.data.visdrone import VISDRONE_CLASSES, load_visdrone
from efpn.data.voc import load_voc, parse_voc
from efpn.data.yolo import load_yolo, parse_yolo

__all__ = [
    "boxes_from_mask",
    "load_masks",
    "MAX_OBJECTS_PER_IMAGE",
    "ANNOTATION_FORMATS",
    "DOTA_V1_CLASSES",
    "FORMATS",
    "POLICIES",
    "SYNTH_CLASSES",
    "VISDRONE_CLASSES",
    "AnnotationError",
    "CorruptImageError",
    "ImageTooLargeError",
    "DataConfig",
    "DetectionDataset",
    "DetectionTransform",
    "ImageRecord",
    "LetterboxInfo",
    "ParsedAnnotation",
    "Policy",
    "RandomTileCrop",
    "SkipReport",
    "build_transforms",
    "collate",
    "image_size",
    "letterbox",
    "load_coco",
    "load_data_config",
    "load_dota",
    "load_split",
    "map_class_names",
    "category_ids",
    "category_ids_for",
    "load_visdrone",
    "load_voc",
    "load_yolo",
    "make_synthetic_sample",
    "parse_annotation_bytes",
    "parse_coco",
    "parse_data_config",
    "parse_voc",
    "parse_yolo",
    "read_image",
    "read_names",
    "records_to_coco",
    "split_records",
    "unletterbox_boxes",
    "write_synthetic_dataset",
]
