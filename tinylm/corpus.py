"""Text sources -> a ``datasets.Dataset`` of documents, with honest text handling.

One string names a source, resolved in this order:

1. ``"python-docs"``: the built-in corpus, English prose from the running Python itself —
   ``pydoc_data.topics`` (the language reference) and stdlib docstrings over 80 characters.
   About 2 MB, offline, on every Python install; built once and cached under the data dir.
2. An existing path: a text file; a folder (every non-hidden file under it, recursively,
   sorted); a folder written by ``Dataset.save_to_disk``; or ``.parquet``/``.jsonl``/``.json``
   files (loaded with their ``datasets`` builders, text column ``hf_text_column``).
3. A glob (contains ``*``, ``?`` or ``[``): the files it matches, sorted.
4. Anything else: a Hugging Face Hub dataset name, loaded with ``datasets.load_dataset``
   (``hf_config``, ``hf_split``, ``hf_text_column``).

Text handling, the same for every source: a UTF-8 BOM is stripped; CRLF and lone CR become LF
(Windows line endings would otherwise double the newline tokens and change bits per byte
between copies of the same text); line breaks are always kept; a file that is not UTF-8 is an
error naming the file and the byte offset. Plain text files are streamed in chunks of about
1 MB cut at paragraph or line breaks, so a corpus larger than memory is never held whole: the
rows land in an arrow file that ``datasets`` memory-maps.

Rows have two columns: ``text`` and ``doc_end`` (True on the last chunk of a document, where
the tokenizer's end-of-text token goes).
"""

from __future__ import annotations

import ast
import codecs
import glob as globlib
import os
import sys
import sysconfig
from pathlib import Path
from typing import Iterator

import datasets

CHUNK_BYTES = 1 << 20  # rows of ~1 MB: big enough for fast batched tokenizing, small for memory
_SKIP_DIRS = {"test", "tests", "idlelib", "site-packages", "dist-packages", "turtledemo", "__pycache__"}


class DataError(ValueError):
    """Bad input data: the message names the file, key or value and what was expected."""


def normalize(text: str) -> str:
    """Strip a BOM; CRLF and lone CR -> LF."""
    if text.startswith("\ufeff"):
        text = text[1:]
    return text.replace("\r\n", "\n").replace("\r", "\n") if "\r" in text else text


# -- python-docs ---------------------------------------------------------------------------

def python_docs_documents() -> Iterator[str]:
    """The built-in corpus, in a deterministic order: language-reference topics, then
    docstrings (module, class, function) of the stdlib's own .py files."""
    from pydoc_data.topics import topics

    for key in sorted(topics):
        yield topics[key]
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for root, dirs, files in os.walk(stdlib):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS and not d.startswith("."))
        for name in sorted(files):
            if not name.endswith(".py") or name.startswith("test_"):
                continue
            try:
                tree = ast.parse(Path(root, name).read_bytes())
            except (SyntaxError, ValueError, UnicodeDecodeError):
                continue
            for node in ast.walk(tree):
                if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                    doc = ast.get_docstring(node, clean=True)
                    if doc and len(doc) > 80:
                        yield doc + "\n"


def _python_docs_rows(python: str = "") -> Iterator[dict]:
    """``python`` (the version string) only keys the cache: each Python has its own docs."""
    for doc in python_docs_documents():
        yield {"text": normalize(doc), "doc_end": True}


# -- text files ----------------------------------------------------------------------------

def _file_rows(paths: list[str], stamp: list | None = None) -> Iterator[dict]:
    """Stream files as ~1 MB rows cut at paragraph/line breaks; validate UTF-8 as we go.

    ``stamp`` is unused here: it is in the arguments so that datasets' cache key changes
    when a file's size or mtime does.
    """
    for path in paths:
        decoder = codecs.getincrementaldecoder("utf-8")()
        consumed, pending, first = 0, "", True
        with open(path, "rb") as f:
            while True:
                raw = f.read(CHUNK_BYTES)
                buffered = len(decoder.getstate()[0])  # bytes of a char split by the last read
                try:
                    text = decoder.decode(raw, final=not raw)
                except UnicodeDecodeError as e:  # e.start indexes buffered + raw
                    raise DataError(
                        f"{path}: not valid UTF-8 at byte {consumed - buffered + e.start}"
                    ) from None
                consumed += len(raw)
                if first and text.startswith("\ufeff"):
                    text = text[1:]
                first = first and not text
                pending += text
                if not raw:
                    break
                cut = pending.rfind("\n\n", 0, len(pending) - 1)
                cut = cut + 2 if cut >= 0 else pending.rfind("\n") + 1
                if cut > 0:  # a cut after "\n" never splits a CRLF pair
                    yield {"text": normalize(pending[:cut]), "doc_end": False}
                    pending = pending[cut:]
        yield {"text": normalize(pending), "doc_end": True}


def _files_under(path: Path) -> list[str]:
    out = []
    for root, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        out += [os.path.join(root, f) for f in sorted(files) if not f.startswith(".")]
    return out


def _stamp(paths: list[str]) -> list[tuple[str, int, int]]:
    """(path, size, mtime) of each file: part of the cache key, so edited files re-prepare."""
    return [(os.path.abspath(p), os.path.getsize(p), os.stat(p).st_mtime_ns) for p in paths]


# -- resolution ----------------------------------------------------------------------------

def _from_table(ds: datasets.Dataset, column: str, where: str) -> datasets.Dataset:
    if column not in ds.column_names:
        raise DataError(f"{where}: no text column '{column}' (columns: {ds.column_names}); "
                        "set data.hf_text_column")
    ds = ds.select_columns([column])
    return ds.map(lambda b: {"text": [normalize(t or "") for t in b[column]],
                             "doc_end": [True] * len(b[column])},
                  batched=True, remove_columns=[column] if column != "text" else [],
                  desc="normalizing")


def describe(source: str) -> dict:
    """What the cache key needs to know about a source (file sizes and mtimes for paths)."""
    if source == "python-docs":
        return {"kind": "python-docs", "python": sys.version}
    path = Path(source)
    if path.is_file():
        return {"kind": "files", "files": _stamp([str(path)])}
    if path.is_dir():
        return {"kind": "dir", "files": _stamp(_files_under(path))}
    if any(c in source for c in "*?["):
        return {"kind": "glob", "files": _stamp(sorted(globlib.glob(source, recursive=True)))}
    return {"kind": "hub", "name": source}


def load_documents(source: str, *, hf_split: str = "train", hf_text_column: str = "text",
                   hf_config: str | None = None, cache_dir: str | Path | None = None) -> datasets.Dataset:
    """Resolve ``source`` (see the module docstring) to rows of ``{"text", "doc_end"}``."""
    path = Path(source)
    if source == "python-docs":
        return datasets.Dataset.from_generator(
            _python_docs_rows, gen_kwargs={"python": sys.version}, cache_dir=cache_dir)
    if path.is_dir() and ((path / "dataset_info.json").is_file() or (path / "state.json").is_file()):
        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            if hf_split not in ds:
                raise DataError(f"{path}: no split '{hf_split}' (splits: {list(ds)})")
            ds = ds[hf_split]
        return _from_table(ds, hf_text_column, str(path))
    if path.is_file() or path.is_dir() or any(c in source for c in "*?["):
        if path.is_file():
            files = [str(path)]
        elif path.is_dir():
            files = _files_under(path)
        else:
            files = sorted(f for f in globlib.glob(source, recursive=True) if os.path.isfile(f))
        if not files:
            raise DataError(f"{source}: no files found")
        builder = {".parquet": "parquet", ".jsonl": "json", ".json": "json"}.get(Path(files[0]).suffix)
        if builder and all(Path(f).suffix == Path(files[0]).suffix for f in files):
            ds = datasets.load_dataset(builder, data_files=files, split="train", cache_dir=cache_dir)
            return _from_table(ds, hf_text_column, source)
        return datasets.Dataset.from_generator(
            _file_rows, gen_kwargs={"paths": files, "stamp": _stamp(files)}, cache_dir=cache_dir)
    try:  # a Hub dataset: the real path, online for users (tests use local copies)
        ds = datasets.load_dataset(source, hf_config, split=hf_split, cache_dir=cache_dir)
    except Exception as e:
        raise DataError(f"data.source={source!r}: not a file, folder, glob or loadable dataset "
                        f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    return _from_table(ds, hf_text_column, source)
