"""Sources and text handling: python-docs, files, folders, globs, tables, the Hub path."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import datasets
import pytest

from tinylm.data import corpus
from tinylm.data.corpus import DataError, build_python_docs, load_documents, python_docs_documents


def texts(ds: datasets.Dataset) -> list[str]:
    return list(ds["text"])


def documents(ds: datasets.Dataset) -> list[str]:
    """Rows joined back into documents (text-file rows are chunks of one)."""
    docs, cur = [], ""
    for row in ds:
        cur += row["text"]
        if row.get("doc_end", True):
            docs.append(cur)
            cur = ""
    return docs


# -- python-docs -----------------------------------------------------------------------------

def test_python_docs_builder_skips_tests_idlelib_site_packages_and_orders(tmp_path: Path) -> None:
    long = "x" * 81
    files = {
        "b/mod.py": f'"""Module {long}"""\ndef f():\n    """Func {long}"""\ndef g():\n    """short"""\n',
        "a.py": f'class C:\n    """Class {long}"""\n',
        "tests/t.py": f'"""tests {long}"""', "b/test_x.py": f'"""test_ {long}"""',
        "idlelib/i.py": f'"""idle {long}"""', "site-packages/s.py": f'"""site {long}"""',
        "bad.py": "def (:\n", "notes.txt": f'"""{long}"""',
    }
    for name, src in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(src)
    docs = list(python_docs_documents(tmp_path))
    assert docs == [f"Class {long}\n", f"Module {long}\n", f"Func {long}\n"]
    assert list(python_docs_documents(tmp_path)) == docs  # deterministic


def test_python_docs_is_built_once_and_is_english_prose(python_docs_file: Path) -> None:
    from pydoc_data.topics import topics

    size = python_docs_file.stat().st_size
    assert 1_000_000 < size < 5_000_000, size
    lines = python_docs_file.read_text(encoding="utf-8").splitlines()
    assert len(lines) > 1000
    assert json.loads(lines[0])["text"] == topics[sorted(topics)[0]].replace("\r\n", "\n")
    mtime = python_docs_file.stat().st_mtime_ns
    assert build_python_docs(python_docs_file.parent) == python_docs_file  # cached: not rebuilt
    assert python_docs_file.stat().st_mtime_ns == mtime


def test_python_docs_source_loads_one_document_per_row(python_docs_file: Path) -> None:
    ds = load_documents("python-docs", data_dir=python_docs_file.parent)
    first = ds[0]["text"]
    assert len(ds) == len(python_docs_file.read_text(encoding="utf-8").splitlines())
    assert first.endswith("\n") and "\n" in first[:-1]  # line breaks survive


# -- text files --------------------------------------------------------------------------------

def test_text_file_keeps_every_byte_and_line_break(text_file: Path) -> None:
    ds = load_documents(str(text_file))
    assert "".join(texts(ds)).encode() == text_file.read_bytes()
    assert ds[len(ds) - 1]["doc_end"]


def test_bom_is_stripped_and_crlf_becomes_lf(tmp_path: Path) -> None:
    path = tmp_path / "win.txt"
    path.write_bytes("\ufeffone\r\ntwo\rthree\n\r\n\ufeffkept".encode())
    assert texts(load_documents(str(path))) == ["one\ntwo\nthree\n\n\ufeffkept"]


def test_long_file_is_chunked_at_line_breaks_without_splitting_crlf(tmp_path: Path,
                                                                       monkeypatch) -> None:
    monkeypatch.setattr(corpus, "CHUNK_BYTES", 7)
    text = "".join(f"line {i} é\r\n" for i in range(200)) + "\ufefflast"
    path = tmp_path / "long.txt"
    path.write_bytes(text.encode())
    rows = list(corpus.text_file_rows([str(path)]))
    assert len(rows) > 10 and [r["doc_end"] for r in rows].count(True) == 1
    assert rows[-1]["doc_end"] and all(r["text"] for r in rows)
    assert "".join(r["text"] for r in rows) == text.replace("\r\n", "\n")


def test_line_without_breaks_is_still_cut(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(corpus, "CHUNK_BYTES", 4)
    path = tmp_path / "one-line.txt"
    path.write_text("z" * 1000)
    rows = list(corpus.text_file_rows([str(path)]))
    assert len(rows) > 1 and "".join(r["text"] for r in rows) == "z" * 1000


@pytest.mark.parametrize("chunk", [1 << 14, 5, 3])
@pytest.mark.parametrize("prefix, bad, where", [
    ("a" * 1234, b"\xff", 1234),  # a lone invalid byte
    ("é" * 700, b"\xc3(", 1400),  # a lead byte without its continuation
    ("日本" * 300, b"\xe6\x97", 1800),  # truncated at end of file
])
def test_non_utf8_is_one_error_line_with_the_byte_offset(tmp_path: Path, monkeypatch, chunk,
                                                          prefix, bad, where) -> None:
    monkeypatch.setattr(corpus, "CHUNK_BYTES", chunk)
    path = tmp_path / f"bad-{chunk}.txt"
    path.write_bytes(prefix.encode() + bad + (b"" if where == 1800 else b"tail"))
    with pytest.raises(DataError) as err:
        load_documents(str(path))
    assert str(err.value) == f"{path}: not valid UTF-8 at byte {where}"


def test_folder_is_recursive_sorted_and_skips_hidden(corpus_dir: Path) -> None:
    docs = documents(load_documents(str(corpus_dir)))
    expected = [(corpus_dir / n).read_text(encoding="utf-8") for n in ("a.txt", "b.md", "sub/c.txt")]
    assert docs == expected


def test_glob_selects_matching_files(corpus_dir: Path) -> None:
    docs = documents(load_documents(str(corpus_dir / "**" / "*.txt")))
    assert docs == [(corpus_dir / n).read_text(encoding="utf-8") for n in ("a.txt", "sub/c.txt")]


def test_edited_file_is_read_again(tmp_path: Path) -> None:
    path = tmp_path / "f.txt"
    path.write_text("first version")
    assert texts(load_documents(str(path))) == ["first version"]
    path.write_text("second, longer version")
    assert texts(load_documents(str(path))) == ["second, longer version"]


def test_empty_folder_and_missing_path_are_errors(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no files found"):
        load_documents(str(tmp_path / "empty"))
    with pytest.raises(DataError, match="no such file or folder"):
        load_documents(str(tmp_path / "nope.txt"))
    with pytest.raises(DataError, match="no such file or folder"):
        load_documents("typo/corpus.txt")  # looks like a path: not sent to the Hub


# -- tables and the Hub ------------------------------------------------------------------------

def test_save_to_disk_dataset_dict_split_and_column(tmp_path: Path) -> None:
    dd = datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"content": ["t1\r\n", "t2"], "n": [1, 2]}),
        "validation": datasets.Dataset.from_dict({"content": ["\ufeffv1\nv1", None], "n": [3, 4]}),
    })
    dd.save_to_disk(str(tmp_path / "saved"))
    before = sorted(p for p in (tmp_path / "saved").rglob("*"))
    ds = load_documents(str(tmp_path / "saved"), hf_split="validation", hf_text_column="content")
    assert ds.column_names == ["text"] and texts(ds) == ["\ufeffv1\nv1", None]  # raw rows;
    assert list(corpus.document_texts(ds)) == [["v1\nv1", ""]]  # normalized on the way out
    with pytest.raises(DataError, match=r"no split 'test' \(splits: \['train', 'validation'\]\)"):
        load_documents(str(tmp_path / "saved"), hf_split="test", hf_text_column="content")
    with pytest.raises(DataError, match=r"no text column 'text' \(columns: \['content', 'n'\]\)"):
        load_documents(str(tmp_path / "saved"))
    assert sorted(p for p in (tmp_path / "saved").rglob("*")) == before  # nothing written into it


def test_save_to_disk_single_dataset(tmp_path: Path) -> None:
    datasets.Dataset.from_dict({"text": ["a", "b"]}).save_to_disk(str(tmp_path / "one"))
    assert texts(load_documents(str(tmp_path / "one"))) == ["a", "b"]


def test_parquet_and_jsonl_files(tmp_path: Path) -> None:
    ds = datasets.Dataset.from_dict({"body": ["first doc\n", "second\r\ndoc"], "id": [1, 2]})
    ds.to_parquet(str(tmp_path / "part-0.parquet"))
    got = load_documents(str(tmp_path / "part-0.parquet"), hf_text_column="body")
    assert texts(got) == ["first doc\n", "second\r\ndoc"]
    ds.to_json(str(tmp_path / "rows.jsonl"))
    assert texts(load_documents(str(tmp_path / "*.jsonl"), hf_text_column="body")) == texts(got)


def test_dataset_repo_goes_through_load_dataset_with_config_and_split(tmp_path: Path) -> None:
    """A local clone of a Hub dataset repo takes the Hub's own path: datasets.load_dataset(name,
    config, split=...) resolves the README's configs, the split and the column, for real."""
    repo = tmp_path / "stories"
    (repo / "en").mkdir(parents=True)
    (repo / "fr").mkdir()
    datasets.Dataset.from_dict({"story": ["once upon a time\n", "the end"]}).to_parquet(
        str(repo / "en" / "validation.parquet"))
    datasets.Dataset.from_dict({"story": ["train text"]}).to_parquet(str(repo / "en" / "train.parquet"))
    datasets.Dataset.from_dict({"story": ["il était une fois"]}).to_parquet(
        str(repo / "fr" / "validation.parquet"))
    (repo / "README.md").write_text(
        "---\nconfigs:\n"
        "- config_name: en\n  data_files:\n  - split: train\n    path: en/train.parquet\n"
        "  - split: validation\n    path: en/validation.parquet\n"
        "- config_name: fr\n  data_files:\n  - split: validation\n    path: fr/validation.parquet\n"
        "---\n# stories\n")
    ds = load_documents(str(repo), hf_split="validation", hf_text_column="story", hf_config="en")
    assert texts(ds) == ["once upon a time\n", "the end"]
    fr = load_documents(str(repo), hf_split="validation", hf_text_column="story", hf_config="fr")
    assert texts(fr) == ["il était une fois"]
    with pytest.raises(DataError, match="loadable dataset"):
        load_documents(str(repo), hf_split="test", hf_text_column="story", hf_config="en")


def test_unknown_hub_name_offline_is_a_data_error() -> None:
    assert os.environ["HF_HUB_OFFLINE"] == "1"  # conftest: never the network
    with pytest.raises(DataError, match="not a file, folder, glob or loadable dataset"):
        load_documents("nobody-tinylm-test/no-such-dataset")


def test_describe_changes_when_a_file_changes(tmp_path: Path) -> None:
    path = tmp_path / "f.txt"
    path.write_text("one")
    before = corpus.describe(str(path))
    path.write_text("three")
    assert corpus.describe(str(path)) != before
    assert corpus.describe("python-docs")["kind"] == "python-docs"
    assert corpus.describe("someone/stories") == {"kind": "hub", "name": "someone/stories"}


def test_module_docstring_documents_the_resolution_order() -> None:
    doc = textwrap.dedent(corpus.__doc__)
    for phrase in ("python-docs", "save_to_disk", "glob", "Hub", "CRLF", "BOM", "EVERY non-hidden"):
        assert phrase in doc


def test_tests_run_offline_in_a_temporary_hf_cache_with_wandb_disabled() -> None:
    """conftest's autouse fixtures: no test reads or fills ~/.cache or reaches wandb."""
    import tempfile

    tmp = os.path.realpath(tempfile.gettempdir())
    for path in (os.environ["HF_HOME"], os.environ["HF_DATASETS_CACHE"],
                 str(datasets.config.HF_DATASETS_CACHE)):
        assert os.path.realpath(path).startswith(tmp + os.sep), path
    assert Path(datasets.config.HF_DATASETS_CACHE) == Path(os.environ["HF_DATASETS_CACHE"])
    assert os.environ["WANDB_MODE"] == "disabled"
    assert os.environ["HF_HUB_OFFLINE"] == os.environ["HF_DATASETS_OFFLINE"] == "1"
