"""Text sources -> a ``datasets.Dataset`` of documents, with honest text handling.

One string names a source. It is resolved in this order, first match wins:

1. ``"python-docs"``: the built-in corpus, English prose from the running Python itself:
   ``pydoc_data.topics`` (the language reference) and stdlib docstrings over 80 characters,
   one document each. About 2 MB, offline, on every Python install; built once into
   ``<data dir>/python-docs-<python version>.jsonl`` and reused from there.
2. An existing path:
   - a local clone of a Hub dataset repo (its README's YAML header declares ``configs:``):
     loaded exactly as the Hub name would be, ``load_dataset(path, hf_config, split=hf_split)``;
   - a folder written by ``Dataset.save_to_disk`` (it holds ``state.json`` or
     ``dataset_dict.json``): loaded with ``load_from_disk``, split ``hf_split`` of a DatasetDict;
   - a ``.parquet`` / ``.jsonl`` / ``.json`` file, or a folder holding only such files: loaded
     with that ``datasets`` builder; each row is a document, its text in ``hf_text_column``;
   - any other file, or a folder: read as UTF-8 text. A folder means EVERY non-hidden file
     under it, recursively, in sorted order (not just *.txt/*.md: a folder of .py or .rst
     files is a corpus too; a binary file fails loudly as "not valid UTF-8", never silently).
     Each file is one document.
3. A glob (contains ``*``, ``?`` or ``[``): the files it matches, sorted, treated as in 2.
4. Something that looks like a path (starts with ``/``, ``.``, ``~`` or ends in a file
   suffix such as ``.txt``) but does not exist: an error, not a Hub lookup of a typo.
5. Anything else: a Hugging Face Hub dataset name, ``datasets.load_dataset(source,
   hf_config, split=hf_split)``, text in ``hf_text_column``.

Text handling, the same for every source: a UTF-8 BOM at the start of a file or row is
stripped; CRLF and lone CR become LF (Windows line endings would otherwise add a token per line
and make bits per byte differ between two copies of the same text); line breaks are always
kept; a file that is not UTF-8 is one ``DataError`` naming the file and the offset of the first
bad byte. Text files are streamed in rows of about 16 KB cut after a line break, so a corpus
larger than memory is never held whole: rows land in an arrow file that ``datasets``
memory-maps. (16 KB: ``encode_batch`` runs rows in parallel and was fastest on rows of this
size, see docs/performance.md; and a map batch of 256 rows stays ~4 MB of text.)

Rows have two columns: ``text`` and ``doc_end`` (True on the last row of a document, where the
end-of-text token goes). Table sources keep their own columns; each row is one document.
"""

from __future__ import annotations

import ast
import codecs
import glob as globlib
import json
import os
import sys
import sysconfig
import warnings
from pathlib import Path
from typing import Iterator, Optional

import datasets
from tqdm.auto import tqdm

from tinylm.common.atomic import atomic_write

CHUNK_BYTES = 1 << 14  # bytes read per step, and the row size of text files (see above)
TABLE_SUFFIXES = {".parquet": "parquet", ".jsonl": "json", ".json": "json"}
PATH_LIKE_SUFFIXES = {".txt", ".md", ".rst", ".text", ".csv", ".arrow", *TABLE_SUFFIXES}
ROW_FEATURES = datasets.Features({"text": datasets.Value("string"),
                                 "doc_end": datasets.Value("bool")})
_SKIP_DIRS = {"test", "tests", "idlelib", "site-packages", "dist-packages", "turtledemo",
              "__pycache__"}


class DataError(ValueError):
    """Bad input data: the message names the file, key or value and what was expected."""


def normalize_newlines(text: str) -> str:
    """CRLF and lone CR -> LF."""
    return text.replace("\r\n", "\n").replace("\r", "\n") if "\r" in text else text


def normalize(text: str) -> str:
    """What every document goes through: strip a leading BOM, CRLF/CR -> LF."""
    return normalize_newlines(text[1:] if text.startswith("\ufeff") else text)


# -- python-docs ---------------------------------------------------------------------------

def python_docs_documents(stdlib: str | Path | None = None,
                          progress: bool = False) -> Iterator[str]:
    """The built-in corpus in a fixed order: language-reference topics (sorted by key), then
    docstrings over 80 characters (module, class, function; ``ast.walk`` order) of the stdlib's
    .py files (sorted walk; tests, idlelib, site-packages and the like skipped)."""
    from pydoc_data.topics import topics

    if stdlib is None:
        for key in sorted(topics):
            yield topics[key]
    root_dir = Path(stdlib or sysconfig.get_paths()["stdlib"])
    files = []
    for root, dirs, names in os.walk(root_dir):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS and not d.startswith("."))
        files += [Path(root, n) for n in sorted(names)
                  if n.endswith(".py") and not n.startswith("test_")]
    for path in tqdm(files, desc="python-docs", unit="file", disable=not progress):
        try:
            with warnings.catch_warnings():  # old escapes in stdlib sources warn when parsed
                warnings.simplefilter("ignore")
                tree = ast.parse(path.read_bytes())
        except (SyntaxError, ValueError, UnicodeDecodeError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node, clean=True)
                if doc and len(doc) > 80:
                    yield doc + "\n"


def build_python_docs(data_dir: str | Path, progress: bool = True) -> Path:
    """Build python-docs once into ``<data_dir>/python-docs-<version>.jsonl`` (one JSON object
    ``{"text": ...}`` per document, so document boundaries survive) and return its path."""
    v = sys.version_info
    path = Path(data_dir) / f"python-docs-{v.major}.{v.minor}.{v.micro}.jsonl"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = (json.dumps({"text": normalize(d)}, ensure_ascii=False) + "\n"
                 for d in python_docs_documents(progress=progress))
        atomic_write(path, "".join(lines))
    return path


# -- text files ----------------------------------------------------------------------------

def text_file_rows(paths: list[str], stamps: object = None, chunk_bytes: Optional[int] = None,
                   *, start: int = 0, end: Optional[int] = None,
                   last: bool = True) -> Iterator[dict]:
    """Stream files as rows of ~``chunk_bytes`` (default CHUNK_BYTES) cut after a line break,
    checking UTF-8 as we go.

    ``stamps`` is unused here; ``datasets`` hashes the generator's arguments into its cache
    key, so passing the files' sizes and mtimes (and the row size) makes a change a cache miss.
    ``start``/``end``/``last`` read one byte range of each file (a unit, see ``units.py``):
    ``start`` must follow a line break or begin a character, and only a range with ``last``
    ends its document.
    """
    chunk = chunk_bytes or CHUNK_BYTES
    for path in paths:
        decoder = codecs.getincrementaldecoder("utf-8")()
        offset, pending, at_start = start, "", start == 0  # offset: bytes read before this read
        left = None if end is None else end - start
        with open(path, "rb") as f:
            f.seek(start)
            while True:
                raw = f.read(chunk if left is None else min(chunk, left))
                if left is not None:
                    left -= len(raw)
                buffered = len(decoder.getstate()[0])  # a split character from the last read
                try:
                    text = decoder.decode(raw, final=not raw)
                except UnicodeDecodeError as e:  # e.start indexes (buffered bytes + raw)
                    raise DataError(f"{path}: not valid UTF-8 at byte "
                                    f"{offset - buffered + e.start}") from None
                offset += len(raw)
                if at_start and text:
                    text, at_start = (text[1:] if text.startswith("\ufeff") else text), False
                pending += text
                if not raw:
                    break
                if len(pending) >= chunk:
                    # cut after the last line break, keeping >= 1 char so the document's final
                    # row is never empty; no break in 16 chunks: cut anyway (memory stays bounded)
                    cut = pending.rfind("\n", 0, len(pending) - 1) + 1
                    if cut == 0 and len(pending) >= 16 * chunk:
                        cut = len(pending) - 1
                    if cut > 0 and pending[cut - 1] == "\r":  # never split a CRLF pair
                        cut -= 1
                    if cut > 0:
                        yield {"text": normalize_newlines(pending[:cut]), "doc_end": False}
                        pending = pending[cut:]
        # an empty file yields one empty row: no tokens, no end-of-text (and datasets cannot
        # load a generator dataset of zero rows, so an empty corpus stays a clear DataError)
        if last or pending:
            yield {"text": normalize_newlines(pending), "doc_end": last}


def _files_under(path: Path) -> list[str]:
    out = []
    for root, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        out += [os.path.join(root, f) for f in sorted(files) if not f.startswith(".")]
    return out


def _stamp(paths: list[str]) -> list[tuple[str, int, int]]:
    """(path, size, mtime) of each file: part of every cache key, so edited files re-prepare."""
    return [(os.path.abspath(p), os.path.getsize(p), os.stat(p).st_mtime_ns) for p in paths]


def _is_saved_dataset(path: Path) -> bool:
    return path.is_dir() and any((path / f).is_file() for f in ("state.json", "dataset_dict.json"))


def _is_glob(source: str) -> bool:
    return any(c in source for c in "*?[")


def _files_of(source: str) -> Optional[list[str]]:
    """The files a path or glob names; None when ``source`` is neither."""
    path = Path(source).expanduser()
    if path.is_file():
        return [str(path)]
    if path.is_dir():
        return _files_under(path)
    if _is_glob(source):
        return sorted(f for f in globlib.glob(os.path.expanduser(source), recursive=True)
                      if os.path.isfile(f))
    return None


def _looks_like_path(source: str) -> bool:
    return source.startswith(("/", ".", "~")) or Path(source).suffix.lower() in PATH_LIKE_SUFFIXES


# -- resolution ----------------------------------------------------------------------------

def describe(source: str) -> dict:
    """What a cache key needs to know about a source: file sizes and mtimes for local data,
    the Python version for python-docs, the name for a Hub dataset (whose revision we cannot
    see offline: delete the prepared dir to pick up a changed Hub dataset)."""
    if source == "python-docs":
        return {"kind": "python-docs", "python": sys.version}
    path = Path(source).expanduser()
    if _is_saved_dataset(path):
        return {"kind": "saved", "files": _stamp(_files_under(path))}
    files = _files_of(source)
    if files is not None:
        return {"kind": "files", "files": _stamp(files)}
    return {"kind": "hub", "name": source}


def document_texts(rows: datasets.Dataset, counter: Optional[list[int]] = None,
                   batch_size: int = 256) -> Iterator[list[str]]:
    """Batches of normalized document text (for tokenizer training); ``counter[0]`` counts
    characters, so callers can tell an empty corpus after one pass."""
    raw = "doc_end" not in rows.column_names  # text-file rows were normalized when read
    for b in rows.select_columns(["text"]).iter(batch_size=batch_size):
        texts = [normalize(t or "") for t in b["text"]] if raw else b["text"]
        if counter is not None:
            counter[0] += sum(map(len, texts))
        yield texts


def _text_column(ds: datasets.Dataset, column: str, where: str) -> datasets.Dataset:
    """Keep only the text column, named ``text`` (metadata only: no data is copied)."""
    if column not in ds.column_names:
        raise DataError(f"{where}: no text column '{column}' (columns: {ds.column_names}); "
                        "set data.hf_text_column")
    ds = ds.select_columns([column])
    return ds.rename_column(column, "text") if column != "text" else ds


def load_documents(source: str, *, hf_split: str = "train", hf_text_column: str = "text",
                   hf_config: Optional[str] = None, data_dir: str | Path = "data",
                   progress: bool = True) -> datasets.Dataset:
    """Resolve ``source`` (see the module docstring) to a Dataset with a ``text`` column (and
    ``doc_end`` for text files). Caches live under HF_HOME, never inside the source."""
    if source == "python-docs":
        path = build_python_docs(data_dir, progress=progress)
        return datasets.load_dataset("json", data_files=str(path), split="train")
    path = Path(source).expanduser()
    if _is_dataset_repo(path):  # a local clone of a Hub dataset repo: exactly the Hub's loader
        return _load_hub(str(path), hf_config, hf_split, hf_text_column)
    if _is_saved_dataset(path):
        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            if hf_split not in ds:
                raise DataError(f"{path}: no split '{hf_split}' (splits: {list(ds)}); "
                                "set data.hf_split")
            ds = ds[hf_split]
        return _text_column(ds, hf_text_column, str(path))
    files = _files_of(source)
    if files is not None:
        if not files:
            raise DataError(f"{source}: no files found")
        builder = TABLE_SUFFIXES.get(Path(files[0]).suffix.lower())
        if builder and all(TABLE_SUFFIXES.get(Path(f).suffix.lower()) == builder for f in files):
            ds = datasets.load_dataset(builder, data_files=files, split="train")
            return _text_column(ds, hf_text_column, source)
        try:
            return datasets.Dataset.from_generator(  # features given: an empty corpus is 0 rows
                text_file_rows, features=ROW_FEATURES,
                gen_kwargs={"paths": files, "stamps": _stamp(files), "chunk_bytes": CHUNK_BYTES})
        except datasets.exceptions.DatasetGenerationError as e:  # unwrap our own error
            if isinstance(e.__cause__, DataError):
                raise e.__cause__ from None
            raise
    if _looks_like_path(source):
        raise DataError(f"{source}: no such file or folder")
    return _load_hub(source, hf_config, hf_split, hf_text_column)


def _is_dataset_repo(path: Path) -> bool:
    """A dataset repository checked out locally: its README's YAML header declares configs."""
    readme = path / "README.md"
    if not (path.is_dir() and readme.is_file()):
        return False
    head = readme.read_text(errors="replace")[:20000]
    return head.startswith("---") and "\nconfigs:" in head.split("\n---", 1)[0]


def _load_hub(source: str, hf_config: Optional[str], hf_split: str, hf_text_column: str) -> datasets.Dataset:
    """``datasets.load_dataset(source, hf_config, split=hf_split)``: a Hub name (online) or a
    local clone of a dataset repo resolve configs, splits and files the same way."""
    try:  # a Hub dataset: the real path, online for users (tests use local data)
        ds = datasets.load_dataset(source, hf_config, split=hf_split)
    except Exception as e:
        first = str(e).splitlines()[0] if str(e) else ""
        raise DataError(f"data.source={source!r}: not a file, folder, glob or loadable dataset "
                        f"({type(e).__name__}: {first})") from None
    if isinstance(ds, datasets.DatasetDict):  # defensive: split=... returns a Dataset
        ds = ds[hf_split]
    return _text_column(ds, hf_text_column, source)
