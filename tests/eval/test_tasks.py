"""Task specs and loading: real ``datasets`` loading of local files in the Hub schemas, the
prompts lm-eval builds for each format, seeded few-shot shots, and one-line refusals."""

from __future__ import annotations

import random

import datasets
import pytest
import torch

from taskdata import write_jsonl, write_task
from tinylm.eval.tasks import TASKS, TaskError, choose_rows, load_items, parse_task


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("tasks")
    return {t: write_task(root, t, 12) for t in TASKS}


def test_the_six_specs_ship_with_lm_evals_datasets():
    assert set(TASKS) == {"hellaswag", "arc_easy", "arc_challenge", "piqa", "winogrande",
                          "lambada_openai"}
    assert TASKS["hellaswag"].source == "Rowan/hellaswag"
    assert (TASKS["arc_challenge"].hf_config, TASKS["arc_challenge"].split) == ("ARC-Challenge", "test")


def test_prompts_are_lm_evals(tmp_path):
    hs = write_jsonl(tmp_path / "hs.jsonl", [{
        "activity_label": "Baking cookies", "ctx_a": "A woman puts dough on a tray.",
        "ctx_b": "she", "endings": ["puts it in [title] the oven.", "eats  it."], "label": "0"}])
    (item,) = load_items(parse_task(f"hellaswag={hs}"))
    assert item.contexts[0] == "Baking cookies: A woman puts dough on a tray. She"
    assert item.choices == ["puts it in. the oven.", "eats it."] and item.gold == 0
    assert item.continuations[1] == " eats it."
    arc = write_jsonl(tmp_path / "arc.jsonl", [{"question": "Which is wet?", "answerKey": "3",
        "choices": {"text": ["sand", "rock", "water"], "label": ["1", "2", "3"]}}])
    (item,) = load_items(parse_task(f"arc_easy={arc}"))
    assert (item.contexts[0], item.gold) == ("Question: Which is wet?\nAnswer:", 2)
    wg = write_jsonl(tmp_path / "wg.jsonl", [{"sentence": "Tom gave Ann a book because _ was kind.",
                                              "option1": "Tom", "option2": "Ann", "answer": "1"}])
    (item,) = load_items(parse_task(f"winogrande={wg}"))
    assert item.contexts == ["Tom gave Ann a book because Tom", "Tom gave Ann a book because Ann"]
    assert item.continuations == [" was kind."] * 2 and item.gold == 0
    lb = write_jsonl(tmp_path / "lb.jsonl", [{"text": "He opened the door"}])
    (item,) = load_items(parse_task(f"lambada_openai={lb}"))
    assert (item.contexts, item.continuations) == (["He opened the"], [" door"])


def test_every_format_loads_from_jsonl_and_parquet(files, tmp_path):
    for name, path in files.items():
        items = load_items(parse_task(f"{name}={path}"))
        assert len(items) == 12 and [i.index for i in items] == list(range(12))
        pq = tmp_path / f"{name}.parquet"
        datasets.load_dataset("json", data_files=str(path), split="train").to_parquet(str(pq))
        assert [i.contexts for i in load_items(parse_task(f"{name}={pq}"))] == \
            [i.contexts for i in items]


def test_shots_are_seeded_per_item_and_never_the_item(files):
    spec = parse_task(f"piqa={files['piqa']}", num_fewshot=3)
    a, b = load_items(spec, seed=1), load_items(spec, seed=1)
    assert [i.contexts for i in a] == [i.contexts for i in b]
    assert [i.contexts for i in a] != [i.contexts for i in load_items(spec, seed=2)]
    sub = load_items(spec, limit=4, seed=1, subset_seed=7)  # an item's shots do not depend on limit
    assert all(s.contexts == a[s.index].contexts for s in sub)
    for item in a:
        shots = item.contexts[0].split("\n\n")
        assert len(shots) == 4 and item.contexts[0].endswith(shots[-1])
        own = load_items(parse_task(f"piqa={files['piqa']}"))[item.index].contexts[0]
        assert own not in shots[:-1] and shots[-1] == own


def test_loading_draws_nothing_from_the_global_rngs(files):
    random.seed(5)
    torch.manual_seed(5)
    load_items(parse_task(f"hellaswag={files['hellaswag']}", 2), limit=5, subset_seed=3)
    assert random.random() == random.Random(5).random()
    torch.manual_seed(5)
    expected = torch.rand(1).item()
    torch.manual_seed(5)
    load_items(parse_task(f"hellaswag={files['hellaswag']}", 2), limit=5, subset_seed=3)
    assert torch.rand(1).item() == expected


def test_limit_takes_the_first_rows_or_a_seeded_subset():
    assert choose_rows(10, 3, None) == [0, 1, 2]
    fixed = choose_rows(10, 3, 4)
    assert fixed == choose_rows(10, 3, 4) == sorted(fixed) and len(set(fixed)) == 3
    assert choose_rows(10, 50, None) == list(range(10))


@pytest.mark.parametrize("arg,kwargs,message", [
    ("nosuch", {}, r"task 'nosuch': unknown; expected one of hellaswag"),
    ("piqa", {"limit": 0}, r"limit=0: expected >= 1"),
    ("piqa", {"num_fewshot": 12}, r"task piqa: num_fewshot=12 but the few-shot pool has 11"),
    ("missing", {}, r"task hellaswag: .*nope.jsonl: expected an existing"),
    ("hub", {}, r"task hellaswag: cannot load Rowan/hellaswag \(default, validation\)"),
    ("wrongschema", {}, r"task hellaswag: .*piqa.jsonl: field 'activity_label' missing"),
])
def test_bad_input_is_one_line_naming_the_task(files, tmp_path, arg, kwargs, message):
    spec_arg = {"piqa": f"piqa={files['piqa']}", "missing": f"hellaswag={tmp_path / 'nope.jsonl'}",
                "hub": "hellaswag", "wrongschema": f"hellaswag={files['piqa']}"}.get(arg, arg)
    with pytest.raises(TaskError, match=message) as e:
        spec = parse_task(spec_arg, kwargs.get("num_fewshot"))
        load_items(spec, kwargs.get("limit"))
    assert "\n" not in str(e.value)


def test_a_row_with_a_bad_value_names_the_row(tmp_path):
    bad = write_jsonl(tmp_path / "arc.jsonl", [{"question": "q?", "answerKey": "Z",
                                                "choices": {"text": ["a"], "label": ["A"]}}])
    with pytest.raises(TaskError, match=r"task arc_easy: .*arc.jsonl: row 0: .*'Z'"):
        load_items(parse_task(f"arc_easy={bad}"))
