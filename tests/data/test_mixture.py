"""Data mixtures (tinylm/data/mixture.py): rows drawn by weight from sources with their own
stores, deterministic, exactly resumable, the same global rows on any process count; and a
short in-process training run that logs tokens and bits per byte per source."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate.state import AcceleratorState

from conftest import corpus_text
from tinylm.data.corpus import DataError
from tinylm.data.mixture import MixtureBatches, prepare_mixture
from tinylm.data.prepare import DataConfig, MixtureSource, prepare
from tinylm.data.tokenizer import Tokenizer
from tinylm.eval.loss import evaluate_checkpoint
from tinylm.train.config import load_config
from tinylm.train.metrics import read_metrics
from tinylm.train.trainer import train

WEIGHTS = {"web": 0.7, "code": 0.2, "books": 0.1}
SPAN = 10_000  # source i's tokens are i*SPAN + position: a row shows its source and place


def sources(n: int = 6000, names=tuple(WEIGHTS)) -> list[tuple[str, float, np.ndarray]]:
    return [(name, WEIGHTS.get(name, 1.0), (i * SPAN + np.arange(n)).astype(np.uint16))
            for i, name in enumerate(names)]


def ranks(W: int, B: int = 4, T: int = 16, seed: int = 3) -> list[MixtureBatches]:
    """The W processes of one run."""
    return [MixtureBatches(sources(), T, B, rank=r, world_size=W, seed=seed) for r in range(W)]


def global_rows(batches: list[MixtureBatches], steps: int) -> list[torch.Tensor]:
    """Each step's rows of all processes, rank 0's first."""
    return [torch.cat([next(b)[0] for b in batches]) for _ in range(steps)]


def test_proportions_hold_over_1000_batches_and_rows_come_from_their_source() -> None:
    T = 16
    procs = ranks(W=2, T=T)
    counts = np.zeros(3)
    for _ in range(1000):
        for b in procs:
            x, y = next(b)
            src = x // SPAN
            assert bool((src == src[:, :1]).all()) and bool((y // SPAN == src).all())
            assert torch.equal(y, x + 1)  # one contiguous window of its source's tokens
            counts += np.bincount(src[:, 0].numpy(), minlength=3)
    shares = counts / counts.sum()
    assert np.abs(shares - np.array(list(WEIGHTS.values()))).max() < 0.02, shares
    seen = procs[0].tokens_seen()  # all processes together, the same on each
    assert seen == procs[1].tokens_seen()
    assert [seen[n] for n in WEIGHTS] == (counts * T).astype(int).tolist()


def test_same_seed_same_batches_other_seed_other_batches() -> None:
    a, b, c = ranks(1)[0], ranks(1)[0], ranks(1, seed=4)[0]
    first = [next(a)[0] for _ in range(20)]
    assert all(torch.equal(x, next(b)[0]) for x in first)
    assert not all(torch.equal(x, next(c)[0]) for x in first)


def test_each_source_sees_every_block_once_per_epoch() -> None:
    T, n = 8, 200  # 24 blocks per source: each one is many epochs deep after 200 draws
    b = MixtureBatches([(name, 1.0, (i * SPAN + np.arange(n)).astype(np.uint16))
                        for i, name in enumerate("ab")], T, 2, seed=1)
    starts: dict[int, list[int]] = {0: [], 1: []}
    for _ in range(200):
        for row in next(b)[0]:
            starts[int(row[0]) // SPAN].append(int(row[0]) % SPAN)
    for s, got in starts.items():
        blocks = b.blocks[s]
        for e in range(len(got) // blocks):
            epoch = got[e * blocks:(e + 1) * blocks]
            assert len(set(epoch)) == blocks  # no block twice within an epoch
            assert len({v % T for v in epoch}) == 1  # one offset per epoch


def test_resume_is_bitwise_mid_run_through_json() -> None:
    a = ranks(2)
    global_rows(a, 7)
    state = json.loads(json.dumps(a[0].state_dict()))  # as trainer_state.json keeps it
    assert state == a[1].state_dict() and state["step"] == 7
    b = ranks(2, seed=99)  # the saved seed wins, as for TrainBatches
    for x in b:
        x.load_state_dict(state)
    for want, got in zip(global_rows(a, 5), global_rows(b, 5)):
        assert torch.equal(want, got)
    assert a[0].tokens_seen() == b[0].tokens_seen()


def test_one_or_two_processes_read_the_same_global_rows() -> None:
    one, two = ranks(1, B=8), ranks(2, B=4)
    for want, got in zip(global_rows(one, 30), global_rows(two, 30)):
        assert torch.equal(want, got)
    # a 1-process position resumed on 2 processes (same rows per draw) continues the same rows
    state = one[0].state_dict()
    two_more = ranks(2, B=4)
    for b in two_more:
        b.load_state_dict(state)
    for want, got in zip(global_rows(one, 5), global_rows(two_more, 5)):
        assert torch.equal(want, got)
    # grad_accum traded for processes: 2 draws of 8 rows read what 1 draw of 16 does
    half, whole = ranks(1, B=8), ranks(2, B=8)
    for _ in range(5):
        assert torch.equal(torch.cat([next(half[0])[0], next(half[0])[0]]),
                           torch.cat([next(b)[0] for b in whole]))


def test_refusals_are_one_line() -> None:
    a = ranks(2)[0]
    for _ in range(3):
        next(a)
    state = a.state_dict()  # 3 draws of 8 rows: 24 rows

    def refused(b: MixtureBatches, st: dict, match: str, **kw) -> None:
        with pytest.raises(DataError, match=match) as e:
            b.load_state_dict(st, **kw)
        assert "\n" not in str(e.value)

    refused(ranks(2, T=8)[0], state, "block_size")
    other = sources()
    other[1] = ("code", 0.3, other[1][2])
    refused(MixtureBatches(other, 16, 4, 0, 2), state, "mixture=")
    renamed = sources(names=("web", "code", "novels"))
    refused(MixtureBatches(renamed, 16, 4, 0, 2), state, "mixture=")
    longer = MixtureBatches(sources(7000), 16, 4, 0, 2)
    refused(longer, state, "data changed")
    longer.load_state_dict(state, same_data=False)  # checkpoint.allow_data_change
    refused(ranks(1, B=16)[0], state, "global batch")  # 24 rows is no whole number of 16
    refused(ranks(2)[0], {"epoch": 0, "step": 3, "blocks_done": 24, "block_size": 16},
            "without data.mixture")
    with pytest.raises(DataError, match="too small"):
        MixtureBatches([("a", 1.0, np.arange(20, dtype=np.uint16))], 16, 4)
    with pytest.raises(DataError, match="unique"):
        MixtureBatches(sources(names=("a", "a", "b")), 16, 4)


def test_config_validation_is_one_line() -> None:
    cfg = DataConfig(mixture=[{"source": "dir/web.txt", "weight": 2}, {"source": "hf://o/code",
                                                                       "weight": 1, "name": "c"}])
    assert [m.label for m in cfg.mixture] == ["web", "c"]
    assert isinstance(cfg.mixture[0], MixtureSource)
    for mixture, match in (([{"source": "a.txt", "weight": 0}], "weight"),
                           ([{"source": "x/a.txt", "weight": 1}, {"source": "y/a.txt", "weight": 1}],
                            "named 'a'")):
        with pytest.raises(DataError, match=match) as e:
            DataConfig(mixture=mixture)
        assert "\n" not in str(e.value)
    with pytest.raises(DataError, match="prepare_mixture"):
        prepare(cfg)


def write_corpora(tmp_path: Path) -> tuple[Path, Path]:
    a, b = tmp_path / "prose.txt", tmp_path / "notes.txt"
    a.write_text(corpus_text(60_000, seed=1), encoding="utf-8")
    b.write_text(corpus_text(30_000, seed=2).upper(), encoding="utf-8")
    return a, b


def test_prepare_mixture_shares_one_tokenizer_and_reuses(tmp_path: Path) -> None:
    a, b = write_corpora(tmp_path)
    cfg = DataConfig(dir=str(tmp_path / "data"), vocab_size=320, workers=1,
                     mixture=[MixtureSource(str(a), 0.7), MixtureSource(str(b), 0.3)])
    mix = prepare_mixture(cfg, progress=False)
    assert [(n, w) for n, w, _ in mix.parts] == [("prose", 0.7), ("notes", 0.3)]
    hashes = {Tokenizer.load(d.tokenizer_path).content_hash() for _, _, d in mix.parts}
    assert hashes == {Tokenizer.load(mix.tokenizer_path).content_hash()}
    assert len(list((tmp_path / "data").glob("mixture-*/tokenizer.json"))) == 1
    for key in ("train_tokens", "val_tokens", "train_bytes", "val_bytes"):
        assert mix.meta[key] == sum(d.meta[key] for _, _, d in mix.parts)
    assert mix.meta["vocab_size"] <= 320 and mix.dtype == np.uint16
    t0 = time.perf_counter()
    again = prepare_mixture(cfg, progress=False)
    assert time.perf_counter() - t0 < 1.0
    assert [d.dir for _, _, d in again.parts] == [d.dir for _, _, d in mix.parts]
    assert again.fingerprint == mix.fingerprint
    reweighted = DataConfig(dir=cfg.dir, vocab_size=320, workers=1,
                            mixture=[MixtureSource(str(a), 0.5), MixtureSource(str(b), 0.5)])
    assert prepare_mixture(reweighted, progress=False).fingerprint != mix.fingerprint


@pytest.mark.usefixtures("in_process_training")
def test_training_on_a_mixture_logs_tokens_and_bpb_per_source(tmp_path: Path) -> None:
    a, b = write_corpora(tmp_path)

    def config(run: str, *extra: str):
        return load_config("tiny", [
            f"run_dir={tmp_path / run}", f"data.dir={tmp_path / 'data'}", "data.vocab_size=320",
            f"data.mixture=[{{source:{a},weight:0.7}},{{source:{b},weight:0.3}}]",
            "optim.max_steps=6", "log.interval=1", "eval.interval=3", "eval.max_batches=2",
            "checkpoint.interval=3", "log.plot=false", "log.wandb=disabled", *extra])

    summary = train(config("run"))
    AcceleratorState._reset_state(reset_partial_state=True)
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    trains = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in trains] == [1, 2, 3, 4, 5, 6]
    for r in trains:
        assert set(r["tokens_by_source"]) == {"prose", "notes"}
        assert sum(r["tokens_by_source"].values()) == r["tokens"]
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [3, 6]
    for r in evals:
        per = [r["val_bits_per_byte_prose"], r["val_bits_per_byte_notes"]]
        assert all(0 < v < 20 for v in per)
        assert min(per) <= r["val_bits_per_byte"] <= max(per)  # the byte-weighted total
    scored = evaluate_checkpoint(summary["checkpoint"])  # the first source's val split
    assert scored["bits_per_byte"] == pytest.approx(evals[-1]["val_bits_per_byte_prose"], rel=1e-4)
    # resumed from step 3 in another run dir: the same losses and the same rows per source
    train(config("resumed", f"checkpoint.resume={tmp_path / 'run' / 'checkpoints' / 'step-3'}"))
    resumed = [r for r in read_metrics(tmp_path / "resumed" / "metrics.jsonl") if r["kind"] == "train"]
    assert [(r["step"], r["loss"], r["tokens_by_source"]) for r in resumed] == \
        [(r["step"], r["loss"], r["tokens_by_source"]) for r in trains[3:]]
