"""GPTConfig's layer_map: the forms it takes, and one line naming the map for each bad one."""

import subprocess
import sys

import pytest

from helpers import REPO
from tinylm.model.config import GPTConfig, resolve_layer_map
from tinylm.train.config import ConfigError, load_config


@pytest.mark.parametrize("spec, n_layer, depth_map", [
    (None, 3, (0, 1, 2)), ("", 2, (0, 1)),
    ("repeat:2", 4, (0, 0, 1, 1)),  # MobileLLM: each block twice in a row
    ("cycle:3", 6, (0, 1, 2, 0, 1, 2)),  # ALBERT / Universal Transformer
    ([0, 1, 2, 3, 4, 5, 4, 5, 6, 7], 10, (0, 1, 2, 3, 4, 5, 4, 5, 6, 7)),  # golf: 4-5 twice
    ("0, 1, 1, 2", 4, (0, 1, 1, 2)), ("[0,0,0]", 3, (0, 0, 0)),
])
def test_the_map_forms(spec, n_layer, depth_map):
    cfg = GPTConfig(n_layer=n_layer, layer_map=spec)
    assert cfg.depth_map == depth_map and resolve_layer_map(spec, n_layer) == depth_map
    assert cfg.n_unique_layers == max(depth_map) + 1


@pytest.mark.parametrize("spec, n_layer, message", [
    ([], 4, "is empty"),
    ([0, 1], 4, r"runs 2 blocks but n_layer=4 \(n_layer is the depth"),
    ([0, 1, 3, 1], 4, "block 2 is never run; number the unique blocks 0..K-1"),
    ([0, -1, 1, 2], 4, "a block index is negative"),
    ("repeat:3", 4, "repeat:K needs K dividing n_layer=4"),
    ("cycle:5", 4, "cycle:K needs 1 <= K <= n_layer=4"),
    ("twice", 4, "expected repeat:K, cycle:K or a list of block indices"),
])
def test_a_bad_map_is_one_line_naming_it(spec, n_layer, message):
    with pytest.raises(ValueError, match=f"layer_map={spec!r}".replace("[", r"\[").replace("]", r"\]")
                       .replace("(", r"\(").replace(")", r"\)") + ": " + message):
        GPTConfig(n_layer=n_layer, layer_map=spec)


def test_overrides_take_a_spec_or_a_list_and_a_bad_one_names_the_key():
    assert load_config("tiny", ["model.n_layer=4", "model.layer_map=repeat:2"]).model.depth_map == (0, 0, 1, 1)
    cfg = load_config("tiny", ["model.n_layer=4", "model.layer_map=[0,1,0,1]"]).model
    assert cfg.layer_map == [0, 1, 0, 1] and cfg.n_unique_layers == 2
    with pytest.raises(ConfigError, match=r"^override 'model.layer_map=\[0,2\]': model.layer_map=\[0, 2\]: "
                                          r"block 1 is never run"):
        load_config("tiny", ["model.layer_map=[0,2]"])


def test_the_command_exits_2_with_one_line(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "train.py"), "tiny",
                           f"run_dir={tmp_path / 'run'}", "model.layer_map=[0,0,0]"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [
        "error: override 'model.layer_map=[0,0,0]': model.layer_map=[0, 0, 0]: runs 3 blocks but "
        "n_layer=2 (n_layer is the depth: the map names the block run at each depth)"]
    assert not (tmp_path / "run").exists()
