"""lm-eval-harness on a tinylm checkpoint in memory: no export step, any of lm-eval's tasks.

:class:`TinyLM` is an ``lm_eval.api.model.TemplateLM`` over tinylm's own GPT and tokenizer,
rather than transformers' HFLM over a Llama rebuilt from the checkpoint. Why: the model lm-eval
scores is then the very module tinylm trains and evaluates (its tie, its padded vocab, its
tokenizer.json as trained), with no transformers install and no second copy of the weights;
and ``eval`` stays below ``convert`` in the layers (building a Llama is convert's job). The
token-level scorer is :func:`tinylm.eval.scoring.loglikelihoods`; lm-eval builds every request
(prompts, few-shot, ``_encode_pair``) and every metric itself. The export path
(``tinylm convert to-hf`` + HFLM) stays the independent check: tests/eval/test_harness.py
compares all three item by item.

``name=FILE`` runs lm-eval's own YAML for ``name`` on a local jsonl/parquet file in the Hub
schema (:func:`local_task_yaml`: an ``include`` of the packaged YAML with the dataset swapped),
which is how the tests run lm-eval offline.

lm-eval is an optional dependency (``pip install tinylm[eval]``): this module imports it at the
top and is itself imported only by ``tinylm evaluate --harness``.
"""

from __future__ import annotations

import json
from pathlib import Path

import lm_eval  # optional extra tinylm[eval]; only --harness imports this module
import torch
from lm_eval.api.model import TemplateLM
from lm_eval.tasks import TaskManager
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from tinylm.checkpoint.load import load_for_inference
from tinylm.data.tokenizer import Tokenizer
from tinylm.eval.scoring import loglikelihoods
from tinylm.eval.tasks import LOCAL_SUFFIXES, TaskError
from tinylm.infer.generate import generate


class TinyLM(TemplateLM):
    """lm-eval's model interface over a tinylm GPT (one process, eval mode, no grad)."""

    def __init__(self, model: torch.nn.Module, tokenizer: Tokenizer, batch_size: int = 32,
                 max_gen_toks: int = 256) -> None:
        super().__init__()
        self.model, self.tok = model.eval(), tokenizer
        self.batch_size, self.max_gen_toks = batch_size, max_gen_toks
        self.max_length = model.config.block_size  # rotary positions past it were never trained

    @property
    def eot_token_id(self) -> int:
        return self.tok.eot_id

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        return self.tok.encode(string)  # a tinylm tokenizer adds no special tokens

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs):
        pairs = [(ctx, cont) for _, ctx, cont in requests]
        out = loglikelihoods(self.model, pairs, max_len=self.max_length,
                             batch_size=self.batch_size)
        for (key, _, _), res in zip(requests, out):
            self.cache_hook.add_partial("loglikelihood", key, res)
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Whole-text log-likelihood in disjoint windows of the model's context (HFLM's rule)."""
        results = []
        for (string,) in [r.args for r in requests]:
            windows = [make_disjoint_window(w) for w in get_rolling_token_windows(
                token_list=self.tok_encode(string), prefix_token=self.prefix_token_id,
                max_seq_len=self.max_length, context_len=1)]
            scores = loglikelihoods(self.model, windows, max_len=self.max_length,
                                    batch_size=self.batch_size)
            results.append(sum(s for s, _ in scores))
        return results

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy continuations with tinylm's KV-cached sampler, cut at the ``until`` strings."""
        out = []
        for context, gen_kwargs in [r.args for r in requests]:
            until = gen_kwargs.get("until") or [self.tok.decode([self.eot_token_id])]
            until = [until] if isinstance(until, str) else list(until)
            n = int(gen_kwargs.get("max_gen_toks", self.max_gen_toks))
            text = generate(self.model, self.tok, [context], n, temperature=0.0, stop=until,
                            cuda_graph=False)[0]
            for stop in until:
                text = text.split(stop)[0]
            out.append(text)
        return out


def local_task_yaml(name: str, data_file: str | Path, out_dir: Path) -> str:
    """Write a task YAML that is lm-eval's own ``name`` with its dataset swapped for a local
    file in the same schema; returns the new task's name (``tinylm_local_<name>``)."""
    src = Path(lm_eval.__file__).parent / "tasks"
    matches = [p for p in src.rglob("*.yaml") if _task_name(p) == name]
    if not matches:
        raise TaskError(f"task {name!r}: not one of lm-eval's tasks (for name=FILE)")
    data_file = Path(data_file).resolve()
    if not data_file.is_file() or data_file.suffix not in LOCAL_SUFFIXES:
        raise TaskError(f"task {name}: {data_file}: expected an existing "
                        f"{'/'.join(LOCAL_SUFFIXES)} file")
    task = f"tinylm_local_{name}"
    body = {"include": str(matches[0]), "task": task, "tag": [], "dataset_path":
            LOCAL_SUFFIXES[data_file.suffix], "dataset_name": None,
            "dataset_kwargs": {"data_files": {"eval": str(data_file)}},
            "test_split": "eval", "validation_split": None, "training_split": None,
            "fewshot_split": None}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{task}.yaml").write_text(json.dumps(body, indent=1))  # JSON is YAML
    return task


def _task_name(path: Path) -> str | None:
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("task:"):
            return line.split(":", 1)[1].strip().strip("'\"")
    return None


def task_manager(tasks: list[str], work_dir: Path) -> tuple[list[str], TaskManager]:
    """lm-eval task names for ``tasks`` (``name`` or ``name=FILE``) and a TaskManager that
    knows them all; an unknown name is a :class:`TaskError`."""
    names = []
    for t in tasks:
        name, _, path = t.partition("=")
        names.append(local_task_yaml(name, path, work_dir) if path else name)
    manager = TaskManager(include_path=str(work_dir) if work_dir.is_dir() else None)
    unknown = [n for n in names if n not in manager.all_tasks]
    if unknown:
        raise TaskError(f"task {unknown[0]!r}: not one of lm-eval's tasks")
    return names, manager


def evaluate_lm(lm, tasks: list[str], *, work_dir: Path, limit: int | None = None,
                num_fewshot: int | None = None, log_samples: bool = False) -> dict:
    """lm-eval's ``simple_evaluate`` for any lm-eval model object (TinyLM, HFLM...)."""
    names, manager = task_manager(tasks, work_dir)
    return lm_eval.simple_evaluate(model=lm, tasks=names, task_manager=manager, limit=limit,
                                   num_fewshot=num_fewshot, log_samples=log_samples,
                                   bootstrap_iters=1000)  # stderr: closed form for means


def run_harness(model: torch.nn.Module, tokenizer: Tokenizer, tasks: list[str], *,
                work_dir: Path, batch_size: int = 32, **kwargs) -> dict:
    """lm-eval's harness on the model in memory (see :func:`evaluate_lm` for ``kwargs``)."""
    return evaluate_lm(TinyLM(model, tokenizer, batch_size=batch_size), tasks,
                       work_dir=work_dir, **kwargs)


def harness_on_checkpoint(ckpt: str | Path, tasks: list[str], **kwargs) -> dict:
    """:func:`run_harness` on a checkpoint loaded in memory (CPU, or CUDA when there is one)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, tokenizer, _ = load_for_inference(ckpt, device)
    return run_harness(model, tokenizer, tasks, **kwargs)
