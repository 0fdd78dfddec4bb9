"""Byte-level BPE: exact round trips for any text, the end-of-text token, save/load."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from tokenizers import pre_tokenizers

from conftest import corpus_text
from tinylm.data import tokenizer as tokmod
from tinylm.data.corpus import DataError
from tinylm.data.tokenizer import EOT, Tokenizer

any_text = st.text(alphabet=st.characters(codec="utf-8"), max_size=200)


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.train([corpus_text(60_000, seed=s) for s in range(3)], vocab_size=500)


@settings(max_examples=300, deadline=None)
@given(text=any_text)
@example(text=EOT)
@example(text=f"a{EOT}b{EOT[:5]}")
@example(text="héllo wörld, 日本語 🙂\n\n\r\n\t\x00 trailing  ")
@example(text="\ufeffBOM stays: the tokenizer does not normalize")
def test_decode_encode_round_trip_for_any_text(tok: Tokenizer, text: str) -> None:
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert tok.decode_bytes(ids) == text.encode("utf-8")
    assert int(tok.token_bytes()[ids].sum()) == len(text.encode("utf-8"))  # bits-per-byte basis
    assert tok.eot_id not in ids  # only the pipeline puts EOT in a stream


def test_end_of_text_token(tok: Tokenizer) -> None:
    assert tok.eot_token == EOT == "<|endoftext|>"
    assert tok.decode([tok.eot_id]) == EOT
    assert tok.decode_bytes([tok.eot_id]) == b""
    assert tok.token_bytes()[tok.eot_id] == 0
    assert tok.decode(tok.encode("a") + [tok.eot_id] + tok.encode("b")) == f"a{EOT}b"


def test_vocab_size_and_training_is_deterministic(tok: Tokenizer) -> None:
    assert tok.vocab_size == 500
    again = Tokenizer.train([corpus_text(60_000, seed=s) for s in range(3)], vocab_size=500)
    assert again.content_hash() == tok.content_hash()
    text = corpus_text(2000, seed=9)
    assert len(tok.encode(text)) < len(text.encode()) / 2  # it learned merges, not just bytes


def test_train_accepts_batches_and_rejects_tiny_vocab() -> None:
    small = Tokenizer.train(iter([["one batch", "of texts"], ["another"]]), vocab_size=300)
    assert small.decode(small.encode("texts")) == "texts"
    with pytest.raises(DataError, match="at least 257"):
        Tokenizer.train(["abc"], vocab_size=256)


def test_encode_batch_matches_encode(tok: Tokenizer) -> None:
    texts = ["", "x", corpus_text(3000, seed=5), "日本語\n" * 3]
    assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]


def test_byte_alphabet_matches_tokenizers() -> None:
    assert set(tokmod._byte_decoder()) == set(pre_tokenizers.ByteLevel.alphabet())
    assert sorted(tokmod._byte_decoder().values()) == list(range(256))


def test_save_load_round_trip(tok: Tokenizer, tmp_path: Path) -> None:
    path = tmp_path / "tokenizer.json"
    tok.save(path)
    loaded = Tokenizer.load(path)
    assert loaded.content_hash() == tok.content_hash()
    assert (loaded.vocab_size, loaded.eot_id) == (tok.vocab_size, tok.eot_id)
    text = f"saved {EOT} and loaded 🙂"
    assert loaded.encode(text) == tok.encode(text) and loaded.decode(loaded.encode(text)) == text
    assert loaded.eot_id not in loaded.encode(text)  # the setting survives a reload
    assert sorted(os.listdir(tmp_path)) == ["tokenizer.json"]  # no temp file left


def test_save_is_atomic(tok: Tokenizer, tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "tokenizer.json"
    path.write_text("old")

    def crash(src, dst):
        assert Path(src).parent == Path(dst).parent and Path(src) != Path(dst)
        assert Tokenizer.load(src).content_hash() == tok.content_hash()  # complete before rename
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        tok.save(path)
    assert path.read_text() == "old"  # never half-written
    assert sorted(os.listdir(tmp_path)) == ["tokenizer.json"]


def test_load_missing_or_corrupt_names_the_file(tok: Tokenizer, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=f"{tmp_path / 'absent.json'}: tokenizer file not found"):
        Tokenizer.load(tmp_path / "absent.json")
    bad = tmp_path / "corrupt.json"
    bad.write_text('{"version": "1.0", "model": ')
    with pytest.raises(DataError, match=f"{bad}: not a valid tokenizer.json"):
        Tokenizer.load(bad)
    no_eot = tmp_path / "no-eot.json"
    spec = json.loads(tok._tok.to_str())
    spec["added_tokens"] = []
    spec["model"]["vocab"] = {k: v for k, v in spec["model"]["vocab"].items() if k != EOT}
    no_eot.write_text(json.dumps(spec))
    with pytest.raises(DataError, match=f"{no_eot}: tokenizer has no <\\|endoftext\\|> token"):
        Tokenizer.load(no_eot)
