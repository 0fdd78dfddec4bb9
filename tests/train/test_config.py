"""Config: YAML + dotted overrides, validated; mistakes are named, with the closest valid key."""

import pytest

from tinylm.train.config import ConfigError, load_config, save_config

PRESETS = ["configs/tiny.yaml", "configs/default.yaml", "configs/shakespeare.yaml",
           "configs/gpt2-small.yaml", "configs/fast-cpu.yaml", "configs/fast-cpu-100s.yaml"]


@pytest.mark.parametrize("path", PRESETS)
def test_presets_load(path):
    cfg = load_config(path)
    assert cfg.model.n_layer > 0 and cfg.optim.max_steps > 0


def test_overrides_are_typed_and_applied():
    cfg = load_config("configs/tiny.yaml", ["model.n_layer=3", "optim.lr=0.01", "run_dir=/tmp/x",
                                            "data.val_source=null"])
    assert cfg.model.n_layer == 3 and cfg.optim.lr == 0.01 and cfg.run_dir == "/tmp/x"
    assert cfg.data.val_source is None


def test_bare_no_means_no_mixed_precision(tmp_path):
    """YAML reads an unquoted `no` as false; `optim.mixed_precision=no` must still mean "no"."""
    assert load_config("configs/tiny.yaml", ["optim.mixed_precision=no"]).optim.mixed_precision == "no"
    f = tmp_path / "c.yaml"
    f.write_text("optim:\n  mixed_precision: no\n")
    assert load_config(f).optim.mixed_precision == "no"


def test_default_config_when_no_path():
    assert load_config(None).run_dir == "runs/default"


@pytest.mark.parametrize("override, message", [
    ("model.n_layr=3", "unknown key 'model.n_layr' (did you mean 'n_layer'?)"),
    ("optim.lrr=1", "unknown key 'optim.lrr' (did you mean 'lr'?)"),
    ("modle.n_layer=3", "unknown key 'modle' (did you mean 'model'?)"),
    ("model.n_layer=three", "bad value for 'model.n_layer'"),
    ("model.n_layer", "expected key=value"),
    ("model.n_embd=31", "n_embd=31 is not divisible by n_head=2"),
    ("optim.adamw=fast", "optim.adamw='fast': expected one of fused, foreach, loop"),
    ("optim.schedule=linear", "optim.schedule='linear': expected one of cosine, wsd"),
    ("optim.mixed_precision=fp8", "optim.mixed_precision='fp8': expected one of auto, no, bf16, fp16"),
])
def test_mistakes_are_named(override, message):
    with pytest.raises(ConfigError) as e:
        load_config("configs/tiny.yaml", [override])
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_unknown_key_in_file_names_file_and_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  batch_sise: 4\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown key 'optim.batch_sise' \(did you mean 'batch_size'\?\)"):
        load_config(bad)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "broken.yaml").write_text("model:\n  n_layer: 2\n  n_head: [unclosed\n")
    with pytest.raises(ConfigError, match=r"broken.yaml: not valid YAML at line 4, column 1: "):
        load_config(tmp_path / "broken.yaml")


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config("configs/tiny.yaml", ["model.n_layer=5"])
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg


@pytest.mark.parametrize("override, message", [
    ("optim.batch_size=0", "override 'optim.batch_size=0': optim.batch_size=0: expected >= 1"),
    ("optim.lr=-1", "override 'optim.lr=-1': optim.lr=-1.0: expected a positive learning rate"),
    ("optim.max_steps=0", "override 'optim.max_steps=0': optim.max_steps=0: expected >= 1"),
    ("model.block_size=0", "override 'model.block_size=0': model.block_size=0 must be positive"),
    ("eval.batch_size=0", "override 'eval.batch_size=0': eval.batch_size=0: expected >= 1"),
    ("log.interval=0", "override 'log.interval=0': log.interval=0: expected >= 1"),
    ("checkpoint.keep_last=-1", "override 'checkpoint.keep_last=-1': checkpoint.keep_last=-1: "
                                "expected >= 0 (0 keeps every checkpoint)"),
])
def test_every_value_is_validated_and_the_override_named(override, message):
    """Caught at load time, before anything is written; the override at fault is named, not
    the config file (a value the file itself gets wrong names the file)."""
    with pytest.raises(ConfigError) as e:
        load_config("configs/tiny.yaml", ["model.n_layer=3", override])
    assert str(e.value) == message


def test_a_bad_value_in_the_file_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  grad_accum: 0\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: optim.grad_accum=0: expected >= 1"):
        load_config(bad, ["model.n_layer=3"])
