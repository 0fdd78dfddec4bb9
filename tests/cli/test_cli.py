"""The tinylm command: subcommands, presets by name from any directory, one error map."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from helpers import quiet_env, write_corpus
from tinylm.cli import build_parser, error_exit, main
from tinylm.sharing.tying import TieError
from tinylm.train.config import ConfigError
from tinylm.train.step import TrainingDiverged

TINYLM = Path(sys.executable).parent / "tinylm"  # the console script pip installed


def test_every_subcommand_is_there():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert set(sub.choices) == {"train", "prepare", "tokenizer", "evaluate", "generate", "student",
                                  "convert", "pack", "verify", "report"}


def test_errors_map_to_one_line_and_an_exit_status(capsys):
    assert error_exit(ConfigError("x.yaml: unknown key 'a'")) == 2
    assert error_exit(TrainingDiverged("loss is nan")) == 1
    assert error_exit(TieError("broken")) == 1
    assert error_exit(KeyError("a bug")) is None  # not an input error: the traceback stays
    assert capsys.readouterr().err.splitlines() == [
        "error: x.yaml: unknown key 'a'", "error: TrainingDiverged: loss is nan",
        "error: TieError: broken"]


@pytest.mark.parametrize("argv, message", [
    (["frobnicate"], "error: argument COMMAND: invalid choice: 'frobnicate'"),
    (["train", "no-such-preset"], "error: no-such-preset: config file not found, and no preset"),
    (["prepare", "optim.lr=1"], "error: override 'optim.lr=1': only data.* keys apply here"),
    (["train", "model.n_layr=2"], "error: override 'model.n_layr=2': unknown key 'model.n_layr' "
                                  "(did you mean 'n_layer'?)"),
])
def test_bad_usage_is_one_line_exit_2(argv, message, capsys):
    try:
        status = main(argv)
    except SystemExit as e:  # argparse's own errors exit from inside parse_args
        status = e.code
    err = capsys.readouterr().err
    assert status == 2 and err.startswith(message) and err.count("\n") == 1, err


@pytest.mark.slow
def test_console_script_runs_a_preset_by_name_from_another_directory(tmp_path):
    """`tinylm prepare tiny` and `tinylm train tiny` from a directory with no configs/ in it."""
    corpus = write_corpus(tmp_path / "corpus.txt", 60_000)
    data = [f"data.source={corpus}", f"data.dir={tmp_path / 'data'}", "data.vocab_size=300"]
    prep = subprocess.run([str(TINYLM), "prepare", "tiny", *data], capture_output=True, text=True,
                          cwd=tmp_path, env=quiet_env(tmp_path), timeout=300)
    assert prep.returncode == 0, prep.stderr[-2000:]
    assert "vocab 300" in prep.stdout and "bytes/token" in prep.stdout
    run = subprocess.run([str(TINYLM), "train", "tiny", *data, "optim.max_steps=3",
                          "run_dir=run", "log.wandb=disabled"], capture_output=True, text=True,
                         cwd=tmp_path, env=quiet_env(tmp_path), timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert (tmp_path / "run" / "checkpoints" / "step-3" / "model.safetensors").is_file()
    assert len(list((tmp_path / "data").glob("*/manifest.json"))) == 1  # train reused the prepare


def test_building_the_parser_imports_no_torch_and_packs_choices_match_the_quantizer():
    import subprocess
    import sys

    from tinylm.cli import pack
    from tinylm.model import quant

    assert (pack.BITS, pack.CLIPS) == (quant.BITS, quant.CLIPS)
    code = "import sys; from tinylm.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr[-2000:]
