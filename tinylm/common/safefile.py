"""A safetensors file's header checked against the file before anything is read or mapped.

safetensors trusts its header: a crafted one that claims a 64 GiB tensor ends in an mmap
traceback, and one claiming 4 GiB is read whole before its size is checked (4.6 GB of RSS
for a file of a few bytes). :func:`check_header` reads only the header (8 bytes of length,
then that much JSON, capped) and proves every tensor's byte range lies inside the file and
matches its dtype and shape, so a damaged or hostile file is one line naming it.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

MAX_HEADER = 100 << 20  # safetensors' own cap on the JSON header: 100 MB
DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2,
               "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}


class SafetensorsHeaderError(ValueError):
    """A safetensors file whose header does not describe the file; the message names it."""


def check_header(path: str | Path) -> dict:
    """The header of safetensors file ``path`` (tensor name -> dtype, shape, offsets), every
    range checked against the file's size; SafetensorsHeaderError otherwise."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise SafetensorsHeaderError(f"{path}: {size} bytes: too short for a safetensors file")
        (n,) = struct.unpack("<Q", raw)
        if n > min(MAX_HEADER, size - 8):
            raise SafetensorsHeaderError(f"{path}: header of {n} bytes claimed, the file has "
                                         f"{size - 8} after its length (truncated or not safetensors)")
        try:
            header = json.loads(f.read(n).decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise SafetensorsHeaderError(f"{path}: the safetensors header is not JSON") from None
    if not isinstance(header, dict):
        raise SafetensorsHeaderError(f"{path}: the safetensors header is not a JSON object")
    data = size - 8 - n
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, end = info["data_offsets"]
            want = DTYPE_BYTES[info["dtype"]] * math.prod(info["shape"])
        except (KeyError, TypeError, ValueError):
            raise SafetensorsHeaderError(f"{path}: tensor {name!r}: no valid dtype, shape and "
                                         "offsets in the header") from None
        if not 0 <= begin <= end <= data or end - begin != want:
            raise SafetensorsHeaderError(
                f"{path}: tensor {name!r} claims bytes {begin}..{end} for {want} bytes of "
                f"{info['dtype']} {info['shape']}, the file holds {data} (truncated or crafted)")
    return header
