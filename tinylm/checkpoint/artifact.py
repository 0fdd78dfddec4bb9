"""A checkpoint packed into as few bytes as it honestly takes: quantized, compressed, one file.

Parameter Golf scores a model by the bits per byte it reaches AFTER a round trip through
its artifact (int8 + zlib for the naive baseline, int6 for the records), with the artifact's
exact size beside it. ``tinylm pack CKPT OUT`` writes such a file; ``tinylm evaluate OUT``
(and generate) read it back, dequantized, as a model like any other.

What is stored, each unique tensor once: a tie group (the embedding = the head) and every
block shared across depth (``model.layer_map``) appear once, which is where sharing pays.
Matrices get per-row symmetric codes (:mod:`tinylm.model.quant`: ``bits``, the
embedding ``embed_bits``) and an fp16 scale per row; norm scales are fp16. The checkpoint's
config.json and tokenizer.json travel inside, so the file evaluates alone.

The file::

    b"TINYLMQ1" | codec (1 byte) | payload length (u64) | sha256 of the payload | payload
    payload = compressed(u32 index length | index JSON | tensor bytes)

A wrong magic, a short file, a checksum that does not match or a payload that does not
parse is a :class:`~tinylm.checkpoint.format.CheckpointError` naming the file.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from tinylm.checkpoint.format import (ARTIFACT_MAGIC as MAGIC, TOKENIZER_FILE, CheckpointError,
                                      load_model, load_tensors, resolve_checkpoint,
                                      weights_for_saving)
from tinylm.model.quant import (BITS, dequantize_rows, pack_codes, packed_size, quantize_rows,
                                     unpack_codes)
from tinylm.common.atomic import atomic_write
from tinylm.data.tokenizer import Tokenizer
from tinylm.model.config import GPTConfig
from tinylm.model.gpt import GPT

_HEAD = struct.Struct("<8sBQ32s")  # magic, codec, payload length, sha256
ARTIFACT_FORMAT = 1


def _zstd():
    try:  # optional: zstandard is not a dependency; where installed, pack tries it too
        import zstandard
    except ImportError:
        return None
    return zstandard


CODECS = {  # id -> (name, compress, decompress); "auto" keeps whichever is smallest
    1: ("zlib", lambda b: zlib.compress(b, 9), zlib.decompress),
    2: ("lzma", lambda b: lzma.compress(b, preset=9 | lzma.PRESET_EXTREME), lzma.decompress),
    3: ("zstd", lambda b: _zstd().ZstdCompressor(level=22).compress(b),
        lambda b: _zstd().ZstdDecompressor().decompress(b)),
}


def available_codecs() -> list[str]:
    return [name for i, (name, _, _) in CODECS.items() if i != 3 or _zstd() is not None]


# -- packing -----------------------------------------------------------------------------------

def _payload(model: GPT, bits: int, embed_bits: int, clip: str) -> tuple[bytes, dict]:
    """Index and tensor bytes of ``model``'s unique tensors, quantized; and the weight stats."""
    tensors, groups = weights_for_saving(model)
    index, blobs, offset, stats = [], [], 0, {"codes": 0, "scales": 0, "fp16": 0}
    for name, t in tensors.items():
        entry = {"name": name, "shape": list(t.shape)}
        if t.dim() == 2:
            b = embed_bits if name.startswith(("embed_tokens", "lm_head")) else bits
            q, scale = quantize_rows(t, b, clip)
            parts = [pack_codes(q, b), scale.numpy().tobytes()]
            entry.update(kind="rows", bits=b)
            stats["codes"] += len(parts[0])
            stats["scales"] += len(parts[1])
        else:
            parts = [t.detach().half().numpy().tobytes()]
            entry.update(kind="fp16")
            stats["fp16"] += len(parts[0])
        entry.update(offset=offset, nbytes=sum(map(len, parts)))
        offset += entry["nbytes"]
        index.append(entry)
        blobs += parts
    return b"".join(blobs), {"tensors": index, "ties": groups, "weight_bytes": stats}


def pack(ckpt: str | Path, out: str | Path, bits: int = 8, embed_bits: int | None = None,
         clip: str = "search", codec: str = "auto") -> dict:
    """Write checkpoint ``ckpt`` (or a run dir's latest) as the artifact ``out`` (atomically);
    returns what was written: bytes, codec, each codec's size, the weight bytes."""
    embed_bits = bits if embed_bits is None else embed_bits
    for what, b in (("bits", bits), ("embed_bits", embed_bits)):
        if b not in BITS:
            raise ValueError(f"{what}={b}: expected one of {', '.join(map(str, BITS))}")
    names = available_codecs()
    if codec != "auto" and codec not in names:
        raise ValueError(f"codec={codec!r}: expected auto or one of {', '.join(names)}")
    ckpt = resolve_checkpoint(ckpt)
    model, cfg = load_model(ckpt)
    blob, meta = _payload(model, bits, embed_bits, clip)
    meta.update(format=ARTIFACT_FORMAT, source=str(ckpt), bits=bits, embed_bits=embed_bits,
                clip=clip, config=cfg, tokenizer=(ckpt / TOKENIZER_FILE).read_text())
    index = json.dumps(meta, separators=(",", ":")).encode()
    raw = struct.pack("<I", len(index)) + index + blob
    sizes = {name: len(c(raw)) for i, (name, c, _) in CODECS.items()
             if name in names and (codec == "auto" or name == codec)}
    name = min(sizes, key=sizes.get)
    cid = next(i for i, (n, _, _) in CODECS.items() if n == name)
    payload = CODECS[cid][1](raw)
    atomic_write(out, _HEAD.pack(MAGIC, cid, len(payload), hashlib.sha256(payload).digest()) + payload)
    return {"artifact": str(out), "bytes": _HEAD.size + len(payload), "codec": name,
            "codec_bytes": {k: v + _HEAD.size for k, v in sizes.items()}, "bits": bits,
            "embed_bits": embed_bits, "clip": clip, "raw_bytes": len(raw), **meta["weight_bytes"],
            "tokenizer_bytes": len(meta["tokenizer"].encode()), "source": str(ckpt)}


# -- reading -----------------------------------------------------------------------------------

def read_artifact(path: str | Path) -> tuple[dict, bytes]:
    """(index, tensor bytes) of an artifact, every byte checked; CheckpointError otherwise."""
    path = Path(path)
    data = path.read_bytes()
    if len(data) < _HEAD.size or data[:len(MAGIC)] != MAGIC:
        raise CheckpointError(f"{path}: not a tinylm artifact (no {MAGIC.decode()} header)")
    _, cid, length, digest = _HEAD.unpack_from(data)
    payload = data[_HEAD.size:]
    if len(payload) != length:
        raise CheckpointError(f"{path}: truncated or padded artifact: {len(payload)} payload bytes, "
                              f"the header says {length}")
    if hashlib.sha256(payload).digest() != digest:
        raise CheckpointError(f"{path}: corrupt artifact: the payload's sha256 does not match its header")
    if cid not in CODECS or (cid == 3 and _zstd() is None):
        raise CheckpointError(f"{path}: codec {cid} is unknown here (zstd needs `pip install zstandard`)")
    try:
        raw = CODECS[cid][2](payload)
        (n,) = struct.unpack_from("<I", raw)
        meta = json.loads(raw[4:4 + n])
        blob = raw[4 + n:]
    except (zlib.error, lzma.LZMAError, struct.error, ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: corrupt artifact payload ({type(e).__name__})") from None
    if meta.get("format") != ARTIFACT_FORMAT:
        raise CheckpointError(f"{path}: artifact format {meta.get('format')!r}, expected {ARTIFACT_FORMAT}")
    return meta, blob


def _tensor(entry: dict, blob: bytes, path: Path) -> torch.Tensor:
    shape, start, n = tuple(entry["shape"]), entry["offset"], entry["nbytes"]
    part = blob[start:start + n]
    if len(part) != n:
        raise CheckpointError(f"{path}: tensor {entry['name']} runs past the payload")
    if entry["kind"] == "fp16":
        return torch.from_numpy(np.frombuffer(part, np.float16).copy()).float().reshape(shape)
    codes = packed_size(int(np.prod(shape)), entry["bits"])
    scale = torch.from_numpy(np.frombuffer(part[codes:], np.float16).copy())
    return dequantize_rows(unpack_codes(part[:codes], entry["bits"], shape), scale)


def load_artifact(path: str | Path, device: str | torch.device = "cpu") -> tuple[GPT, Tokenizer, dict]:
    """(model in eval mode, tokenizer, the checkpoint's config.json plus ``artifact_bytes``):
    the weights a packed model really has, dequantized to float32."""
    path = Path(path)
    meta, blob = read_artifact(path)
    cfg = meta["config"]
    try:
        config = GPTConfig(**cfg["model"])
    except (TypeError, ValueError, KeyError) as e:
        raise CheckpointError(f"{path}: bad model config inside the artifact ({e})") from None
    tensors = {e["name"]: _tensor(e, blob, path) for e in meta["tensors"]}
    with torch.device("meta"):
        model = GPT(config)
    load_tensors(model, tensors, meta["ties"], path, assign=True)
    tokenizer = Tokenizer.from_json(meta["tokenizer"], f"{path}:{TOKENIZER_FILE}")
    bits = {"bits": meta["bits"], "embed_bits": meta["embed_bits"], "clip": meta["clip"]}
    return model.to(device).eval(), tokenizer, {**cfg, "artifact_bytes": path.stat().st_size,
                                                "artifact": bits}
