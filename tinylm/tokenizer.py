"""Byte-level BPE tokenizer (Hugging Face ``tokenizers``), trained on the corpus itself.

Byte-level means every string is representable and ``decode(encode(text)) == text`` for any
text: there is no normalizer and no unknown token. Documents are separated by one special
token, ``<|endoftext|>``, which the model learns as "a new document starts here" and which
generation uses as its stop token.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from tinylm.corpus import DataError

EOT = "<|endoftext|>"


class Tokenizer:
    """A thin, typed wrapper: encode/decode, the end-of-text id, save/load."""

    def __init__(self, tok: HFTokenizer) -> None:
        self._tok = tok
        eot = tok.token_to_id(EOT)
        if eot is None:
            raise DataError(f"tokenizer has no {EOT} token")
        self.eot_id: int = eot
        self.eot_token: str = EOT

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, min_frequency: int = 2) -> "Tokenizer":
        """Train a byte-level BPE; the vocab may come out smaller on a tiny corpus."""
        if vocab_size < 257:
            raise DataError(f"vocab_size={vocab_size}: a byte-level BPE needs at least 257 "
                            "(256 bytes + end-of-text)")
        tok = HFTokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=[EOT],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        tok.train_from_iterator(texts, trainer=trainer)
        return cls(tok)

    @classmethod
    def load(cls, path: str | Path) -> "Tokenizer":
        path = Path(path)
        if not path.is_file():
            raise DataError(f"{path}: tokenizer file not found")
        try:
            return cls(HFTokenizer.from_file(str(path)))
        except Exception as e:  # tokenizers raises a bare Exception on bad JSON
            raise DataError(f"{path}: not a valid tokenizer.json ({str(e).splitlines()[0]})") from None

    def save(self, path: str | Path) -> None:
        """Write tokenizer.json atomically (temp name, then rename)."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(self._tok.to_str())
        os.replace(tmp, path)

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Parallel over the batch (Rust threads)."""
        return [e.ids for e in self._tok.encode_batch(texts)]

    def decode(self, ids: Iterable[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=False)

    def token_bytes(self) -> np.ndarray:
        """UTF-8 byte length of each token id (0 for the special token).

        Byte-level BPE spells each byte as one character of its alphabet, so a token's byte
        length is its string length. Summing this over ids gives the exact bytes of the text
        they decode to, which is what bits per byte divides by.
        """
        lengths = np.zeros(self.vocab_size, dtype=np.int64)
        for token, idx in self._tok.get_vocab().items():
            lengths[idx] = 0 if token == EOT else len(token)
        return lengths

    def fingerprint(self) -> str:
        return hashlib.sha256(self._tok.to_str().encode()).hexdigest()[:16]

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, eot_id={self.eot_id})"


def iter_texts(rows: Iterable[dict]) -> Iterator[str]:
    for row in rows:
        yield row["text"]

