"""Agreement with lm-eval-harness, item by item, offline: tinylm's own scorer, lm-eval's harness
on the checkpoint in memory (TinyLM) and lm-eval's HFLM on a transformers model directory give
the same ``acc`` and ``acc_norm`` on every item of local task files in the Hub schemas (lm-eval's
own task YAMLs, their dataset swapped for the file). Two models: the tiny trained checkpoint
(HFLM on its ``tinylm convert to-hf`` export) and an imported random HF Llama (HFLM on the
original directory)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lm_eval.models.huggingface import HFLM
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from conftest import corpus_text
from taskdata import write_task
from tinylm.checkpoint.load import load_for_inference
from tinylm.convert.hf import export_to_hf, import_from_hf
from tinylm.data.tokenizer import EOT, Tokenizer
from tinylm.eval.harness import TinyLM, evaluate_lm, local_task_yaml
from tinylm.eval.scoring import score_tasks
from tinylm.eval.tasks import TaskError, load_items, parse_task

pytestmark = pytest.mark.usefixtures("one_thread")
TASKS = ["hellaswag", "arc_easy", "piqa", "winogrande", "lambada_openai"]


@pytest.fixture(scope="module")
def task_files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tasks")
    return {t: write_task(root, t, 20) for t in TASKS}


def ours(ckpt: Path, files: dict[str, Path]) -> dict[str, list[dict]]:
    model, tok, _ = load_for_inference(ckpt)
    specs = [parse_task(f"{t}={f}") for t, f in files.items()]
    results = score_tasks(model, tok, [(s, load_items(s)) for s in specs],
                          max_len=model.config.block_size, batch_size=7)
    return {r.task: r.per_item for r in results}


def harness(lm, files: dict[str, Path], work: Path) -> dict[str, list[dict]]:
    out = evaluate_lm(lm, [f"{t}={f}" for t, f in files.items()], work_dir=work, log_samples=True)
    return {t: sorted(out["samples"][f"tinylm_local_{t}"], key=lambda s: s["doc_id"])
            for t in files}


def assert_agree(a: dict[str, list[dict]], b: dict[str, list[dict]], atol: float) -> int:
    """Every item's acc and acc_norm equal (acc only where lm-eval reports only acc), and the
    summed log-likelihoods within ``atol``; returns the number of items compared."""
    n = 0
    for task, items in a.items():
        assert len(items) == len(b[task]) == 20, task
        for mine, theirs in zip(items, b[task]):
            assert mine["index"] == theirs["doc_id"]
            for metric in ("acc", "acc_norm"):
                if metric in theirs:
                    assert mine[metric] == theirs[metric], (task, mine["index"], metric)
            lls = mine["lls"] if "lls" in mine else [mine["ll"]]
            assert lls == pytest.approx([r[0] for r in theirs["filtered_resps"]], abs=atol)
            n += 1
    return n


def test_tiny_checkpoint_agrees_with_lm_eval_in_memory_and_on_the_export(tiny_run, task_files,
                                                                         tmp_path):
    ckpt = tiny_run / "checkpoints" / "step-10"
    mine = ours(ckpt, task_files)
    model, tok, _ = load_for_inference(ckpt)
    in_memory = harness(TinyLM(model, tok, batch_size=5), task_files, tmp_path / "y1")
    assert assert_agree(mine, in_memory, atol=1e-4) == 100
    export = export_to_hf(ckpt, tmp_path / "hf")
    hf = harness(HFLM(pretrained=str(export), dtype="float32", batch_size=4, device="cpu"),
                 task_files, tmp_path / "y2")
    assert assert_agree(mine, hf, atol=1e-3) == 100
    # not a test that cannot fail: the models give the items different scores
    assert len({round(i["lls"][0], 3) for i in mine["hellaswag"]}) > 10


def test_imported_hf_llama_agrees_with_lm_eval_on_the_original(task_files, tmp_path):
    tok_file = tmp_path / "tokenizer.json"
    Tokenizer.train([corpus_text(40_000, seed=5)], vocab_size=300).save(tok_file)
    tok = Tokenizer.load(tok_file)
    torch.manual_seed(0)
    llama = LlamaForCausalLM(LlamaConfig(
        vocab_size=tok.vocab_size, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=96,
        tie_word_embeddings=True, eos_token_id=tok.eot_id, bos_token_id=tok.eot_id)).eval()
    with torch.no_grad():  # peaked log-likelihoods: items far from ties
        for p in llama.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.1)
    llama.save_pretrained(tmp_path / "llama")
    PreTrainedTokenizerFast(tokenizer_file=str(tok_file), eos_token=EOT,
                            bos_token=EOT).save_pretrained(tmp_path / "llama")
    ckpt = import_from_hf(tmp_path / "llama", tmp_path / "imported")
    mine = ours(ckpt, task_files)
    model, tok, _ = load_for_inference(ckpt)
    assert assert_agree(mine, harness(TinyLM(model, tok), task_files, tmp_path / "y1"), 1e-4) == 100
    hf = HFLM(pretrained=str(tmp_path / "llama"), dtype="float32", batch_size=4, device="cpu")
    assert assert_agree(mine, harness(hf, task_files, tmp_path / "y2"), atol=1e-3) == 100


def test_local_task_yaml_refuses_unknown_tasks_and_missing_files(tmp_path, task_files):
    with pytest.raises(TaskError, match="'nosuch'"):
        local_task_yaml("nosuch", task_files["piqa"], tmp_path)
    with pytest.raises(TaskError, match="missing.jsonl"):
        local_task_yaml("piqa", tmp_path / "missing.jsonl", tmp_path)


def test_few_shot_prompts_are_lm_evals_shot_for_shot(tiny_run, task_files, tmp_path):
    """lm-eval draws its shots with its own sequential RNG, so which shots an item gets differs
    from tinylm's per-item seed; how a prompt is written must not. For each item lm-eval
    scored with 2 shots, rebuild the prompt with tinylm's builder from the same rows: the text
    is identical, and so are the scores (left-truncated: the contexts pass block_size 32)."""
    from tinylm.eval.tasks import _shot_text, build_item, load_rows

    ckpt = tiny_run / "checkpoints" / "step-10"
    model, tok, _ = load_for_inference(ckpt)
    files = dict(task_files)  # all five formats
    out = evaluate_lm(TinyLM(model, tok), [f"{t}={f}" for t, f in files.items()],
                      work_dir=tmp_path / "y", num_fewshot=2, log_samples=True)
    compared = 0
    for task, path in files.items():
        spec = parse_task(f"{task}={path}")
        rows = load_rows(spec, spec.split)
        rendered = {_shot_text(rows[j], spec): j for j in range(len(rows))}
        for sample in out["samples"][f"tinylm_local_{task}"]:
            context = sample["arguments"][0][0]
            *shots, _ = context.split("\n\n")
            assert len(shots) == 2 and all(s in rendered for s in shots), (task, context)
            i = sample["doc_id"]
            item = build_item(rows[i], spec, i, [rows[rendered[s]] for s in shots])
            assert [list(a) for a in sample["arguments"]] == \
                [[c, k] for c, k in zip(item.contexts, item.continuations)]
            (res,) = score_tasks(model, tok, [(spec, [item])], max_len=model.config.block_size)
            for metric in ("acc", "acc_norm"):
                if metric in sample:
                    assert res.per_item[0][metric] == sample[metric], (task, i, metric)
            compared += 1
    assert compared == 100
