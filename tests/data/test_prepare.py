"""prepare(): token files, byte accounting, caching, atomic writes; the data scripts.
(Batches cut from the token files: test_batches.py.)"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from conftest import corpus_text
from tinylm.data import corpus
from tinylm.data import prepare as datamod
from tinylm.data.batches import EvalBlocks, load_tokens
from tinylm.data.corpus import DataError
from tinylm.data.prepare import DataConfig, PreparedData, prepare, token_dtype
from tinylm.data.tokenizer import EOT, Tokenizer

ROOT = Path(__file__).resolve().parents[2]


def cfg_for(source: Path | str, tmp_path: Path, **kw) -> DataConfig:
    kw = {"dir": str(tmp_path / "data"), "vocab_size": 400, **kw}
    return DataConfig(source=str(source), **kw)


def stream(d: PreparedData) -> np.ndarray:
    return np.concatenate([d.split("train")[:], d.split("val")[:]])


# -- config --------------------------------------------------------------------------------

def test_data_config_is_a_plain_structured_config() -> None:
    cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(DataConfig),
                                              OmegaConf.from_dotlist(["vocab_size=1024"])))
    assert cfg == DataConfig(vocab_size=1024)
    assert (cfg.source, cfg.val_fraction, cfg.dir) == ("python-docs", 0.1, "data")
    assert cfg.val_source is None
    with pytest.raises(DataError, match="val_fraction=1.5"):
        DataConfig(val_fraction=1.5)
    with pytest.raises(ValueError, match="vocab_size=100"):  # what OmegaConf.to_object surfaces
        OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(DataConfig), {"vocab_size": 100}))


def test_token_dtype_is_the_smallest_that_fits() -> None:
    assert token_dtype(8192) == np.uint16 and token_dtype(65535) == np.uint16
    assert token_dtype(65536) == np.uint16  # ids 0..65535 still fit in 2 bytes
    assert token_dtype(65537) == np.uint32 and token_dtype(200_000) == np.uint32


# -- prepare: contents -----------------------------------------------------------------------

@pytest.mark.parametrize("chunk", [None, 500])  # one row, or many rows cut at line breaks
def test_prepare_text_file_counts_every_byte(text_file: Path, tmp_path: Path, monkeypatch,
                                             chunk: int | None) -> None:
    if chunk:
        monkeypatch.setattr(corpus, "CHUNK_BYTES", chunk)
    d = prepare(cfg_for(text_file, tmp_path), progress=False)
    raw, m, tok = text_file.read_bytes(), d.meta, d.tokenizer()
    # the keep-linebreaks regression: not one byte (line breaks!) may go missing
    assert m["train_bytes"] + m["val_bytes"] == len(raw)
    ids = stream(d)
    assert tok.decode_bytes(ids) == raw and ids[-1] == m["eot_id"] and m["eot_id"] == tok.eot_id
    assert list(ids).count(tok.eot_id) == 1  # one document, EOT-terminated
    if not chunk:
        assert list(ids) == tok.encode(raw.decode()) + [tok.eot_id]
    assert m["train_tokens"] == int(len(ids) * 0.9)  # the val split is the stream's tail
    assert m["val_tokens"] == len(ids) - m["train_tokens"]
    assert (m["vocab_size"], m["dtype"], d.dtype) == (400, "uint16", np.uint16)
    for key in ("train", "val"):
        assert len(d.split(key)) == m[f"{key}_tokens"]
        assert len(tok.decode_bytes(d.split(key)[:])) == m[f"{key}_bytes"]
    assert (d.dir / "train-00000.bin").stat().st_size == len(ids) * 2  # one shard; val = its tail
    assert m["splits"]["val"] == [["train-00000.bin", m["train_tokens"], len(ids)]]
    assert m["source"] == str(text_file) and "excluded" in m["bytes_note"]
    assert d.tokenizer_path.is_file() and json.loads((d.dir / "manifest.json").read_text()) == m
    assert not [p for p in d.dir.iterdir() if p.name.endswith(".tmp")]


def test_bytes_add_up_when_the_split_cuts_a_character(tmp_path: Path) -> None:
    path = tmp_path / "cjk.txt"
    path.write_text("".join(corpus_text(300, seed=i) + "語彙🙂ß" for i in range(40)))
    for frac in (0.1, 0.13, 0.37):
        d = prepare(cfg_for(path, tmp_path, val_fraction=frac), progress=False)
        tok, m = d.tokenizer(), d.meta
        assert m["train_bytes"] + m["val_bytes"] == path.stat().st_size
        assert len(tok.decode_bytes(d.split("val")[:])) == m["val_bytes"]


def test_crlf_and_bom_are_normalized_before_counting(tmp_path: Path) -> None:
    text = corpus_text(5000)
    path = tmp_path / "windows.txt"
    path.write_bytes(b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode())
    d = prepare(cfg_for(path, tmp_path), progress=False)
    assert d.meta["train_bytes"] + d.meta["val_bytes"] == len(text.encode())  # LF bytes, no BOM
    assert d.tokenizer().decode_bytes(stream(d)) == text.encode()


def test_documents_are_joined_by_eot_and_literal_eot_text_is_text(corpus_dir: Path,
                                                                   tmp_path: Path) -> None:
    (corpus_dir / "b.md").write_text(f"quoting {EOT} is fine\n")
    (corpus_dir / "empty.txt").write_text("")  # no document, so no EOT
    d = prepare(cfg_for(corpus_dir, tmp_path, val_fraction=0.2), progress=False)
    ids, tok = stream(d), d.tokenizer()
    ends = np.flatnonzero(ids == tok.eot_id)
    assert len(ends) == 3 and ends[-1] == len(ids) - 1
    pieces = np.split(ids, ends + 1)[:-1]
    expected = [(corpus_dir / n).read_text() for n in ("a.txt", "b.md", "sub/c.txt")]
    assert [tok.decode(p[:-1]) for p in pieces] == expected
    assert d.meta["train_documents"] + d.meta["val_documents"] == 3


def test_val_source_is_the_whole_val_split(corpus_dir: Path, text_file: Path,
                                           tmp_path: Path) -> None:
    d = prepare(cfg_for(corpus_dir, tmp_path, val_source=str(text_file)), progress=False)
    tok = d.tokenizer()
    assert tok.decode_bytes(d.split("val")[:]) == text_file.read_bytes()
    assert [s for s, _, _ in d.meta["splits"]["val"]] == ["val-00000.bin"]
    assert d.meta["val_bytes"] == text_file.stat().st_size
    assert d.meta["train_bytes"] == sum(p.stat().st_size for p in corpus_dir.rglob("[!.]*.*"))
    assert d.meta["val_fraction"] is None


def test_table_and_python_docs_sources_prepare(tmp_path: Path, python_docs_file: Path) -> None:
    import datasets

    rows = [corpus_text(800, seed=i) for i in range(12)]
    datasets.Dataset.from_dict({"body": rows}).to_parquet(str(tmp_path / "t.parquet"))
    d = prepare(cfg_for(tmp_path / "t.parquet", tmp_path, hf_text_column="body"), progress=False)
    assert d.meta["train_documents"] + d.meta["val_documents"] == 12
    assert d.meta["train_bytes"] + d.meta["val_bytes"] == sum(len(r.encode()) for r in rows)
    # python-docs end to end, reusing the session's build (copied where prepare looks for it)
    (tmp_path / "data").mkdir(exist_ok=True)
    (tmp_path / "data" / python_docs_file.name).write_bytes(python_docs_file.read_bytes())
    d = prepare(cfg_for("python-docs", tmp_path, vocab_size=512), progress=False)
    assert d.dir.name.startswith("python-docs-v512-")
    assert d.meta["train_documents"] > 1000 and d.meta["train_bytes"] > 1_000_000


def test_local_dataset_repo_prepares_and_edits_reprepare(tmp_path: Path) -> None:
    """A local clone of a Hub dataset repo (README with ``configs:``): prepare() keys it by
    its files, like any local folder."""
    import datasets

    repo = tmp_path / "repo"
    (repo / "data").mkdir(parents=True)
    rows = [corpus_text(1500, seed=i) for i in range(6)]
    datasets.Dataset.from_dict({"story": rows}).to_parquet(str(repo / "data" / "train.parquet"))
    (repo / "README.md").write_text("---\nconfigs:\n- config_name: default\n  data_files:\n"
                                    "  - split: train\n    path: data/train.parquet\n---\n")
    cfg = cfg_for(repo, tmp_path, hf_text_column="story")
    d = prepare(cfg, progress=False)
    assert d.meta["train_bytes"] + d.meta["val_bytes"] == sum(len(r.encode()) for r in rows)
    assert d.meta["train_documents"] + d.meta["val_documents"] == 6
    (repo / "README.md").write_text((repo / "README.md").read_text() + "edited\n")
    assert prepare(cfg, progress=False).dir != d.dir  # its files are part of the key


# -- prepare: errors -------------------------------------------------------------------------

def test_empty_corpus_and_too_small_split_are_clear_errors(tmp_path: Path) -> None:
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(DataError, match="corpus is empty"):
        prepare(cfg_for(tmp_path / "empty.txt", tmp_path), progress=False)
    (tmp_path / "tiny.txt").write_text("hi")
    with pytest.raises(DataError, match=r"too small to split: 3 tokens give 2 train and 1 val"):
        prepare(cfg_for(tmp_path / "tiny.txt", tmp_path), progress=False)


def test_val_fraction_zero_gives_an_empty_val_split(text_file: Path, tmp_path: Path) -> None:
    d = prepare(cfg_for(text_file, tmp_path, val_fraction=0.0), progress=False)
    assert d.meta["val_tokens"] == d.meta["val_bytes"] == 0 and len(d.split("val")) == 0
    assert d.meta["train_bytes"] == text_file.stat().st_size
    with pytest.raises(DataError, match="0 tokens is too small for one evaluation block"):
        EvalBlocks(d.split("val"), 8)


def test_non_utf8_source_is_a_data_error(tmp_path: Path) -> None:
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 ok".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1.txt: not valid UTF-8 at byte 3$"):
        prepare(cfg_for(tmp_path / "latin1.txt", tmp_path), progress=False)


# -- prepare: caching and atomicity ------------------------------------------------------------

def test_same_config_reuses_changed_config_or_source_reprepares(text_file: Path, tmp_path: Path,
                                                               monkeypatch) -> None:
    cfg = cfg_for(text_file, tmp_path)
    first = prepare(cfg, progress=False)
    with monkeypatch.context() as m:
        m.setattr(Tokenizer, "train", lambda *a, **k: pytest.fail("re-prepared"))
        again = prepare(replace(cfg, tokenize_batch=7), progress=False)  # not part of the key
        assert again.dir == first.dir and again.meta == first.meta
    changed = prepare(replace(cfg, val_fraction=0.2), progress=False)
    assert changed.dir != first.dir and changed.meta["val_tokens"] > first.meta["val_tokens"]
    text_file.write_text(text_file.read_text() + "more text\n")
    edited = prepare(cfg, progress=False)
    assert edited.dir != first.dir and edited.meta["train_bytes"] + edited.meta["val_bytes"] == \
        text_file.stat().st_size


def test_prepare_is_deterministic_and_reuse_rewrites_nothing(text_file: Path,
                                                             tmp_path: Path) -> None:
    files = ("tokenizer.json", "train-00000.bin", "train-00000.json", "manifest.json")
    a = prepare(cfg_for(text_file, tmp_path / "a"), progress=False)
    b = prepare(cfg_for(text_file, tmp_path / "b"), progress=False)
    assert a.dir.name == b.dir.name  # the name does not depend on where data.dir is
    for name in files[:3]:  # same corpus and config, other dir: the same bytes, same split
        assert (a.dir / name).read_bytes() == (b.dir / name).read_bytes(), name
    stamps = {name: (a.dir / name).stat().st_mtime_ns for name in files}
    again = prepare(cfg_for(text_file, tmp_path / "a"), progress=False)
    assert again.meta == a.meta
    assert {name: (a.dir / name).stat().st_mtime_ns for name in files} == stamps  # untouched


@pytest.mark.parametrize("damage", ["truncate", "flip a bit"])
def test_a_damaged_shard_is_refused_in_one_line(text_file: Path, tmp_path: Path,
                                               damage: str) -> None:
    cfg = cfg_for(text_file, tmp_path)
    d = prepare(cfg, progress=False)
    shard = d.dir / "train-00000.bin"
    with open(shard, "r+b") as f:
        if damage == "truncate":
            f.truncate(10)  # e.g. a copy cut short
        else:
            f.seek(100)
            byte = f.read(1)[0]
            f.seek(100)
            f.write(bytes([byte ^ 1]))
    with pytest.raises(DataError, match=r"train-00000.bin: .*(bytes, manifest.json says|sha256)") as e:
        prepare(cfg, progress=False)
    assert "\n" not in str(e.value)


def test_a_deleted_shard_is_redone_alone_and_gives_the_same_store(text_file: Path,
                                                                  tmp_path: Path) -> None:
    cfg = cfg_for(text_file, tmp_path, shard_bytes=600)
    d = prepare(cfg, progress=False)
    shards = sorted(d.dir.glob("train-*.bin"))
    assert len(shards) >= 3
    before = {p.name: p.read_bytes() for p in shards}
    stamps = {p.name: p.stat().st_mtime_ns for p in shards}
    shards[1].unlink()
    (d.dir / "manifest.json").unlink()
    again = prepare(cfg, progress=False)
    assert again.meta == d.meta
    assert {p.name: p.read_bytes() for p in shards} == before
    assert [p.name for p in shards if p.stat().st_mtime_ns != stamps[p.name]] == [shards[1].name]


def test_no_arrow_copy_or_id_cache_is_written(text_file: Path, tmp_path: Path,
                                              hf_cache: Path) -> None:
    """Text streams straight into shards: nothing under HF_HOME, and the store holds the
    shards, their markers, the plan, the tokenizer and the manifest only."""
    d = prepare(cfg_for(text_file, tmp_path), progress=False)
    assert not [p for p in hf_cache.rglob("*") if p.is_file()]
    assert sorted(p.name for p in d.dir.iterdir()) == [
        "manifest.json", "plan.json", "tokenizer.json", "train-00000.bin", "train-00000.json",
        "verified.json"]


def test_failed_write_leaves_no_partial_files(text_file: Path, tmp_path: Path, monkeypatch) -> None:
    real_replace, count = os.replace, [0]

    def fail_third(src, dst):  # 1st: tokenizer.json; 2nd: plan.json; 3rd: the shard
        count[0] += 1
        if count[0] == 3:
            raise OSError("disk full")
        real_replace(src, dst)

    cfg = cfg_for(text_file, tmp_path)
    monkeypatch.setattr(os, "replace", fail_third)
    with pytest.raises(OSError, match="disk full"):
        prepare(cfg, progress=False)
    out = datamod.prepared_dir(cfg)
    assert sorted(p.name for p in out.iterdir()) == ["plan.json", "tokenizer.json"]  # no tmp
    monkeypatch.setattr(os, "replace", real_replace)
    assert prepare(cfg, progress=False).meta["train_tokens"] > 0


class FakeAccelerator:
    """Records main_process_first() use; the real one is a barrier around the body."""

    def __init__(self, main: bool) -> None:
        self.is_main_process, self.events = main, []

    @contextlib.contextmanager
    def main_process_first(self):
        self.events.append("enter")
        yield
        self.events.append("exit")  # the main process's barrier is here: it must be reached


def test_under_accelerate_only_the_main_process_prepares(text_file: Path, tmp_path: Path,
                                                         monkeypatch) -> None:
    cfg = cfg_for(text_file, tmp_path)
    other = FakeAccelerator(main=False)
    with pytest.raises(DataError, match="no prepared data after the main process ran"):
        prepare(cfg, accelerator=other)  # nothing prepared: a non-main process never prepares
    assert other.events == ["enter", "exit"]
    main = FakeAccelerator(main=True)
    d = prepare(cfg, accelerator=main)
    assert main.events == ["enter", "exit"]
    monkeypatch.setattr(Tokenizer, "train", lambda *a, **k: pytest.fail("non-main prepared"))
    assert prepare(cfg, accelerator=FakeAccelerator(main=False)).meta == d.meta


def test_error_in_main_process_still_reaches_the_barrier(text_file: Path, tmp_path: Path,
                                                         monkeypatch) -> None:
    (tmp_path / "empty.txt").write_text("")
    main = FakeAccelerator(main=True)
    with pytest.raises(DataError, match="empty"):
        prepare(cfg_for(tmp_path / "empty.txt", tmp_path), accelerator=main)
    assert main.events == ["enter", "exit"]

    def crash(*a, **k):
        raise MemoryError("any exception, not only DataError")

    monkeypatch.setattr(Tokenizer, "train", crash)
    main = FakeAccelerator(main=True)
    with pytest.raises(MemoryError):
        prepare(cfg_for(text_file, tmp_path), accelerator=main)
    assert main.events == ["enter", "exit"]


WORKER = """
import json, sys
import torch.distributed as dist
from accelerate import Accelerator
from tinylm.data.prepare import DataConfig, prepare
from tinylm.data.tokenizer import Tokenizer

trained, real_train = [], Tokenizer.train
Tokenizer.train = classmethod(lambda cls, *a, **k: trained.append(1) or real_train(*a, **k))
acc = Accelerator(cpu=True)
d = prepare(DataConfig(source=sys.argv[1], dir=sys.argv[2], vocab_size=300), accelerator=acc,
            progress=False)
result = {"rank": acc.process_index, "world": acc.num_processes, "trained": len(trained),
          "dir": str(d.dir), "meta": d.meta}
with open(f"{sys.argv[2]}/rank{acc.process_index}.json", "w") as f:  # not stdout: ranks interleave
    json.dump(result, f)
acc.wait_for_everyone()
acc.end_training()
if dist.is_initialized():
    dist.destroy_process_group()
"""


@pytest.mark.slow
def test_two_real_processes_prepare_once_and_agree(text_file: Path, tmp_path: Path) -> None:
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node", "2", str(worker), str(text_file),
                           str(tmp_path / "d")],
                          capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    results = [json.loads(p.read_text()) for p in sorted((tmp_path / "d").glob("rank*.json"))]
    assert [(r["rank"], r["world"]) for r in results] == [(0, 2), (1, 2)], out[-3000:]
    assert [r["trained"] for r in results] == [1, 0]  # only the main process prepared
    assert results[0]["meta"] == results[1]["meta"] and results[0]["dir"] == results[1]["dir"]


# -- scripts -------------------------------------------------------------------------------------

def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_script(name: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The script as users run it: a fresh interpreter, exit status and output as they see them."""
    return subprocess.run([sys.executable, str(ROOT / "scripts" / f"{name}.py"), *args],
                          capture_output=True, text=True, cwd=cwd, timeout=120)


def test_prepare_script_defaults_and_run(text_file: Path, tmp_path: Path) -> None:
    from tinylm.cli import build_parser
    from tinylm.cli.data import data_config
    from tinylm.train.config import load_config

    def config(*argv):
        return data_config(build_parser().parse_args(["prepare", *argv]))

    assert config() == load_config().data  # no arguments: the default preset's data section
    assert config("--out-dir", "x").dir == "x"  # old spelling of --dir
    assert config("tiny", "data.vocab_size=300") == DataConfig(vocab_size=300)  # tiny's data
    out = tmp_path / "out"
    proc = run_script("prepare_data", "--source", str(text_file), "--vocab-size", "300",
                      "--val-fraction", "0.2", "--dir", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    d = prepare(cfg_for(text_file, tmp_path, vocab_size=300, val_fraction=0.2, dir=str(out)),
                progress=False)  # reuses what the script prepared
    m = d.meta
    assert str(d.dir) in proc.stdout and f"{m['train_tokens']:,} tokens" in proc.stdout
    assert f"{m['val_tokens']:,} tokens" in proc.stdout and "bytes/token" in proc.stdout


def test_train_tokenizer_script(text_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "tok.json"  # flags and dotted overrides are the same keys
    proc = run_script("train_tokenizer", f"data.source={text_file}", "--vocab-size", "300",
                      "--out", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    tok = Tokenizer.load(out)
    assert tok.vocab_size == 300 and str(out) in proc.stdout
    assert tok.decode(tok.encode(text_file.read_text())) == text_file.read_text()


def test_scripts_print_one_error_line_and_exit_2(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"ok \xff")
    expected = [f"error: {bad}: not valid UTF-8 at byte 3"]
    # a real process for one script (exit status, no traceback), in-process for the other
    proc = run_script("train_tokenizer", "--source", str(bad), "--data-dir", str(tmp_path / "d"),
                      cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == expected and "Traceback" not in proc.stderr
    script = load_script("prepare_data")
    assert script.main(["--source", str(bad), "--dir", str(tmp_path / "d")]) == 2
    assert capsys.readouterr().err.strip().splitlines() == expected


# -- data.tokenizer: an existing tokenizer instead of a trained one ------------------------------

def test_a_given_tokenizer_is_used_as_is_and_keys_the_prepared_dir(text_file: Path, tmp_path: Path) -> None:
    given = tmp_path / "given" / "tokenizer.json"
    given.parent.mkdir()
    Tokenizer.train([text_file.read_text()[::-1]], vocab_size=300).save(given)
    a = prepare(cfg_for(text_file, tmp_path, tokenizer=str(given.parent)), progress=False)  # a dir
    assert a.meta["vocab_size"] == 300 and a.tokenizer().content_hash() == Tokenizer.load(given).content_hash()
    b = prepare(cfg_for(text_file, tmp_path, tokenizer=str(given), vocab_size=999), progress=False)
    assert b.dir == a.dir  # the same tokenizer by another path, and vocab_size ignored: reused
    plain = prepare(cfg_for(text_file, tmp_path), progress=False)  # a trained BPE: another dir
    assert plain.meta["fingerprint"] != a.meta["fingerprint"]
    # bits per byte stay exact: the bytes of both splits add up to the text's UTF-8 bytes
    assert a.meta["train_bytes"] + a.meta["val_bytes"] == len(text_file.read_text().encode())


def test_a_tokenizer_without_exact_bytes_is_refused(text_file: Path, tmp_path: Path) -> None:
    from tokenizers import Tokenizer as HFTokenizer, models, pre_tokenizers, trainers

    wp = HFTokenizer(models.WordPiece(unk_token="[UNK]"))
    wp.pre_tokenizer = pre_tokenizers.Whitespace()
    wp.train_from_iterator([text_file.read_text()], trainers.WordPieceTrainer(
        vocab_size=300, special_tokens=["[UNK]", "<|endoftext|>"]))
    wp.save(str(tmp_path / "wp.json"))
    with pytest.raises(DataError, match=r"data.tokenizer=.*wp.json: not a byte-level BPE"):
        prepare(cfg_for(text_file, tmp_path, tokenizer=str(tmp_path / "wp.json")), progress=False)
    with pytest.raises(DataError, match="data.tokenizer=.*nowhere: no tokenizer.json there"):
        prepare(cfg_for(text_file, tmp_path, tokenizer=str(tmp_path / "nowhere")), progress=False)


PEAK_RSS = ("import resource, sys; from tinylm.cli import main; code = main(sys.argv[1:]); "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr); "
            "sys.exit(code)")


def _peak_rss_mb(args: list[str], tmp_path: Path) -> float:
    """Peak RSS of ``tinylm ARGS`` in one process (data.workers=1: no worker processes)."""
    proc = subprocess.run([sys.executable, "-c", PEAK_RSS, *args], capture_output=True, text=True,
                          cwd=tmp_path, env={**os.environ, "HF_HOME": str(tmp_path / "hf")},
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return int(proc.stderr.strip().splitlines()[-1]) / 1024


@pytest.mark.slow
def test_a_corpus_without_line_breaks_prepares_in_the_memory_of_one_with_them(tmp_path: Path) -> None:
    """The same 20 MB of text with and without line breaks: rows are cut anyway (at a line break,
    else after 16 reads), so the flat file costs about what the other does. tinylm 0.2
    (3cb8559) peaked at 1.46x for the flat one at 20 MB (1308 vs 895 MB) and 3.6x at 50 MB
    (2869 vs 793 MB), measured on the same machine."""
    text = corpus_text(20_000_000, seed=3)
    rss = {}
    for name, body in (("lines", text), ("flat", text.replace("\n", " "))):
        (tmp_path / f"{name}.txt").write_text(body, encoding="utf-8")
        rss[name] = _peak_rss_mb(["prepare", f"data.source={name}.txt", f"data.dir=data-{name}",
                                  "data.vocab_size=512", "data.workers=1"], tmp_path)
    assert rss["flat"] < 1.3 * rss["lines"], rss
