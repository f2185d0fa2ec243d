"""Process-wide decoding limits, set on import, before anything imports OpenCV (``efpn/__init__`` imports this
module first, so any ``import efpn...`` sets them; it imports nothing that loads cv2).

OpenCV reads ``OPENCV_IO_MAX_IMAGE_PIXELS`` once, when the library loads, and by default decodes up to 2^30 pixels
from a file's header: a few bytes declaring 20000 x 20000 px ask it for gigabytes. efpn gives it the limit past
which Pillow refuses a file as a decompression bomb, so both decoders refuse the same sizes. A value the user set
in the environment is kept.
"""

from __future__ import annotations

import os

#: The most pixels a file may declare: Pillow's decompression-bomb error threshold (2 x ``Image.MAX_IMAGE_PIXELS``).
DECODE_MAX_PIXELS = 178_956_970

os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(DECODE_MAX_PIXELS))
try:
    #: OpenCV's limit in force (the user's, when the environment set one before efpn was imported).
    OPENCV_MAX_PIXELS = int(os.environ["OPENCV_IO_MAX_IMAGE_PIXELS"])
except ValueError:
    OPENCV_MAX_PIXELS = DECODE_MAX_PIXELS
