"""Trade models with the Hugging Face ecosystem: export to and import from ``transformers``'
Llama layout, with the tie guarded at the border.

    tinylm convert to-hf CKPT OUT      # LlamaForCausalLM directory: from_pretrained(OUT) loads it
    tinylm convert from-hf HF_DIR OUT  # a normal tinylm checkpoint (evaluate, generate, student...)

tinylm's GPT is Llama (RMSNorm, rotate-half rotary, SwiGLU, no biases) with q/k/v and gate/up
fused and the vocabulary padded to a multiple of 64, so the conversion is names and slices:
``qkv_proj`` <-> ``q_proj, k_proj, v_proj`` (rows: q heads, then k's, then v's), ``gate_up_proj``
<-> ``gate_proj, up_proj``, the padding rows dropped on export and zeros on import. Neither
direction imports ``transformers``: both read and write config.json and safetensors directly,
so the training path never needs it (tests check against the real library).

The tie: an export writes ``tie_word_embeddings`` explicitly and the tied matrix once. An import
refuses the two ways the ecosystem breaks ties silently: a config that says tied over a file
holding two different matrices, and a config that says untied over a file with no
``lm_head.weight`` (transformers would give a randomly initialised head). Anything tinylm can't
represent exactly (biases, another activation, a rope scaling, another architecture) is a one-line error naming the field and its value, never
an approximation.

Tensors are streamed: an export slices views of the loaded model (no second copy); an import
reads one tensor at a time and holds only the tinylm tensors it builds.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from tinylm.checkpoint.format import (TOKENIZER_FILE, CheckpointError, load_model, read_json,
                                      resolve_checkpoint, write_checkpoint)
from tinylm.common.atomic import atomic_dir, atomic_path, atomic_write
from tinylm.common.safefile import SafetensorsHeaderError, check_header
from tinylm.data.corpus import DataError
from tinylm.data.tokenizer import EOT, Tokenizer
from tinylm.model.config import GPTConfig
from tinylm.model.gpt import GPT
from tinylm.sharing.tying import TieError, check_ties


class HFConvertError(ValueError):
    """A model or directory that cannot cross the border exactly; names the field or file."""


# -- export -------------------------------------------------------------------------------------

def hf_config(cfg: GPTConfig, eot_id: int) -> dict:
    """config.json of the LlamaForCausalLM that computes what ``cfg`` does."""
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.n_embd,
        "intermediate_size": cfg.hidden_dim, "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head, "num_key_value_heads": cfg.kv_heads,
        "head_dim": cfg.head_dim, "hidden_act": "silu",
        "max_position_embeddings": cfg.block_size, "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,  # transformers 4.x reads this; 5.x reads rope_parameters
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "tie_word_embeddings": cfg.tie_embeddings,  # explicit: LlamaConfig's default is False
        "attention_bias": False, "mlp_bias": False, "attention_dropout": 0.0,
        "initializer_range": cfg.init_std, "bos_token_id": eot_id, "eos_token_id": eot_id,
        "torch_dtype": "float32",
        # transformers ignores it; tinylm's import reads it to share the unrolled blocks again
        **({"tinylm_layer_map": list(cfg.depth_map)} if cfg.n_unique_layers < cfg.n_layer else {}),
    }


def unroll_note(model: GPT) -> str | None:
    """The log line for a model whose blocks are shared across depth: Llama has no such
    sharing, so the export stores every depth's copy and is that much bigger."""
    c = model.config
    if c.n_unique_layers == c.n_layer:
        return None
    ours = sum(p.numel() for p in model.parameters())
    theirs = sum(t.numel() for t in hf_tensors(model).values()) + (c.padded_vocab_size - c.vocab_size
                                                                   ) * c.n_embd * (1 + (not c.tie_embeddings))
    return (f"unrolled the layer map: {c.n_layer} depths over {c.n_unique_layers} unique blocks "
            f"-> {c.n_layer} Llama layers; {theirs / ours:.2f}x the tensors of the tinylm "
            f"checkpoint ({theirs * 4 / 1e6:.1f} vs {ours * 4 / 1e6:.1f} MB in fp32)")


def hf_tensors(model: GPT) -> dict[str, torch.Tensor]:
    """The model's weights under transformers' Llama names (row slices: views, no copies,
    except for the later depths of a block shared across depth: Llama wants each its own)."""
    c = model.config
    q, kv = c.n_head * c.head_dim, c.kv_heads * c.head_dim
    out = {"model.embed_tokens.weight": model.embed_tokens.weight[:c.vocab_size],
           "model.norm.weight": model.norm.weight}
    if not c.tie_embeddings:  # a tied head is the embedding: stored once
        out["lm_head.weight"] = model.lm_head.weight[:c.vocab_size]
    for i, b in enumerate(model.layers):
        p, qkv, gate_up = f"model.layers.{i}.", b.self_attn.qkv_proj.weight, b.mlp.gate_up_proj.weight
        out.update({
            p + "self_attn.q_proj.weight": qkv[:q], p + "self_attn.k_proj.weight": qkv[q:q + kv],
            p + "self_attn.v_proj.weight": qkv[q + kv:], p + "self_attn.o_proj.weight": b.self_attn.o_proj.weight,
            p + "mlp.gate_proj.weight": gate_up[:c.hidden_dim], p + "mlp.up_proj.weight": gate_up[c.hidden_dim:],
            p + "mlp.down_proj.weight": b.mlp.down_proj.weight,
            p + "input_layernorm.weight": b.input_layernorm.weight,
            p + "post_attention_layernorm.weight": b.post_attention_layernorm.weight})
    seen: set[tuple[int, int]] = set()  # a block shared across depth: each depth its own copy
    for k, v in out.items():
        v = v.detach().contiguous()
        key = (v.untyped_storage().data_ptr(), v.storage_offset())
        out[k] = v.clone() if key in seen else v
        seen.add(key)
    return out


def export_to_hf(ckpt: str | Path, out: str | Path, say=print) -> Path:
    """Write checkpoint ``ckpt`` (or a run dir's latest) as a transformers model directory
    ``out`` (which must not exist or be empty): config.json, model.safetensors,
    tokenizer.json, tokenizer_config.json, special_tokens_map.json, generation_config.json.
    Blocks shared across depth are unrolled (Llama has one block per layer): ``say`` gets
    the line saying how much bigger that makes the files."""
    ckpt, out = resolve_checkpoint(ckpt), Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise HFConvertError(f"{out}: exists and is not an empty directory")
    model, _ = load_model(ckpt)
    tok = Tokenizer.load(ckpt / TOKENIZER_FILE)
    if (note := unroll_note(model)) is not None:
        say(note)
    with atomic_dir(out) as tmp:
        with atomic_path(tmp / "model.safetensors") as f:
            save_file(hf_tensors(model), str(f), metadata={"format": "pt"})
        atomic_write(tmp / "config.json", json.dumps(hf_config(model.config, tok.eot_id), indent=2))
        shutil.copyfile(ckpt / TOKENIZER_FILE, tmp / "tokenizer.json")
        special = {"bos_token": tok.eot_token, "eos_token": tok.eot_token, "unk_token": tok.eot_token}
        atomic_write(tmp / "tokenizer_config.json", json.dumps({
            "tokenizer_class": "PreTrainedTokenizerFast", **special,
            "model_max_length": model.config.block_size, "clean_up_tokenization_spaces": False,
            "add_prefix_space": False}, indent=2))
        atomic_write(tmp / "special_tokens_map.json", json.dumps(special, indent=2))
        atomic_write(tmp / "generation_config.json", json.dumps(
            {"bos_token_id": tok.eot_id, "eos_token_id": tok.eot_id}, indent=2))
    return out


# -- import -------------------------------------------------------------------------------------

def _refuse(path: Path, field: str, value, why: str) -> HFConvertError:
    return HFConvertError(f"{path}: {field}={value!r}: {why}")


def gpt_config(hf: dict, path: Path) -> GPTConfig:
    """The GPTConfig of a Llama config.json, or a one-line error for anything not exact."""
    arch = hf.get("architectures") or []
    if hf.get("model_type") != "llama" or (arch and arch != ["LlamaForCausalLM"]):
        raise _refuse(path, "model_type", hf.get("model_type"), "only Llama-architecture "
                      "models (LlamaForCausalLM: Llama 2/3, SmolLM, TinyLlama) are supported")
    for field, ok in (("hidden_act", "silu"), ("attention_bias", False), ("mlp_bias", False),
                      ("pretraining_tp", 1), ("sliding_window", None), ("rope_interleaved", False)):
        if hf.get(field, ok) != ok:
            raise _refuse(path, field, hf[field], f"tinylm computes {field}={ok!r} only")
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ("default", None):
        raise _refuse(path, "rope_type", rope_type, "rotary scaling is not supported (only "
                      "plain rotary with any rope_theta)")
    theta = rope.get("rope_theta", hf.get("rope_theta", 10000.0))
    try:
        heads, width = hf["num_attention_heads"], hf["hidden_size"]
        head_dim = hf.get("head_dim")
        head_size = head_dim if head_dim not in (None, width / heads) else None
        return GPTConfig(vocab_size=hf["vocab_size"], block_size=hf["max_position_embeddings"],
                         n_layer=hf["num_hidden_layers"], n_head=heads, n_embd=width,
                         n_kv_head=hf.get("num_key_value_heads") or heads, head_size=head_size,
                         mlp_hidden=hf["intermediate_size"], rope_theta=float(theta),
                         norm_eps=hf.get("rms_norm_eps", 1e-6),
                         tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
                         layer_map=hf.get("tinylm_layer_map"))
    except KeyError as e:
        raise HFConvertError(f"{path}: no {e.args[0]} in config.json") from None
    except (ValueError, TypeError, ZeroDivisionError) as e:
        raise HFConvertError(f"{path}: {e}") from None


def _weight_files(hf_dir: Path) -> list[Path]:
    index = hf_dir / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [hf_dir / s for s in shards]
    if (hf_dir / "model.safetensors").is_file():
        return [hf_dir / "model.safetensors"]
    raise HFConvertError(f"{hf_dir}: no model.safetensors (pytorch_model.bin is not read: "
                         "tinylm never unpickles weights)")


def _tinylm_tensors(hf_dir: Path, cfg: GPTConfig) -> dict[str, torch.Tensor]:
    """Read the HF weights one at a time into tinylm's names and layout, guarding the tie."""
    with contextlib.ExitStack() as files:
        paths = _weight_files(hf_dir)
        for f in paths:
            check_header(f)  # before safetensors maps what a damaged header claims
        shards = [files.enter_context(safe_open(str(f), framework="pt")) for f in paths]
        src = {k: sf for sf in shards for k in sf.keys()}  # name -> its open shard

        def get(name: str) -> torch.Tensor:
            if name not in src:
                raise HFConvertError(f"{hf_dir}: no tensor {name}")
            return src[name].get_tensor(name).float()

        return _convert_tensors(hf_dir, cfg, get, has_head="lm_head.weight" in src)


def _convert_tensors(hf_dir: Path, cfg: GPTConfig, get, has_head: bool) -> dict[str, torch.Tensor]:
    """tinylm's tensors, each built from ``get(hf_name)`` as it is needed."""

    def padded(w: torch.Tensor) -> torch.Tensor:  # the padding rows are zeros
        return torch.cat([w, w.new_zeros(cfg.padded_vocab_size - w.size(0), w.size(1))])

    out = {"embed_tokens.weight": padded(get("model.embed_tokens.weight")),
           "norm.weight": get("model.norm.weight")}
    if cfg.tie_embeddings and has_head and not torch.equal(
            get("lm_head.weight"), out["embed_tokens.weight"][:cfg.vocab_size]):
        raise HFConvertError(f"{hf_dir}: tie_word_embeddings is true but lm_head.weight differs "
                             "from model.embed_tokens.weight: the config and the weights disagree")
    if not cfg.tie_embeddings:
        if not has_head:  # transformers would initialise a random head here, silently
            raise HFConvertError(f"{hf_dir}: tie_word_embeddings is false and there is no "
                                 "lm_head.weight: the head would be random")
        out["lm_head.weight"] = padded(get("lm_head.weight"))
    else:
        out["lm_head.weight"] = out["embed_tokens.weight"]  # one tensor: the tie
    for i in range(cfg.n_layer):
        p = f"model.layers.{i}."
        out[f"layers.{i}.self_attn.qkv_proj.weight"] = torch.cat(
            [get(p + f"self_attn.{n}_proj.weight") for n in "qkv"])
        out[f"layers.{i}.self_attn.o_proj.weight"] = get(p + "self_attn.o_proj.weight")
        out[f"layers.{i}.mlp.gate_up_proj.weight"] = torch.cat(
            [get(p + "mlp.gate_proj.weight"), get(p + "mlp.up_proj.weight")])
        out[f"layers.{i}.mlp.down_proj.weight"] = get(p + "mlp.down_proj.weight")
        for n in ("input_layernorm", "post_attention_layernorm"):
            out[f"layers.{i}.{n}.weight"] = get(p + f"{n}.weight")
    return out


def import_from_hf(hf_dir: str | Path, out: str | Path) -> Path:
    """Write the Llama model directory ``hf_dir`` as the tinylm checkpoint ``out``."""
    hf_dir, out = Path(hf_dir), Path(out)
    if not (hf_dir / "config.json").is_file():
        raise HFConvertError(f"{hf_dir}: no config.json (a transformers model directory?)")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise HFConvertError(f"{out}: exists and is not an empty directory")
    try:
        hf_cfg = read_json(hf_dir / "config.json")  # one line naming the file, whatever is in it
    except CheckpointError as e:
        raise HFConvertError(str(e)) from None
    cfg = gpt_config(hf_cfg, hf_dir / "config.json")
    try:
        tok = Tokenizer.load(hf_dir / "tokenizer.json")
    except DataError as e:
        raise HFConvertError(f"{e} (tinylm needs a byte-level BPE tokenizer.json with {EOT})") from None
    if not tok.is_byte_level:
        raise HFConvertError(f"{hf_dir / 'tokenizer.json'}: not a byte-level BPE; its ids don't "
                             "map to exact bytes, so bits per byte would be wrong")
    if tok.vocab_size != cfg.vocab_size:
        raise HFConvertError(f"{hf_dir}: tokenizer.json has {tok.vocab_size} tokens but "
                             f"vocab_size={cfg.vocab_size}")
    with torch.device("meta"):
        model = GPT(cfg)
    try:  # a shared block's depths must hold equal copies (the tie guard compares them)
        model.load_state_dict(_tinylm_tensors(hf_dir, cfg), strict=True, assign=True)
    except (SafetensorError, SafetensorsHeaderError, OSError) as e:  # a truncated or damaged file
        raise HFConvertError(f"{hf_dir}: a weight file is corrupt or truncated ({e})") from None
    except TieError as e:
        raise HFConvertError(f"{hf_dir}: tinylm_layer_map={list(cfg.depth_map)} shares blocks, "
                             f"but the file's layers differ ({e})") from None
    check_ties(model)  # tied config: one Parameter for embedding and head
    with atomic_dir(out) as tmp:
        write_checkpoint(tmp, model, {"model": cfg.to_dict()}, hf_dir / "tokenizer.json",
                         extra={"step": 0, "imported_from": str(hf_dir.resolve())})
    return out

