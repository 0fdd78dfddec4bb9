"""Config: YAML + dotted overrides, validated; mistakes are named, with the closest valid key."""

import pytest

from tinylm.config import ConfigError, load_config, save_config

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
    (tmp_path / "broken.yaml").write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "broken.yaml")


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config("configs/tiny.yaml", ["model.n_layer=5"])
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg
