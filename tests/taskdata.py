"""Tiny local task files in the Hub datasets' own schemas (hellaswag, ai2_arc, piqa, winogrande,
lambada_openai), deterministic, for tests and benchmarks: what ``--tasks NAME=FILE`` reads."""

from __future__ import annotations

import json
import random
from pathlib import Path

WORDS = ("the cat sat on a mat and then it ran to the door where water was cold so we "
         "opened windows because light came in naïve café Straße over hills").split()


def _phrase(rng: random.Random, lo: int = 2, hi: int = 7) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))


def hellaswag_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [{"ind": i, "activity_label": _phrase(rng, 1, 2).title(), "ctx_a": _phrase(rng) + ".",
             "ctx_b": _phrase(rng, 1, 3), "ctx": "", "split": "val", "split_type": "indomain",
             "source_id": f"s{i}", "endings": [_phrase(rng, 1, 5) + "." for _ in range(4)],
             "label": str(rng.randrange(4))} for i in range(n)]


def arc_rows(n: int, seed: int = 1) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        k = rng.choice([3, 4, 5])
        labels = list("ABCDE"[:k]) if rng.random() < 0.8 else [str(j + 1) for j in range(k)]
        rows.append({"id": f"q{i}", "question": _phrase(rng, 4, 9).capitalize() + "?",
                     "choices": {"text": [_phrase(rng, 1, 5) for _ in range(k)], "label": labels},
                     "answerKey": rng.choice(labels)})
    return rows


def piqa_rows(n: int, seed: int = 2) -> list[dict]:
    rng = random.Random(seed)
    return [{"goal": _phrase(rng, 3, 8), "sol1": _phrase(rng, 2, 6), "sol2": _phrase(rng, 2, 6),
             "label": rng.randrange(2)} for _ in range(n)]


def winogrande_rows(n: int, seed: int = 3) -> list[dict]:
    rng = random.Random(seed)
    return [{"sentence": f"{_phrase(rng, 2, 6).capitalize()} _ {_phrase(rng, 2, 6)}.",
             "option1": _phrase(rng, 1, 2), "option2": _phrase(rng, 1, 2),
             "answer": rng.choice(["1", "2"])} for _ in range(n)]


def lambada_rows(n: int, seed: int = 4) -> list[dict]:
    rng = random.Random(seed)
    return [{"text": _phrase(rng, 6, 14).capitalize() + " " + rng.choice(WORDS)} for _ in range(n)]


ROWS = {"hellaswag": hellaswag_rows, "arc_easy": arc_rows, "arc_challenge": arc_rows,
        "piqa": piqa_rows, "winogrande": winogrande_rows, "lambada_openai": lambada_rows}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                    encoding="utf-8")
    return path


def write_task(root: Path, task: str, n: int = 24) -> Path:
    return write_jsonl(root / f"{task}.jsonl", ROWS[task](n))
