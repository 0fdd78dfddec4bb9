"""Packed artifacts: what a round trip costs in bits per byte, what sharing saves in bytes,
and one line for a file that is not whole."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import quiet_env
from tinylm.checkpoint import format as ckpt
from tinylm.checkpoint.artifact import load_artifact, pack, read_artifact
from tinylm.checkpoint.format import CheckpointError
from tinylm.model.quant import dequantize_rows, quantize_rows
from tinylm.data.tokenizer import Tokenizer
from tinylm.eval.loss import evaluate_checkpoint
from tinylm.model.config import GPTConfig
from tinylm.model.gpt import GPT


@pytest.fixture(scope="module")
def step10(tiny_run: Path) -> Path:
    return tiny_run / "checkpoints" / "step-10"


def tinylm_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tinylm.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=300, cwd=cwd, env=quiet_env(cwd))


@pytest.mark.parametrize("bits", [8, 6])
def test_the_model_in_the_file_is_the_round_trip_and_scores_beside_its_size(tmp_path, step10, bits):
    out = tmp_path / f"m{bits}.tlm"
    info = pack(step10, out, bits=bits)
    assert info["bytes"] == out.stat().st_size and info["codec"] in info["codec_bytes"]
    assert info["bytes"] == min(info["codec_bytes"].values())  # auto keeps the smallest
    model, tok, cfg = load_artifact(out)
    original, _ = ckpt.load_model(step10)
    for name, w in original.state_dict().items():  # exactly quantize -> dequantize, fp16 norms
        expect = (dequantize_rows(*quantize_rows(w, bits)) if w.dim() == 2 else w.half().float())
        torch.testing.assert_close(model.state_dict()[name], expect, rtol=0, atol=0, msg=name)
    assert model.lm_head.weight is model.embed_tokens.weight
    assert tok.vocab_size == model.config.vocab_size == original.config.vocab_size
    packed, plain = evaluate_checkpoint(out), evaluate_checkpoint(step10)
    assert packed["artifact_bytes"] == out.stat().st_size and packed["tokens"] == plain["tokens"]
    assert abs(packed["bits_per_byte"] - plain["bits_per_byte"]) < (0.002 if bits == 8 else 0.02)
    assert packed["bits_per_byte"] != plain["bits_per_byte"]  # it is the file's model that ran


def test_the_tie_and_shared_blocks_are_stored_once(tmp_path, step10):
    """The same weights as 4 depths over 2 blocks, and unrolled: the looped file stores half
    the blocks, and the embedding once (no lm_head entry)."""
    tok = step10 / ckpt.TOKENIZER_FILE
    sizes = {}
    for name, kw in (("looped", dict(layer_map="cycle:2")), ("plain", {})):
        torch.manual_seed(0)
        cfg = GPTConfig(vocab_size=Tokenizer.load(tok).vocab_size, block_size=32, n_layer=4, n_head=2, n_embd=64, **kw)
        d = tmp_path / name
        d.mkdir()
        ckpt.write_checkpoint(d, GPT(cfg), {"model": cfg.to_dict()}, tok, extra={"step": 0})
        sizes[name] = pack(d, tmp_path / f"{name}.tlm")["bytes"]
        meta, _ = read_artifact(tmp_path / f"{name}.tlm")
        names = [e["name"] for e in meta["tensors"]]
        assert "lm_head.weight" not in names and names.count("embed_tokens.weight") == 1
        assert len({n.split(".")[1] for n in names if n.startswith("layers.")}) == (2 if kw else 4)
    assert sizes["looped"] < 0.8 * sizes["plain"]


def test_a_damaged_file_is_one_line_naming_it(tmp_path, step10):
    out = tmp_path / "m.tlm"
    pack(step10, out)
    data = out.read_bytes()
    cases = {"truncated": (data[:-100], "truncated or padded artifact"),
             "flipped": (data[:200] + bytes([data[200] ^ 1]) + data[201:], "payload's sha256 does not match"),
             "foreign": (b"PK\x03\x04" + data[4:], "not a tinylm artifact")}
    for name, (damaged, message) in cases.items():
        bad = tmp_path / f"{name}.tlm"
        bad.write_bytes(damaged)
        with pytest.raises(CheckpointError, match=message):
            (load_artifact if name != "foreign" else read_artifact)(bad)
    proc = tinylm_cli("evaluate", tmp_path / "flipped.tlm", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'flipped.tlm'}: corrupt artifact: the payload's sha256 does not match its header"]


def test_the_command_packs_evaluates_and_generates_and_refuses_bad_bits(tmp_path, step10):
    proc = tinylm_cli("pack", step10, tmp_path / "m.tlm", "--bits", "6", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith(f"packed {step10} -> {tmp_path / 'm.tlm'}: ") and "int6 blocks" in proc.stdout
    proc = tinylm_cli("evaluate", tmp_path / "m.tlm", cwd=tmp_path)
    assert proc.returncode == 0 and "bytes" in proc.stdout.splitlines()[1], proc.stderr[-2000:]
    assert f"{(tmp_path / 'm.tlm').stat().st_size:,}" in proc.stdout
    proc = tinylm_cli("generate", tmp_path / "m.tlm", "--prompt", "The", "--max-new-tokens", "8",
                      "--seed", "1", cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.startswith("The"), proc.stderr[-2000:]
    proc = tinylm_cli("pack", step10, tmp_path / "x.tlm", "--bits", "3", cwd=tmp_path)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "argument --bits: invalid choice: 3" in proc.stderr and not (tmp_path / "x.tlm").exists()
