"""Byte-level BPE tokenizer (Hugging Face ``tokenizers``), trained on the corpus itself.

Byte-level means every string is representable and ``decode(encode(text)) == text`` for any
text: there is no normalizer (it would rewrite text, e.g. NFC), no unknown token and no added
prefix space. Documents are separated by one special token, ``<|endoftext|>``, which the model
learns as "a document ends here" and generation uses as its stop token. Only the data pipeline
puts it in a stream (as ``eot_id``): the same characters inside a text are encoded as ordinary
bytes (``encode_special_tokens``), so a document that merely quotes it is neither cut in two
nor shortened in the byte count.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterable, Union

import numpy as np
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from tinylm.common.atomic import atomic_write
from tinylm.data.corpus import DataError

EOT = "<|endoftext|>"
MIN_VOCAB = 257  # 256 byte tokens + end-of-text


def _byte_decoder() -> dict[str, int]:
    """The byte-level alphabet's inverse: each of the 256 bytes is spelled as one character
    (GPT-2's table, which ``pre_tokenizers.ByteLevel`` uses)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    chars, n = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b], n = chr(256 + n), n + 1
    return {c: b for b, c in chars.items()}


class Tokenizer:
    """A thin, typed wrapper: train, encode/decode, the end-of-text id, save/load."""

    def __init__(self, tok: HFTokenizer, name: str = "tokenizer") -> None:
        self._tok = tok
        eot = tok.token_to_id(EOT)
        if eot is None:
            raise DataError(f"{name}: tokenizer has no {EOT} token")
        self._tok.encode_special_tokens = True  # literal "<|endoftext|>" in text is just text
        self.eot_id: int = eot
        self.eot_token: str = EOT
        self._vocab = tok.get_vocab(with_added_tokens=True)
        self._tokens = {i: t for t, i in self._vocab.items()}

    @classmethod
    def train(cls, texts: Iterable[Union[str, list[str]]], vocab_size: int, *,
              min_frequency: int = 2, show_progress: bool = False,
              length: int | None = None) -> "Tokenizer":
        """Train a byte-level BPE on ``texts`` (strings, or lists of strings: batches are
        faster). ``min_frequency=2``: a pair seen once is noise, not a pattern worth a token.
        On a small corpus the vocabulary may come out smaller than ``vocab_size``."""
        if vocab_size < MIN_VOCAB:
            raise DataError(f"vocab_size={vocab_size}: a byte-level BPE needs at least "
                            f"{MIN_VOCAB} (256 bytes + end-of-text)")
        tok = HFTokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=[EOT],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=show_progress)
        tok.train_from_iterator(texts, trainer=trainer, length=length)
        return cls(tok)

    @classmethod
    def load(cls, path: str | Path) -> "Tokenizer":
        path = Path(path)
        if not path.is_file():
            raise DataError(f"{path}: tokenizer file not found")
        try:
            tok = HFTokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises a bare Exception on bad JSON
            raise DataError(f"{path}: not a valid tokenizer.json "
                            f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
        return cls(tok, name=str(path))

    @classmethod
    def from_json(cls, text: str, name: str) -> "Tokenizer":
        """A tokenizer from tokenizer.json's text (kept inside a packed artifact); ``name``
        says where it came from in errors."""
        try:
            tok = HFTokenizer.from_str(text)
        except Exception as e:  # tokenizers raises a bare Exception on bad JSON
            raise DataError(f"{name}: not a valid tokenizer.json "
                            f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
        return cls(tok, name=name)

    def to_json(self) -> str:
        """tokenizer.json's text (what :meth:`save` writes)."""
        return self._tok.to_str(pretty=True)

    def save(self, path: str | Path) -> None:
        """Write tokenizer.json atomically (temp name, then ``os.replace``)."""
        atomic_write(path, self._tok.to_str(pretty=True))

    @property
    def is_byte_level(self) -> bool:
        """Whether every token spells bytes in the byte-level alphabet (what ``token_bytes``
        and so bits per byte rely on): a ByteLevel pre-tokenizer or decoder."""
        spec = json.loads(self._tok.to_str())
        parts = [spec.get("pre_tokenizer") or {}, spec.get("decoder") or {}]
        parts += [p for part in list(parts) for p in part.get("pretokenizers", [])]
        return any(p.get("type") == "ByteLevel" for p in parts)

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Parallel over the batch (Rust threads); skips offsets, which we never use."""
        return [e.ids for e in self._tok.encode_batch_fast(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``; an end-of-text id shows as ``<|endoftext|>``."""
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """The exact bytes ``ids`` stand for, special tokens left out. Unlike ``decode`` it
        never replaces half of a split multi-byte character with U+FFFD."""
        inv = _byte_decoder()
        return bytes(inv[c] for i in ids if int(i) != self.eot_id for c in self._tokens[int(i)])

    def token_bytes(self) -> np.ndarray:
        """UTF-8 byte length of each id (0 for ``<|endoftext|>``).

        Byte-level BPE spells each byte as one character of its alphabet, so a token's byte
        length is its string length. Summing this over ids gives exactly the bytes of the text
        they stand for, which is what bits per byte divides by.
        """
        lengths = np.zeros(self.vocab_size, dtype=np.int64)
        for token, idx in self._vocab.items():
            lengths[idx] = 0 if token == EOT else len(token)
        return lengths

    def content_hash(self) -> str:
        """A hash of the whole tokenizer (vocab, merges, settings): part of cache keys."""
        return hashlib.sha256(self._tok.to_str().encode()).hexdigest()[:16]

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, eot_id={self.eot_id})"


class TokenizerMismatchError(ValueError):
    """Two models that must share token ids were trained with different tokenizers."""


def require_same_tokenizer(a: str | Path, b: str | Path) -> None:
    """Raise ``TokenizerMismatchError`` naming both files unless they are one tokenizer (same
    vocab, merges and settings; formatting of the JSON does not matter)."""
    ta, tb = Tokenizer.load(a), Tokenizer.load(b)  # DataError, naming the file, if unreadable
    if ta.content_hash() != tb.content_hash():
        raise TokenizerMismatchError(
            f"tokenizer mismatch: {a} ({ta.vocab_size} tokens) and {b} ({tb.vocab_size} tokens) "
            "are different tokenizers, so the same id means different tokens")
