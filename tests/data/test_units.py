"""Units: a source cut into deterministic pieces of work, each read back as rows; the
tokenizer's bounded sample; streamed (Hub-style) sources and ``max_tokens``."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest

from conftest import corpus_text
from tinylm.data.corpus import DataError, normalize
from tinylm.data.plan import plan, sample_texts
from tinylm.data.prepare import DataConfig, prepare
from tinylm.data.units import SourceSpec, plan_units, unit_rows


def text_of(units, spec) -> str:
    return "".join(t for u in units for t, _ in unit_rows(u, spec))


@pytest.mark.parametrize("unit_bytes", [1000, 4096, 10**9])
def test_byte_ranges_cut_after_line_breaks_and_read_back_the_whole_file(tmp_path: Path,
                                                                         unit_bytes: int) -> None:
    path = tmp_path / "c.txt"
    path.write_bytes(b"\xef\xbb\xbf" + corpus_text(20_000).replace("\n", "\r\n").encode())
    spec = SourceSpec(str(path))
    units = plan_units(spec, unit_bytes)
    assert plan_units(spec, unit_bytes) == units  # deterministic
    assert (len(units) == 1) == (unit_bytes > 10**6) and len(units) >= 20_000 // unit_bytes
    raw = path.read_bytes()
    for u in units:
        (piece,) = u.pieces
        assert piece.start == 0 or raw[piece.start - 1:piece.start] == b"\n"
    assert [u.pieces[0].last for u in units] == [False] * (len(units) - 1) + [True]
    assert text_of(units, spec) == normalize(raw.decode("utf-8"))  # BOM, CRLF: as one file
    ends = [end for u in units for _, end in unit_rows(u, spec)]
    assert ends.count(True) == 1 and ends[-1]  # one document, ended once


def test_a_file_without_line_breaks_is_cut_at_character_starts(tmp_path: Path) -> None:
    path = tmp_path / "one-line.txt"
    path.write_text("語彙ß🙂" * 5000)  # 3-, 2- and 4-byte characters, no line break
    spec = SourceSpec(str(path))
    units = plan_units(spec, 7000)
    assert len(units) > 5
    assert text_of(units, spec) == path.read_text()


def test_small_files_are_grouped_and_big_ones_split(tmp_path: Path) -> None:
    root = tmp_path / "docs"
    root.mkdir()
    for i in range(10):
        (root / f"small{i}.txt").write_text(corpus_text(300, seed=i))
    (root / "zbig.txt").write_text(corpus_text(9000, seed=99))
    spec = SourceSpec(str(root))
    units = plan_units(spec, 2000)
    assert len(units[0].pieces) > 1  # several small files in one unit
    assert all(len(u.pieces) == 1 for u in units if "zbig" in u.pieces[0].path)
    docs = sum(end for u in units for _, end in unit_rows(u, spec))
    assert docs == 11


def test_jsonl_parquet_and_saved_datasets_split_into_units(tmp_path: Path) -> None:
    rows = [corpus_text(400, seed=i) for i in range(60)]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"text": r}) + "\n" for r in rows))
    ds = datasets.Dataset.from_dict({"text": rows})
    ds.to_parquet(str(tmp_path / "d.parquet"), batch_size=10)  # 6 row groups
    ds.save_to_disk(str(tmp_path / "saved"))
    for source in ("d.jsonl", "d.parquet", "saved"):
        spec = SourceSpec(str(tmp_path / source))
        units = plan_units(spec, 5000)
        assert len(units) > 1, source
        got = [(t, end) for u in units for t, end in unit_rows(u, spec)]
        assert got == [(r, True) for r in rows], source


def test_a_bad_json_line_names_the_file_and_byte(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "fine"}\n{"text": oops}\n')
    (unit,) = plan_units(SourceSpec(str(path)), 10**6)
    with pytest.raises(DataError, match=r"bad.jsonl: line at byte 17: not a JSON object"):
        list(unit_rows(unit, SourceSpec(str(path))))


def hub_repo(tmp_path: Path, files: int = 3) -> tuple[Path, list[str]]:
    """A local dataset repo (what a Hub clone looks like): parquet shards + README configs."""
    repo = tmp_path / "repo"
    (repo / "data").mkdir(parents=True)
    rows = []
    for k in range(files):
        part = [corpus_text(2000, seed=10 * k + i) for i in range(5)]
        datasets.Dataset.from_dict({"text": part}).to_parquet(
            str(repo / "data" / f"train-{k:05d}.parquet"))
        rows += part
    (repo / "README.md").write_text("---\nconfigs:\n- config_name: default\n  data_files:\n"
                                    "  - split: train\n    path: data/train-*.parquet\n---\n")
    return repo, rows


def test_hub_sources_stream_one_unit_per_shard(tmp_path: Path) -> None:
    """``hf://<name>`` and a local clone take the same streaming path (load_dataset(...,
    streaming=True)); each of the dataset's shards is a unit. No network: a local repo."""
    repo, rows = hub_repo(tmp_path)
    for source in (str(repo), f"hf://{repo}"):
        spec = SourceSpec(source)
        units = plan_units(spec, 10**9)
        assert [u.pieces[0].kind for u in units] == ["stream"] * 3
        assert [t for u in units for t, _ in unit_rows(u, spec)] == rows


def test_max_tokens_takes_the_first_tokens_of_a_stream(tmp_path: Path) -> None:
    repo, _ = hub_repo(tmp_path)
    base = dict(source=f"hf://{repo}", dir=str(tmp_path / "d"), vocab_size=300)
    whole = prepare(DataConfig(**base), progress=False)
    capped = prepare(DataConfig(**base, max_tokens=3000, workers=1), progress=False)
    m = capped.meta
    assert m["train_tokens"] + m["val_tokens"] == 3000
    assert m["max_tokens"] == 3000 and len(m["shards"]) < len(whole.meta["shards"])
    first = whole.split("train")[:3000]
    assert (capped.split("train")[:] == first[: m["train_tokens"]]).all()


def test_the_tokenizer_sample_is_bounded_and_spread_over_every_unit(tmp_path: Path) -> None:
    path = tmp_path / "big.txt"
    path.write_text(corpus_text(400_000))
    cfg = DataConfig(source=str(path), shard_bytes=50_000, tokenizer_sample=40_000,
                     tokenizer_doc_chars=3000)
    units = plan(cfg)["train"]
    assert len(units) >= 8
    chars = [0]
    texts = [t for b in sample_texts(cfg, units, chars) for t in b]
    assert 40_000 <= chars[0] <= 40_000 + len(units) * 3000  # each unit's share, one row over
    assert max(map(len, texts)) <= 3000
    text = path.read_text()
    starts = [text.index(t[:200]) for t in texts]
    assert max(starts) > 0.8 * len(text)  # the tail of the corpus is in the sample too
    small = DataConfig(source=str(path), tokenizer_sample=10**9)  # fits: all of it, uncut
    assert "".join(t for b in sample_texts(small, plan(small)["train"], [0]) for t in b) == text
