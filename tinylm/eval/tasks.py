"""Downstream tasks: small specs, loaded through ``datasets``, turned into scoring items the
way lm-eval-harness builds its requests.

A task is a :class:`TaskSpec`: a source (a Hub dataset name, or a local jsonl/parquet file in
the same schema), the split, the fields a row must have, the format and a default shot count.
``TASKS`` ships hellaswag, arc_easy, arc_challenge, piqa, winogrande and lambada_openai with
lm-eval's own prompts (its task YAMLs and ``utils.py``, restated), so scores are comparable with
the numbers the field reports.

    --tasks hellaswag                      the Hub dataset (needs network once, then cached)
    --tasks hellaswag=path/to/val.jsonl    a local file in the Hub dataset's schema

Formats:
- ``multiple_choice``: one context, N continuations (``target_delimiter + choice``), each scored
  by summed log-likelihood; WinoGrande is lm-eval's "partial" variant (N contexts, one
  continuation).
- ``cloze``: one context and its target continuation (LAMBADA's last word); correct when every
  target token is the greedy choice (lm-eval's ``acc`` on a loglikelihood task).

Few-shot: ``num_fewshot`` shots are drawn per item with ``random.Random((seed, task, item))``:
the same shots for an item whatever the process count or ``limit``, and no draw from the
global RNG (training's stays untouched). Shots come from the spec's ``fewshot_split`` (Hub) or,
for a local file, from the same file without the item itself. Each shot is written as its
context, the delimiter and its gold continuation, joined with ``"\\n\\n"`` (lm-eval's
``fewshot_delimiter``): the prompts are lm-eval's, shot for shot (tested), though lm-eval's
sequential sampler picks other shots.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import datasets


class TaskError(ValueError):
    """A task that cannot be built: one line naming the task and the field or file."""


@dataclass(frozen=True)
class TaskSpec:
    name: str
    format: str  # "multiple_choice" or "cloze"
    source: str  # a Hub dataset name, or a local .jsonl / .json / .parquet file
    fields: tuple[str, ...]  # what every row must have (checked before scoring)
    builder: str  # how a row becomes (contexts, continuations, gold): a key of BUILDERS
    hf_config: str | None = None
    split: str = "validation"
    fewshot_split: str | None = None  # None: shots from the scored split, never the item itself
    num_fewshot: int = 0  # lm-eval's default for all six is 0-shot
    template: str = "{question}"  # the context, from the row's fields (str.format)
    metric: str = "acc_norm"  # the one a table row shows: the metric the field quotes


@dataclass
class Item:
    """One scored example: every (context, continuation) pair and the gold pair's index.
    ``choices`` are the strings acc_norm divides by (lm-eval: ``doc_to_choice``)."""

    index: int  # row number in the source: the few-shot seed and the order of results
    contexts: list[str]
    continuations: list[str]
    gold: int
    choices: list[str] = field(default_factory=list)


def _hellaswag_clean(text: str) -> str:
    """lm-eval's hellaswag ``preprocess``: WikiHow's bracket artifacts out."""
    text = text.strip().replace(" [title]", ". ")
    return re.sub("\\[.*?\\]", "", text).replace("  ", " ")


def _hellaswag(row: dict, spec: TaskSpec) -> tuple[str, list[str], int]:
    ctx = row["ctx_a"] + " " + row["ctx_b"].capitalize()
    return (_hellaswag_clean(row["activity_label"] + ": " + ctx),
            [_hellaswag_clean(e) for e in row["endings"]], int(row["label"]))


def _arc(row: dict, spec: TaskSpec) -> tuple[str, list[str], int]:
    labels = list(row["choices"]["label"])
    if row["answerKey"] not in labels:
        raise KeyError(f"answerKey {row['answerKey']!r} not in choices.label {labels}")
    return (spec.template.format(**row), list(row["choices"]["text"]),
            labels.index(row["answerKey"]))


def _piqa(row: dict, spec: TaskSpec) -> tuple[str, list[str], int]:
    return spec.template.format(**row), [row["sol1"], row["sol2"]], int(row["label"])


def _winogrande(row: dict, spec: TaskSpec) -> tuple[list[str], str, int]:
    """lm-eval's partial evaluation: the sentence up to the blank with each option is a
    context; the rest of the sentence is the one continuation."""
    s = row["sentence"]
    i = s.index("_")
    return ([s[:i] + row["option1"], s[:i] + row["option2"]], s[i + 1:].strip(),
            {"1": 0, "2": 1}[str(row["answer"])])


def _lambada(row: dict, spec: TaskSpec) -> tuple[str, str]:
    head, _, last = row["text"].rpartition(" ")
    return head, " " + last


def build_item(row: dict, spec: TaskSpec, index: int, shots: list[dict]) -> Item:
    """The item for ``row`` with ``shots`` (rows) written in front of every context."""
    prefix = "".join(_shot_text(s, spec) + "\n\n" for s in shots)
    if spec.builder == "winogrande":
        contexts, cont, gold = _winogrande(row, spec)
        return Item(index, [prefix + c for c in contexts], [" " + cont] * 2, gold, contexts)
    if spec.format == "cloze":
        context, target = _lambada(row, spec)
        return Item(index, [prefix + context], [target], 0, [target])
    context, choices, gold = BUILDERS[spec.builder](row, spec)
    if not 0 <= gold < len(choices):
        raise KeyError(f"gold index {gold} outside the {len(choices)} choices")
    return Item(index, [prefix + context] * len(choices), [" " + c for c in choices], gold,
                choices)


def _shot_text(row: dict, spec: TaskSpec) -> str:
    """A solved example: its context, the delimiter and its gold continuation. A cloze target
    carries its own leading space and lm-eval still adds its " " delimiter in a shot, so a
    LAMBADA shot has two spaces before its last word: kept, to write lm-eval's prompts."""
    item = build_item(row, spec, -1, [])
    gap = " " if spec.format == "cloze" else ""
    return item.contexts[item.gold] + gap + item.continuations[item.gold]


BUILDERS = {"hellaswag": _hellaswag, "arc": _arc, "piqa": _piqa, "winogrande": _winogrande,
            "lambada": _lambada}

_QA = "Question: {question}\nAnswer:"
TASKS: dict[str, TaskSpec] = {s.name: s for s in [
    TaskSpec("hellaswag", "multiple_choice", "Rowan/hellaswag",
             ("activity_label", "ctx_a", "ctx_b", "endings", "label"), "hellaswag",
             fewshot_split="train"),
    TaskSpec("arc_easy", "multiple_choice", "allenai/ai2_arc",
             ("question", "choices", "answerKey"), "arc", hf_config="ARC-Easy", split="test",
             fewshot_split="train", template=_QA, metric="acc"),
    TaskSpec("arc_challenge", "multiple_choice", "allenai/ai2_arc",
             ("question", "choices", "answerKey"), "arc", hf_config="ARC-Challenge",
             split="test", fewshot_split="train", template=_QA),
    TaskSpec("piqa", "multiple_choice", "baber/piqa", ("goal", "sol1", "sol2", "label"), "piqa",
             fewshot_split="train", template="Question: {goal}\nAnswer:"),
    TaskSpec("winogrande", "multiple_choice", "allenai/winogrande",
             ("sentence", "option1", "option2", "answer"), "winogrande",
             hf_config="winogrande_xl", fewshot_split="train", metric="acc"),
    TaskSpec("lambada_openai", "cloze", "EleutherAI/lambada_openai", ("text",), "lambada",
             hf_config="default", split="test", metric="acc"),
]}

LOCAL_SUFFIXES = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}


def parse_task(arg: str, num_fewshot: int | None = None) -> TaskSpec:
    """``name`` or ``name=LOCAL_FILE`` -> its spec; ``num_fewshot`` overrides the spec's."""
    name, _, path = arg.strip().partition("=")
    if name not in TASKS:
        raise TaskError(f"task {name!r}: unknown; expected one of {', '.join(TASKS)}")
    spec = TASKS[name]
    if path:
        spec = replace(spec, source=path, fewshot_split=None)
    if num_fewshot is not None:
        if num_fewshot < 0:
            raise TaskError(f"task {name}: num_fewshot={num_fewshot}: expected >= 0")
        spec = replace(spec, num_fewshot=num_fewshot)
    return spec


def _is_local(source: str) -> bool:
    return Path(source).suffix in LOCAL_SUFFIXES or Path(source).exists()


def load_rows(spec: TaskSpec, split: str) -> datasets.Dataset:
    """The rows of ``split`` (a local file has one split: itself), fields checked."""
    where = spec.source
    try:
        if _is_local(spec.source):
            path = Path(spec.source)
            if not path.is_file() or path.suffix not in LOCAL_SUFFIXES:
                raise TaskError(f"task {spec.name}: {path}: expected an existing "
                                f"{'/'.join(LOCAL_SUFFIXES)} file")
            ds = datasets.load_dataset(LOCAL_SUFFIXES[path.suffix], data_files=str(path),
                                       split="train")
        else:
            where = f"{spec.source} ({spec.hf_config or 'default'}, {split})"
            ds = datasets.load_dataset(spec.source, spec.hf_config, split=split)
    except TaskError:
        raise
    except Exception as e:  # noqa: BLE001 - offline Hub, a bad file...: one line naming both
        text = str(e).splitlines()[0] if str(e) else ""
        raise TaskError(f"task {spec.name}: cannot load {where}: {type(e).__name__}: {text}"
                        ) from None
    missing = [f for f in spec.fields if f not in ds.column_names]
    if missing:
        raise TaskError(f"task {spec.name}: {where}: field {missing[0]!r} missing (expected "
                        f"{', '.join(spec.fields)}; has {', '.join(ds.column_names)})")
    if len(ds) == 0:
        raise TaskError(f"task {spec.name}: {where}: no rows")
    return ds


def choose_rows(n: int, limit: int | None, seed: int | None) -> list[int]:
    """Which of ``n`` rows to score: all, the first ``limit`` (``seed`` None: lm-eval's
    ``--limit``), or ``limit`` rows fixed by ``seed`` (the in-loop subset), in source order."""
    if limit is not None and limit < 1:
        raise TaskError(f"limit={limit}: expected >= 1 (leave it out for every item)")
    if limit is None or limit >= n:
        return list(range(n))
    if seed is None:
        return list(range(limit))
    return sorted(random.Random(seed).sample(range(n), limit))


def load_items(spec: TaskSpec, limit: int | None = None, seed: int = 1234,
               subset_seed: int | None = None) -> list[Item]:
    """The scoring items of ``spec``: rows chosen by :func:`choose_rows`, shots drawn per item
    from a local ``random.Random`` (never the global RNG)."""
    rows = load_rows(spec, spec.split)
    pool = load_rows(spec, spec.fewshot_split) if spec.fewshot_split else rows
    k, same = spec.num_fewshot, spec.fewshot_split is None
    if k > len(pool) - same:
        raise TaskError(f"task {spec.name}: num_fewshot={k} but the few-shot pool has "
                        f"{len(pool) - same} example(s)")
    items = []
    for i in choose_rows(len(rows), limit, subset_seed):
        row = rows[i]
        shots = []
        if k:
            picks = random.Random(f"{seed}:{spec.name}:{i}").sample(range(len(pool)), k + same)
            shots = [pool[j] for j in picks if not (same and j == i)][:k]
        try:
            items.append(build_item(row, spec, i, shots))
        except (KeyError, ValueError, TypeError) as e:
            raise TaskError(f"task {spec.name}: {spec.source}: row {i}: {e}") from None
    return items
