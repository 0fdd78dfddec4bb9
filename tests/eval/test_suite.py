"""Tasks on a checkpoint (``tinylm evaluate --tasks``), with 1 and 2 real processes giving
identical numbers; tasks inside a training run (metrics.jsonl, the console, loss.png, training
itself unchanged); the CLI's refusals (exit 2, nothing written); and the report card."""

from __future__ import annotations

import json
import re

import pytest

from helpers import REPO, accelerate_2proc, tiny_overrides, world_size, write_corpus
from taskdata import write_task
from tinylm.cli import main
from tinylm.train.config import load_config
from tinylm.train.metrics import read_metrics
from tinylm.train.trainer import train

pytestmark = pytest.mark.usefixtures("one_thread")
SCRIPT = REPO / "scripts" / "evaluate.py"
NAMES = ["hellaswag", "arc_easy", "winogrande", "lambada_openai"]


@pytest.fixture(scope="module")
def task_arg(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("tasks")
    return ",".join(f"{t}={write_task(root, t, 21)}" for t in NAMES)


@pytest.mark.slow
def test_one_and_two_processes_give_identical_numbers(tiny_run, task_arg, tmp_path):
    ckpt = str(tiny_run / "checkpoints" / "step-10")
    args = [ckpt, "--tasks", task_arg, "--num-fewshot", "1", "--batch-size", "5"]  # 17 batches
    assert main(["evaluate", *args, "--json", str(tmp_path / "one.json")]) == 0
    proc = accelerate_2proc(SCRIPT, [*args, "--json", str(tmp_path / "two.json")], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "1 checkpoint(s) on tasks" in proc.stdout and ", 2 process(es)" in proc.stdout
    one, two = (json.loads((tmp_path / f).read_text()) for f in ("one.json", "two.json"))
    assert (one[0]["num_processes"], two[0]["num_processes"]) == (1, 2)
    assert one[0]["tasks"] == two[0]["tasks"]  # every metric, perplexity's float included
    assert [t["items"] for t in one[0]["tasks"]] == [21] * 4
    assert re.search(r"hellaswag\s+1\s+acc_norm\s+0\.\d{4}\s+0\.\d{4}\s+21", proc.stdout)


def test_bad_task_input_exits_2_with_one_line_and_writes_nothing(tiny_run, task_arg, tmp_path,
                                                                 capsys):
    ckpt = str(tiny_run / "checkpoints" / "step-10")
    out = tmp_path / "out.json"
    piqa = task_arg.split(",")[0].replace("hellaswag=", "piqa=")  # a hellaswag file as piqa
    for bad, message in [(["--tasks", "nosuch"], "task 'nosuch': unknown"),
                         (["--tasks", piqa], "task piqa: "),
                         (["--tasks", "hellaswag"], "task hellaswag: cannot load Rowan/hellaswag"),
                         (["--tasks", task_arg, "--limit", "0"], "limit=0: expected >= 1"),
                         (["--tasks", task_arg, "--num-fewshot", "21"], "num_fewshot=21"),
                         (["--harness", "nosuch_task"], "'nosuch_task': not one of lm-eval's")]:
        assert main(["evaluate", ckpt, *bad, "--json", str(out)]) == 2, bad
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and message in err and "\n" not in err, err
        assert not out.exists()


@pytest.mark.usefixtures("in_process_training")
def test_in_loop_tasks_reach_metrics_and_leave_training_unchanged(task_arg, tmp_path, capsys):
    corpus = write_corpus(tmp_path / "corpus.txt", 60_000)
    extra = write_corpus(tmp_path / "held-out.txt", 5_000)
    base = {"optim.max_steps": 10, "checkpoint.interval": 10}
    off = train(load_config("configs/tiny.yaml", tiny_overrides(tmp_path / "a", corpus, **base)))
    tasks = "[" + task_arg + "]"
    on_cfg = load_config("configs/tiny.yaml", tiny_overrides(
        tmp_path / "b", corpus, **base, **{"eval.tasks": tasks, "eval.task_interval": 5,
                                           "eval.task_limit": 8, "eval.task_fewshot": 1,
                                           "eval.extra_sources": f"[{extra}]",
                                           "log.report": True}))
    on = train(on_cfg)
    losses = [[r["loss"] for r in read_metrics(tmp_path / d / "run" / "metrics.jsonl")
               if r["kind"] == "train"] for d in "ab"]
    assert losses[0] == losses[1] and off["val"] == on["val"]  # not one RNG draw, no change
    records = [r for r in read_metrics(tmp_path / "b" / "run" / "metrics.jsonl")
               if r["kind"] == "tasks"]
    assert [r["step"] for r in records] == [5, 10]  # every task_interval, and the end
    for r in records:
        assert r["hellaswag/items"] == 8 and 0 <= r["hellaswag/acc_norm"] <= 1
        assert r["lambada_openai/perplexity"] > 1 and 0 < r["bpb/held-out"] < 12
    assert records[0]["hellaswag/acc"] in {k / 8 for k in range(9)}
    out = capsys.readouterr().out
    assert "tasks @ step 5: hellaswag/acc " in out and "of training time" in out
    assert on["tasks_seconds"] > 0 and off["tasks_seconds"] == 0
    assert (tmp_path / "b" / "run" / "loss.png").stat().st_size > 0

    # the card, written by the end of training and again by `tinylm report`: the numbers of
    # metrics.jsonl
    at_end = (tmp_path / "b" / "run" / "report.md").read_text()
    assert not (tmp_path / "a" / "run" / "report.md").exists()  # tiny.yaml: log.report false
    assert main(["report", str(tmp_path / "b" / "run")]) == 0
    report = (tmp_path / "b" / "run" / "report.md").read_text()
    assert report == at_end  # same seed, same samples, same numbers
    last_eval = [r for r in read_metrics(tmp_path / "b" / "run" / "metrics.jsonl")
                 if r["kind"] == "eval"][-1]
    assert f"| final val bits/byte | {last_eval['val_bits_per_byte']:.4f} (step 10) |" in report
    assert f"| hellaswag/acc_norm | {records[-1]['hellaswag/acc_norm']:.4f} | 8 |" in report
    assert f"| bpb/held-out | {records[-1]['bpb/held-out']:.4f} |" in report
    assert "| tokens | 2,560 |" in report and "![loss and task scores](loss.png)" in report
    assert report.count("```\nThe") == 1 and "From `step-10`" in report
    assert "## Config" in report and "task_interval: 5" in report


def test_report_refuses_a_directory_that_is_no_run(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "no metrics.jsonl" in capsys.readouterr().err
    assert not (tmp_path / "report.md").exists()


def test_harness_flag_runs_lm_eval_in_memory_and_agrees_with_tasks(tiny_run, task_arg, tmp_path,
                                                                   capsys):
    ckpt = str(tiny_run / "checkpoints" / "step-10")
    piqa_like = [t for t in task_arg.split(",") if t.startswith("arc_easy=")]
    assert main(["evaluate", ckpt, "--harness", piqa_like[0], "--limit", "9",
                 "--json", str(tmp_path / "h.json")]) == 0
    assert "tinylm_local_arc_easy" in capsys.readouterr().out
    (h,) = json.loads((tmp_path / "h.json").read_text())
    assert main(["evaluate", ckpt, "--tasks", piqa_like[0], "--limit", "9",
                 "--json", str(tmp_path / "t.json")]) == 0
    (t,) = json.loads((tmp_path / "t.json").read_text())[0]["tasks"]
    theirs = h["results"]["tinylm_local_arc_easy"]
    assert (theirs["acc,none"], theirs["acc_norm,none"]) == (t["metrics"]["acc"],
                                                             t["metrics"]["acc_norm"])
    assert theirs["acc_stderr,none"] == pytest.approx(t["stderr"]["acc"])


@pytest.mark.slow
def test_in_loop_tasks_under_two_fsdp2_processes(task_arg, tmp_path):
    """Every rank runs the same number of forwards (FSDP2 all-gathers in each): no hang, and
    the scores reach metrics.jsonl once per due step."""
    corpus = write_corpus(tmp_path / "corpus.txt", 60_000)
    args = ["configs/tiny.yaml", *tiny_overrides(tmp_path, corpus, **{
        "optim.max_steps": 6, "parallel.strategy": "fsdp2", "eval.tasks": f"[{task_arg}]",
        "eval.task_interval": 3, "eval.task_limit": 5, "eval.extra_sources": f"[{corpus}]"})]
    proc = accelerate_2proc(REPO / "scripts" / "train.py", args, tmp_path)
    out = proc.stdout + proc.stderr
    assert world_size(out) == 2 and proc.returncode == 0, out[-3000:]
    records = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["kind"] == "tasks"]
    assert [r["step"] for r in records] == [3, 6]
    assert all(r["arc_easy/items"] == 5 and "bpb/corpus" in r for r in records)
    assert out.count("tasks @ step 3:") == 1  # the main process prints, once
