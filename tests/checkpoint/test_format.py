"""Checkpoints: ties stored once and re-created, strict and clear on bad files, atomic."""

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from tinylm.checkpoint import format as ckpt
from tinylm.common.atomic import publish_dir
from tinylm.model.autoencoder import TiedAutoencoder
from tinylm.model.config import GPTConfig
from tinylm.model.gpt import GPT

CFG = dict(vocab_size=64, block_size=16, n_layer=1, n_head=2, n_embd=16)


def gpt(**kw):
    torch.manual_seed(0)
    return GPT(GPTConfig(**{**CFG, **kw}))


def test_tie_group_is_stored_once_and_recreated(tmp_path):
    model = gpt()
    ckpt.save_model(model, tmp_path / "m.safetensors")
    with safe_open(str(tmp_path / "m.safetensors"), "pt") as f:
        assert "lm_head.weight" not in f.keys() and "embed_tokens.weight" in f.keys()
    fresh = gpt()
    with torch.no_grad():
        fresh.embed_tokens.weight.zero_()
    ckpt.load_weights(fresh, tmp_path / "m.safetensors")
    assert fresh.lm_head.weight is fresh.embed_tokens.weight
    assert torch.equal(fresh.lm_head.weight, model.lm_head.weight)


def test_transposed_tie_saves_under_the_plain_name(tmp_path):
    ae = TiedAutoencoder(6, 3)
    ckpt.save_model(ae, tmp_path / "ae.safetensors")
    tensors, groups = ckpt.read_weights(tmp_path / "ae.safetensors")
    assert "encoder.weight" in tensors and not any("parametrizations" in k for k in tensors)
    other = TiedAutoencoder(6, 3)
    ckpt.load_weights(other, tmp_path / "ae.safetensors")
    assert other.decoder.parametrizations.weight.original is other.encoder.weight
    assert torch.equal(other.decoder.weight, ae.decoder.weight)


def test_tied_file_into_untied_model_is_an_error(tmp_path):
    ckpt.save_model(gpt(), tmp_path / "tied.safetensors")
    with pytest.raises(ckpt.CheckpointError, match=r"the file ties \[\['embed_tokens.weight', "
                       r"'lm_head.weight'\]\] that the model built from its config does not"):
        ckpt.load_weights(gpt(tie_embeddings=False), tmp_path / "tied.safetensors")
    ckpt.save_model(gpt(tie_embeddings=False), tmp_path / "untied.safetensors")
    with pytest.raises(ckpt.CheckpointError, match=r"the model ties \[\['embed_tokens.weight'"):
        ckpt.load_weights(gpt(), tmp_path / "untied.safetensors")


def test_wrapper_prefixes_are_stripped(tmp_path):
    model = gpt()
    tensors, groups = ckpt.weights_for_saving(model)
    save_file({"_orig_mod." + k: v for k, v in tensors.items()}, str(tmp_path / "c.safetensors"),
              metadata={"tinylm_ties": json.dumps([["_orig_mod." + n for n in g] for g in groups])})
    fresh = gpt()
    ckpt.load_weights(fresh, tmp_path / "c.safetensors")
    assert torch.equal(fresh.norm.weight, model.norm.weight)


def test_bad_files_give_one_line_errors(tmp_path):
    with pytest.raises(ckpt.CheckpointError, match="no such file"):
        ckpt.load_weights(gpt(), tmp_path / "missing.safetensors")
    ckpt.save_model(gpt(), tmp_path / "m.safetensors")
    data = (tmp_path / "m.safetensors").read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ckpt.CheckpointError, match="corrupt or truncated") as e:
        ckpt.load_weights(gpt(), tmp_path / "trunc.safetensors")
    assert "\n" not in str(e.value)
    with pytest.raises(ckpt.CheckpointError, match="missing tensors|size mismatch|shape"):
        ckpt.load_weights(gpt(n_layer=2), tmp_path / "m.safetensors")
    (tmp_path / "d").mkdir()
    with pytest.raises(ckpt.CheckpointError, match="is .* a tinylm checkpoint"):
        ckpt.read_config(tmp_path / "d")
    (tmp_path / "d" / "config.json").write_text("{not json")
    with pytest.raises(ckpt.CheckpointError, match="not valid JSON"):
        ckpt.read_config(tmp_path / "d")


def test_checkpoint_dir_round_trip_and_publish(tmp_path):
    model = gpt()
    tok = tmp_path / "tokenizer.json"
    tok.write_text("{}")
    root = tmp_path / "checkpoints"
    root.mkdir()
    for step in (1, 2, 3):
        tmp = root / f".step-{step}.tmp"
        tmp.mkdir()
        ckpt.write_checkpoint(tmp, model, {"seed": 1}, tok, trainer_state={"step": step})
        publish_dir(tmp, root / f"step-{step}")
    assert [p.name for p in sorted(root.iterdir())] == ["step-1", "step-2", "step-3"]
    assert ckpt.latest_checkpoint(root).name == "step-3"
    assert ckpt.find_checkpoints(tmp_path) == [root / f"step-{s}" for s in (1, 2, 3)]
    loaded, cfg = ckpt.load_model(root / "step-3")
    assert cfg["ties"] == [["embed_tokens.weight", "lm_head.weight"]] and not loaded.training
    assert ckpt.read_trainer_state(root / "step-3")["step"] == 3
    # an unfinished temp dir is never mistaken for a checkpoint
    (root / ".step-4.tmp").mkdir()
    assert ckpt.latest_checkpoint(root).name == "step-3"


def test_format_1_checkpoints_still_load(tmp_path):
    """tinylm 0.1 stored the trainer-padded vocab (a 300-token tokenizer -> vocab_size 320);
    format 2 stores the tokenizer's size and the model pads itself, to the same 320 rows."""
    from tinylm.data.tokenizer import Tokenizer

    text = "Some text to train a small byte-level tokenizer on, naïve café. " * 200
    Tokenizer.train([text], vocab_size=300).save(tmp_path / "tok.json")
    old = tmp_path / "step-7"
    old.mkdir()
    model = gpt(vocab_size=300)
    ckpt.write_checkpoint(old, model, {}, tmp_path / "tok.json", extra={"step": 7})
    cfg = json.loads((old / ckpt.CONFIG_FILE).read_text())
    cfg["format"], cfg["model"]["vocab_size"] = "tinylm-checkpoint-1", 320
    (old / ckpt.CONFIG_FILE).write_text(json.dumps(cfg))
    (old / "manifest.json").unlink()  # tinylm 0.1 wrote none
    with pytest.warns(UserWarning, match="no manifest.json .a checkpoint of tinylm 0.1.: its files are not verified"):
        loaded, read = ckpt.load_model(old)
    assert loaded.config.vocab_size == 300 and read["format"] == ckpt.CHECKPOINT_FORMAT
    assert torch.equal(loaded.embed_tokens.weight, model.embed_tokens.weight)
    cfg["model"]["vocab_size"] = 384  # not what the trainer's padding gave: refused, one line
    (old / ckpt.CONFIG_FILE).write_text(json.dumps(cfg))
    with pytest.raises(ckpt.CheckpointError, match="format 1 checkpoint with vocab_size=384.*"
                                                   r"a model of vocab_size=300$"):
        ckpt.load_model(old)


def test_a_block_shared_across_depth_is_stored_once_and_shared_again(tmp_path):
    """6 depths over 2 unique blocks (cycle:2): the file holds 2 blocks, the model built from
    the config shares them again, and a model without the map refuses the file."""
    model = gpt(n_layer=6, layer_map="cycle:2")
    ckpt.save_model(model, tmp_path / "m.safetensors")
    with safe_open(str(tmp_path / "m.safetensors"), "pt") as f:
        stored = {k.split(".")[1] for k in f.keys() if k.startswith("layers.")}
    assert stored == {"0", "1"}
    fresh = gpt(n_layer=6, layer_map="cycle:2")
    with torch.no_grad():
        for p in fresh.parameters():
            p.zero_()
    ckpt.load_weights(fresh, tmp_path / "m.safetensors")
    assert fresh.layers[0] is fresh.layers[2] is fresh.layers[4]
    assert torch.equal(fresh.layers[4].mlp.down_proj.weight, model.layers[0].mlp.down_proj.weight)
    with pytest.raises(ckpt.CheckpointError, match=r"the file ties \[\['layers.0.input_layernorm.weight', "
                       r"'layers.2.input_layernorm.weight', 'layers.4.input_layernorm.weight'\].*"
                       r"model.layer_map"):
        ckpt.load_weights(gpt(n_layer=6), tmp_path / "m.safetensors")
