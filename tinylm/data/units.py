"""A source split into deterministic units of work, and each unit read back as rows of text.

A unit is about ``unit_bytes`` of input: a run of whole small files, a byte range of a big text
or JSON-lines file (cut after a line break), a run of parquet row groups, a row range of a
``save_to_disk`` dataset, or one shard of a streamed Hub dataset. The plan depends only on the
source and ``unit_bytes``, never on how many workers run it, so 1, 2 or 100 workers (or a
cluster's tasks) produce the same tokens in the same order, and a rerun can redo exactly the
units that are missing. Reading a unit streams its rows; nothing is copied or cached first
(no Arrow copy of the corpus, no cache of ids).

Rows are ``(text, doc_end)``: ``doc_end`` marks the last row of a document (where the
end-of-text token goes). Text files are one document each, read in rows of ~16 KB cut after a
line break exactly as ``corpus.text_file_rows`` does; a byte range starts after a line break,
so a file's rows are the same whether it is one unit or many, except at a unit boundary.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, Optional

from tinylm.data.corpus import (TABLE_SUFFIXES, DataError, _files_of, _is_dataset_repo,
                                _is_saved_dataset, _looks_like_path, build_python_docs, normalize,
                                text_file_rows)

HUB_PREFIX = "hf://"
_SCAN = 1 << 20  # look this far past a nominal cut for a line break, then cut at a character


@dataclass(frozen=True)
class Piece:
    """Part of one input: bytes [start, end) of a file, row groups or rows [start, end) of a
    table, or shard ``start`` of a stream. ``last`` = this piece ends its file."""

    kind: str  # "text" | "jsonl" | "parquet" | "saved" | "stream"
    path: str
    start: int
    end: int
    last: bool = True


@dataclass(frozen=True)
class Unit:
    index: int
    pieces: tuple[Piece, ...]
    size: int  # input bytes (text, jsonl) or an estimate (tables); 0 when unknown (streams)

    def to_dict(self) -> dict:
        return {"index": self.index, "size": self.size, "pieces": [asdict(p) for p in self.pieces]}

    @classmethod
    def from_dict(cls, d: dict) -> "Unit":
        return cls(d["index"], tuple(Piece(**p) for p in d["pieces"]), d["size"])


@dataclass(frozen=True)
class SourceSpec:
    """How to read a source: what ``data.hf_*`` say, and where python-docs is built."""

    source: str
    hf_split: str = "train"
    hf_text_column: str = "text"
    hf_config: Optional[str] = None
    data_dir: str = "data"


# -- planning ------------------------------------------------------------------------------

def _cut_after_newline(path: str, offset: int, size: int) -> int:
    """The first offset >= ``offset`` just after a line break (or, with none in the next
    MiB, at a UTF-8 character start), so a range never splits a line or a character."""
    if offset >= size:
        return size
    with open(path, "rb") as f:
        f.seek(offset)
        window = f.read(_SCAN)
    i = window.find(b"\n")
    if i >= 0:
        return offset + i + 1
    j = next((k for k, b in enumerate(window) if b & 0xC0 != 0x80), len(window))
    return offset + j


def _byte_pieces(path: str, kind: str, unit_bytes: int) -> list[Piece]:
    size = os.path.getsize(path)
    cuts, at = [0], 0
    while at + unit_bytes < size:
        at = _cut_after_newline(path, at + unit_bytes, size)
        if at >= size:
            break
        cuts.append(at)
    cuts.append(size)
    return [Piece(kind, path, a, b, last=(b == size)) for a, b in zip(cuts, cuts[1:])]


def _parquet_pieces(path: str, unit_bytes: int) -> list[tuple[Piece, int]]:
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(path).metadata
    out, start, acc = [], 0, 0
    for g in range(meta.num_row_groups):
        acc += meta.row_group(g).total_byte_size
        if acc >= unit_bytes or g == meta.num_row_groups - 1:
            out.append((Piece("parquet", path, start, g + 1), acc))
            start, acc = g + 1, 0
    return out or [(Piece("parquet", path, 0, 0), 0)]


def _group(sized: list[tuple[Piece, int]], unit_bytes: int) -> list[Unit]:
    """Consecutive pieces into units of about ``unit_bytes`` (a big piece is a unit alone)."""
    units, run, acc = [], [], 0
    for piece, size in sized:
        if run and acc + size > unit_bytes:
            units.append(Unit(len(units), tuple(run), acc))
            run, acc = [], 0
        run.append(piece)
        acc += size
    if run:
        units.append(Unit(len(units), tuple(run), acc))
    return units


def _stream(spec: SourceSpec):
    import datasets

    name = spec.source[len(HUB_PREFIX):] if spec.source.startswith(HUB_PREFIX) else spec.source
    try:  # a Hub dataset (online for users), or a local clone of one (tests): the same loader
        ds = datasets.load_dataset(name, spec.hf_config, split=spec.hf_split, streaming=True)
    except Exception as e:
        first = str(e).splitlines()[0] if str(e) else ""
        raise DataError(f"data.source={spec.source!r}: not a file, folder, glob or loadable "
                        f"dataset ({type(e).__name__}: {first})") from None
    return ds


def is_stream(spec: SourceSpec) -> bool:
    """Hub names (``hf://owner/name`` or a bare ``owner/name``) and local dataset repos stream."""
    src = spec.source
    if src.startswith(HUB_PREFIX) or _is_dataset_repo(Path(src).expanduser()):
        return True
    if src == "python-docs" or _files_of(src) is not None or _is_saved_dataset(Path(src)):
        return False
    if _looks_like_path(src):
        raise DataError(f"{src}: no such file or folder")
    return True


def plan_units(spec: SourceSpec, unit_bytes: int) -> list[Unit]:
    """The source's units, in stream order. An empty source is an error here."""
    src = spec.source
    if is_stream(spec):
        n = _stream(spec).num_shards
        return [Unit(i, (Piece("stream", src, i, n),), 0) for i in range(n)]
    if _is_saved_dataset(Path(src).expanduser()):
        ds = _load_saved(spec)
        per_row = max(1, ds.data.nbytes // max(len(ds), 1))
        rows = max(1, unit_bytes // per_row)
        sized = [(Piece("saved", src, a, min(a + rows, len(ds))), min(rows, len(ds) - a) * per_row)
                 for a in range(0, len(ds), rows)]
        return _group(sized, unit_bytes) if sized else _empty(src)
    files = [str(build_python_docs(spec.data_dir, progress=False))] if src == "python-docs" \
        else _files_of(src)
    if not files:
        raise DataError(f"{src}: no files found")
    kinds = {TABLE_SUFFIXES.get(Path(f).suffix.lower()) for f in files}
    kind = kinds.pop() if len(kinds) == 1 and None not in kinds else "text"
    sized: list[tuple[Piece, int]] = []
    for f in files:
        if kind == "parquet":
            sized += _parquet_pieces(f, unit_bytes)
        else:
            sized += [(p, p.end - p.start) for p in _byte_pieces(f, "jsonl" if kind == "json"
                                                                  else "text", unit_bytes)]
    return _group(sized, unit_bytes)


def _empty(src: str) -> list[Unit]:
    raise DataError(f"data.source={src!r}: the corpus is empty (0 rows)")


# -- reading -------------------------------------------------------------------------------

def _load_saved(spec: SourceSpec):
    import datasets

    ds = datasets.load_from_disk(str(Path(spec.source).expanduser()))
    if isinstance(ds, datasets.DatasetDict):
        if spec.hf_split not in ds:
            raise DataError(f"{spec.source}: no split '{spec.hf_split}' (splits: {list(ds)}); "
                            "set data.hf_split")
        ds = ds[spec.hf_split]
    if spec.hf_text_column not in ds.column_names:
        raise DataError(f"{spec.source}: no text column '{spec.hf_text_column}' (columns: "
                        f"{ds.column_names}); set data.hf_text_column")
    return ds


def _jsonl_rows(piece: Piece, column: str) -> Iterator[tuple[str, bool]]:
    with open(piece.path, "rb") as f:
        f.seek(piece.start)
        at = piece.start
        for line in iter(f.readline, b""):
            if at >= piece.end:
                break
            where = f"{piece.path}: line at byte {at}"
            at += len(line)
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise DataError(f"{where}: not a JSON object ({type(e).__name__})") from None
            if not isinstance(row, dict) or column not in row:
                raise DataError(f"{where}: no text column '{column}'; set data.hf_text_column")
            yield normalize(row[column] or ""), True


def _table_rows(texts, where: str) -> Iterator[tuple[str, bool]]:
    for t in texts:
        if t is not None and not isinstance(t, str):
            raise DataError(f"{where}: text column holds {type(t).__name__}, expected strings")
        yield normalize(t or ""), True


def _piece_rows(piece: Piece, spec: SourceSpec) -> Iterator[tuple[str, bool]]:
    col = spec.hf_text_column
    if piece.kind == "text":
        for row in text_file_rows([piece.path], start=piece.start, end=piece.end,
                                  last=piece.last):
            yield row["text"], row["doc_end"]
    elif piece.kind == "jsonl":
        yield from _jsonl_rows(piece, col)
    elif piece.kind == "parquet":
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(piece.path)
        if col not in pf.schema_arrow.names:
            raise DataError(f"{piece.path}: no text column '{col}' (columns: "
                            f"{pf.schema_arrow.names}); set data.hf_text_column")
        for g in range(piece.start, piece.end):
            texts = pf.read_row_group(g, columns=[col]).column(col).to_pylist()
            yield from _table_rows(texts, f"{piece.path}: row group {g}")
    elif piece.kind == "saved":
        ds = _load_saved(spec).select_columns([col])
        for b in ds.select(range(piece.start, piece.end)).iter(batch_size=1024):
            yield from _table_rows(b[col], f"{piece.path}: rows {piece.start}-{piece.end}")
    else:  # "stream": shard ``start`` of ``end``
        ds = _stream(spec).shard(num_shards=piece.end, index=piece.start, contiguous=True)
        for row in ds:
            if col not in row:
                raise DataError(f"{spec.source}: no text column '{col}' (columns: "
                                f"{list(row)}); set data.hf_text_column")
            yield from _table_rows([row[col]], f"{spec.source}: shard {piece.start}")


def unit_rows(unit: Unit, spec: SourceSpec) -> Iterator[tuple[str, bool]]:
    """The unit's rows in order: ``(normalized text, ends a document)``."""
    for piece in unit.pieces:
        yield from _piece_rows(piece, spec)
