"""safetensors headers checked against their files: a crafted one never maps or reads."""

import json
import struct

import pytest
import torch
from safetensors.torch import save_file

from tinylm.checkpoint import format as ckpt
from tinylm.common.safefile import SafetensorsHeaderError, check_header


def crafted(path, header: dict, payload: bytes = b"") -> None:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + payload)


def test_a_good_file_passes_and_its_header_comes_back(tmp_path):
    save_file({"w": torch.zeros(3, 4)}, str(tmp_path / "ok.safetensors"))
    header = check_header(tmp_path / "ok.safetensors")
    assert header["w"]["shape"] == [3, 4] and header["w"]["dtype"] == "F32"


@pytest.mark.parametrize("header, payload, message", [
    ({"w": {"dtype": "F32", "shape": [1 << 34], "data_offsets": [0, 1 << 36]}}, b"\0" * 16,
     "tensor 'w' claims bytes 0..68719476736 for 68719476736 bytes"),  # 64 GiB: an mmap traceback
    ({"w": {"dtype": "F32", "shape": [1 << 30], "data_offsets": [0, 1 << 32]}}, b"\0" * 16,
     "the file holds 16 .truncated or crafted."),  # 4 GiB: read whole before safetensors checks
    ({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}, b"\0" * 16,
     "claims bytes 0..8 for 16 bytes"),  # offsets that disagree with dtype x shape
    ({"w": {"dtype": "Q4", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 16,
     "no valid dtype, shape and offsets"),
])
def test_a_header_that_does_not_describe_the_file_is_one_line(tmp_path, header, payload, message):
    path = tmp_path / "bad.safetensors"
    crafted(path, header, payload)
    with pytest.raises(SafetensorsHeaderError, match=message):
        check_header(path)
    with pytest.raises(ckpt.CheckpointError, match=f"{path}: corrupt or truncated safetensors file"):
        ckpt.read_weights(path)


def test_a_header_length_past_the_end_or_no_json(tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
    with pytest.raises(SafetensorsHeaderError, match="header of 1099511627776 bytes claimed"):
        check_header(path)
    path.write_bytes(struct.pack("<Q", 4) + b"\x80\x04K.")  # a pickle where JSON belongs
    with pytest.raises(SafetensorsHeaderError, match="header is not JSON"):
        check_header(path)
    path.write_bytes(b"abc")
    with pytest.raises(SafetensorsHeaderError, match="too short for a safetensors file"):
        check_header(path)
