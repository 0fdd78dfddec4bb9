"""Checkpoint evaluation: numbers checked against a direct computation, the whole split covered
once, one process equal to two, and one-line errors for bad checkpoints.

One tiny run (conftest's ``tiny_run``: 10 steps, two checkpoints) serves every test; its validation
split is a separate file (data.val_source), so "score this file" and "score the recorded split"
must agree exactly.
"""

from __future__ import annotations

import json
import math
import re
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import VAL_TEXT
from helpers import REPO, accelerate_2proc, quiet_env, write_corpus
from tinylm.checkpoint.format import CheckpointError
from tinylm.checkpoint.load import load_for_inference
from tinylm.checkpoint.manifest import write_manifest
from tinylm.data.corpus import DataError
from tinylm.data.tokenizer import Tokenizer
from tinylm.eval.loss import evaluate_checkpoint

SCRIPT = REPO / "scripts" / "evaluate.py"


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny tensors, one thread


@pytest.fixture(scope="module")
def run(tiny_run: Path) -> Path:
    return tiny_run


@pytest.fixture(scope="module")
def ckpt(run: Path) -> Path:
    return run / "checkpoints" / "step-10"


def script_main(argv: list[str]) -> int:
    """scripts/evaluate.py's main, in this process: its real code and output, without the
    seconds of a new interpreter (test_script_end_to_end runs it as a process)."""
    return runpy.run_path(str(SCRIPT), run_name="evaluate_script")["main"](argv)


def direct_eval(ckpt: Path, text: str, block_size: int) -> tuple[float, float, int]:
    """(loss, bits/byte, tokens) computed by hand: the text as one document followed by
    end-of-text, cut into consecutive blocks, each scored on its own."""
    model, tok, _ = load_for_inference(ckpt)
    ids = torch.tensor(tok.encode(text) + [tok.eot_id])
    nats, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(ids) - 1, block_size):
            x = ids[start:start + block_size]
            y = ids[start + 1:start + block_size + 1]
            x = x[:len(y)]
            logits = model(x[None])[0]
            nats += F.cross_entropy(logits, y, reduction="none").double().sum().item()
            count += len(y)
    return nats / count, nats / (math.log(2) * len(text.encode("utf-8"))), count


def test_numbers_equal_a_direct_computation(ckpt: Path, tmp_path: Path):
    text = VAL_TEXT[:1500]
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    got = evaluate_checkpoint(ckpt, str(tmp_path / "t.txt"), block_size=20, batch_size=3)
    loss, bpb, tokens = direct_eval(ckpt, text, 20)
    assert got["tokens"] == tokens
    assert got["bytes"] == len(text.encode("utf-8")) > len(text)  # bytes, not characters
    assert got["loss"] == pytest.approx(loss, rel=1e-6)
    assert got["bits_per_byte"] == pytest.approx(bpb, rel=1e-6)
    assert got["perplexity"] == pytest.approx(math.exp(loss), rel=1e-6)
    assert got["block_size"] == 20 and got["step"] == 10


def test_recorded_split_is_covered_once_and_equals_the_same_file(ckpt: Path, run: Path):
    cfg = json.loads((ckpt / "config.json").read_text())
    recorded = evaluate_checkpoint(ckpt)
    assert recorded["tokens"] == cfg["val_tokens"] - 1
    assert recorded["bytes"] == cfg["val_bytes"] == len(VAL_TEXT.encode("utf-8"))
    as_file = evaluate_checkpoint(ckpt, str(run.parent / "val.txt"))
    for key in ("loss", "bits_per_byte", "tokens", "bytes"):
        assert as_file[key] == pytest.approx(recorded[key], rel=1e-12), key
    # and the trainer's own final eval of the same split
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    final = [r for r in records if r["kind"] == "eval" and r["step"] == 10][-1]
    assert recorded["loss"] == pytest.approx(final["val_loss"], rel=1e-6)


def test_text_shorter_than_a_block_is_one_short_block(ckpt: Path, tmp_path: Path):
    (tmp_path / "short.txt").write_text("A short text.", encoding="utf-8")
    got = evaluate_checkpoint(ckpt, str(tmp_path / "short.txt"))
    loss, _, tokens = direct_eval(ckpt, "A short text.", 32)
    assert got["tokens"] == tokens < 32 and got["loss"] == pytest.approx(loss, rel=1e-6)


@pytest.mark.slow
def test_two_processes_equal_one(ckpt: Path, tmp_path: Path):
    # batch 7: 2 ranks get uneven shares, so accelerate pads the last batch and must drop it
    proc = accelerate_2proc(REPO / "tests" / "dist" / "eval_2proc.py",
                            [str(ckpt), str(tmp_path / "out.json"), "--batch-size", "7"], tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    results = [json.loads(m) for m in re.findall(r"RESULT (\{[^\n]*\})", proc.stdout)]
    assert sorted(r["rank"] for r in results) == [0, 1], out[-3000:]
    assert all(r["world_size"] == 2 and r["num_processes"] == 2 for r in results), out[-3000:]
    single = evaluate_checkpoint(ckpt, batch_size=7)
    for r in results:
        assert r["tokens"] == single["tokens"]
        assert r["loss"] == pytest.approx(single["loss"], rel=1e-6)
        assert r["bits_per_byte"] == pytest.approx(single["bits_per_byte"], rel=1e-6)
    # the script under the same launch: one table, one JSON file, from the main process only
    assert proc.stdout.count("evaluated 1 checkpoint(s)") == 1
    assert "2 process(es)" in proc.stdout
    written = json.loads((tmp_path / "out.json").read_text())
    assert len(written) == 1 and written[0]["tokens"] == single["tokens"]


def test_script_end_to_end(run: Path, tmp_path: Path):
    """A run directory means all its checkpoints; a table and a JSON list come out."""
    out = tmp_path / "sub" / "results.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), str(run), "--json", str(out)],
                          capture_output=True, text=True, env=quiet_env(tmp_path), cwd=REPO,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert lines[1].split() == ["checkpoint", "step", "loss", "ppl", "bits/byte", "tokens"]
    assert [line.split()[1] for line in lines[2:]] == ["5", "10"]
    results = json.loads(out.read_text())
    assert [r["step"] for r in results] == [5, 10]
    assert results[1] == pytest.approx(evaluate_checkpoint(run / "checkpoints" / "step-10"))
    assert results[1]["loss"] < results[0]["loss"]  # it trained


def test_truncated_weights_are_one_line_exit_2(ckpt: Path, tmp_path: Path, capsys):
    bad = tmp_path / "step-10"
    shutil.copytree(ckpt, bad)
    weights = bad / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    assert script_main([str(bad)]) == 2  # the manifest catches it first
    out, err = capsys.readouterr()
    assert out == "" and re.fullmatch(r"error: .*model\.safetensors: \d+ bytes, the manifest says \d+ "
                                      r"\(truncated or replaced\)\n", err), err
    (bad / "manifest.json").unlink()  # a checkpoint of tinylm 0.1: safetensors' own check
    with pytest.warns(UserWarning, match="not verified"):
        assert script_main([str(bad)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and re.fullmatch(r"error: .*model\.safetensors: corrupt or truncated.*\n", err), err


def test_missing_checkpoint_and_bad_arguments_are_one_line_exit_2(ckpt: Path, tmp_path: Path, capsys):
    cases = [([str(tmp_path / "nope")], "not a checkpoint"),
             ([str(ckpt), "--block-size", "33"], "block_size=33: expected 1..32"),
             ([str(ckpt), "--data", str(tmp_path / "missing.txt")], "missing.txt"),
             ([str(ckpt), "--batch-size", "x"], "invalid int value"),
             # an output that can't be written is refused before the evaluation runs
             ([str(ckpt), "--json", str(tmp_path / "blocker" / "out.json")],
              f"--json={tmp_path / 'blocker'}: not a writable directory")]
    (tmp_path / "blocker").write_text("a file, not a directory")
    for argv, message in cases:
        try:
            code = script_main(argv)
        except SystemExit as e:  # argparse errors exit from inside
            code = e.code
        err = capsys.readouterr().err
        assert code == 2, argv
        assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err


def test_missing_file_inside_a_checkpoint(ckpt: Path, tmp_path: Path):
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        bad = tmp_path / name / "step-10"
        shutil.copytree(ckpt, bad)
        (bad / name).unlink()
        with pytest.raises(CheckpointError, match=re.escape(name)):
            evaluate_checkpoint(bad)


def test_tokenizer_larger_than_the_model_vocab_is_a_clear_error(ckpt: Path, tmp_path: Path):
    bad = tmp_path / "step-10"
    shutil.copytree(ckpt, bad)
    big = Tokenizer.train([write_corpus(tmp_path / "c.txt", 100_000).read_text()], 400)
    assert big.vocab_size > 320
    big.save(bad / "tokenizer.json")
    write_manifest(bad)  # as if written so: the vocab check, not the manifest, must catch it
    with pytest.raises(CheckpointError, match=r"vocab mismatch: tokenizer.json has \d+ tokens but "
                                              r"the model's vocab_size is 320"):
        evaluate_checkpoint(bad)


def test_changed_val_split_is_detected(ckpt: Path, tmp_path: Path):
    bad = tmp_path / "step-10"
    shutil.copytree(ckpt, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["val_tokens"] += 1
    (bad / "config.json").write_text(json.dumps(cfg))
    write_manifest(bad)
    with pytest.raises(DataError, match="the data changed since training"):
        evaluate_checkpoint(bad)
