"""TokenStream (a split over shard ranges, read as one array) and the checks a store gets on
load; a tinylm 0.2 prepared dir (one train.bin + val.bin + meta.json) still opens."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tinylm.data.batches import EvalBlocks, TrainBatches
from tinylm.data.corpus import DataError
from tinylm.data.prepare import open_prepared
from tinylm.data.stream import TokenStream, check_store


def test_slices_span_shards_and_ranges_skip_what_is_outside(tmp_path: Path) -> None:
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    np.arange(0, 100, dtype=np.uint16).tofile(a)
    np.arange(100, 200, dtype=np.uint16).tofile(b)
    s = TokenStream([(a, 10, 100), (b, 0, 50)], np.uint16)  # tokens 10..149
    assert len(s) == 140
    assert np.array_equal(s[:], np.arange(10, 150))
    assert np.array_equal(s[85:95], np.arange(95, 105))  # across the boundary
    assert np.array_equal(s[90:], np.arange(100, 150)) and len(s[139:500]) == 1
    assert len(s[50:50]) == 0
    with pytest.raises(TypeError):
        s[::2]


def old_dir(tmp_path: Path, train: int = 3000, val: int = 400) -> Path:
    """What tinylm 0.2's prepare wrote: flat files, meta.json, no manifest."""
    d = tmp_path / "corpus-v400-0123abcd"
    d.mkdir()
    np.arange(train, dtype=np.uint16).tofile(d / "train.bin")
    np.arange(val, dtype=np.uint16).tofile(d / "val.bin")
    (d / "meta.json").write_text(json.dumps({
        "format": 1, "dtype": "uint16", "vocab_size": 400, "eot_id": 0, "fingerprint": "f" * 16,
        "train_tokens": train, "val_tokens": val, "train_bytes": 4 * train, "val_bytes": 4 * val}))
    return d


def test_a_0_2_prepared_dir_opens_and_batches(tmp_path: Path) -> None:
    d = open_prepared(old_dir(tmp_path))
    assert len(d.split("train")) == 3000 and len(d.split("val")) == 400
    assert d.fingerprint == "f" * 16
    x, y = next(TrainBatches(d.split("train"), 16, 2))
    assert (y == x + 1).all()
    assert len(EvalBlocks(d.split("val"), 16)) == 25


def test_a_0_2_dir_with_a_short_file_is_one_line(tmp_path: Path) -> None:
    d = old_dir(tmp_path)
    with open(d / "val.bin", "r+b") as f:
        f.truncate(10)
    with pytest.raises(DataError, match=r"val.bin: 10 bytes, meta.json says 800; prepare again$"):
        open_prepared(d)


def test_a_missing_shard_and_no_manifest_are_one_line_each(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"no prepared data \(no manifest.json\)"):
        open_prepared(tmp_path)
    meta = {"dtype": "uint16", "shards": [{"shard": "train-00000.bin", "tokens": 5,
                                           "sha256": "0" * 64}]}
    with pytest.raises(DataError, match=r"train-00000.bin: shard missing"):
        check_store(tmp_path, meta)
