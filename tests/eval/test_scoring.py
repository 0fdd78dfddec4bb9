"""The scorer against numbers worked out by hand: a hand-made bigram model over a byte-level
tokenizer with no merges (one token per UTF-8 byte), whose log-likelihoods are written down in
the test; then batch packing (any batch size gives the same numbers) and the refusals."""

from __future__ import annotations

import math

import pytest
import torch

from tinylm.data.tokenizer import Tokenizer
from tinylm.eval.scoring import encode_pair, loglikelihoods, score_tasks
from tinylm.eval.tasks import TASKS, Item, TaskError

pytestmark = pytest.mark.usefixtures("one_thread")
OTHER = 0.4 / 254  # every byte but ' ', 'a', 'b' in the default row (and end-of-text)


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    t = Tokenizer.train(["abc xyz"], vocab_size=257)  # 256 bytes + end-of-text: no merges
    assert t.vocab_size == 257 and len(t.encode("naïve")) == 6
    return t


class Bigram(torch.nn.Module):
    """logits[t] = log p(next | token t): p(' ')=.2, p('a')=.3, p('b')=.1 after any token,
    except after 'x': p(' ')=.7, p('a')=.1, p('b')=.1 (rest share what is left)."""

    def __init__(self, tok: Tokenizer) -> None:
        super().__init__()
        sp, a, b, x = (tok.encode(c)[0] for c in " abx")
        table = torch.full((257, 257), OTHER, dtype=torch.float64)
        table[:, [sp, a, b]] = torch.tensor([0.2, 0.3, 0.1], dtype=torch.float64)
        table[x] = 0.1 / 254
        table[x, [sp, a, b]] = torch.tensor([0.7, 0.1, 0.1], dtype=torch.float64)
        assert torch.allclose(table.sum(1), torch.ones(257, dtype=torch.float64))
        self.logp = torch.nn.Parameter(table.log().float(), requires_grad=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.logp[idx]


def test_multiple_choice_acc_and_acc_norm_by_hand(tok):
    model, ln = Bigram(tok), math.log
    items = [Item(0, ["Q:"] * 2, [" aa", " b"], 1, ["aa", "b"]),   # ll: -4.017 vs -3.912
             Item(1, ["Q:"] * 2, [" ï", " ab"], 0, ["ï", "ab"])]   # 'ï' is 2 bytes, 1 char
    (res,) = score_tasks(model, tok, [(TASKS["piqa"], items)], max_len=16, batch_size=3)
    first, second = res.per_item
    assert first["lls"] == pytest.approx([ln(.2) + 2 * ln(.3), ln(.2) + ln(.1)], abs=1e-5)
    assert second["lls"] == pytest.approx([ln(.2) + 2 * ln(OTHER), ln(.2) + ln(.3) + ln(.1)],
                                          abs=1e-5)
    # item 0: " b" has the larger sum (acc right), "aa" the larger sum per character
    assert (first["acc"], first["acc_norm"], first["acc_bytes"]) == (1.0, 0.0, 0.0)
    assert (second["acc"], second["acc_norm"], second["acc_bytes"]) == (0.0, 0.0, 0.0)
    assert res.metrics == {"acc": 0.5, "acc_norm": 0.0, "acc_bytes": 0.0}
    assert res.stderr["acc"] == pytest.approx(0.5)  # sample std 0.7071 / sqrt(2)
    assert res.items == 2


def test_acc_bytes_differs_from_acc_norm_by_hand(tok):
    ln = math.log
    # " ï" = ln .2 + 2 ln OTHER = -14.52: per character (1) -14.52, per byte (2) -7.26;
    # " xc" = ln .2 + ln OTHER + ln(.1/254) = -15.90: per character = per byte (2) -7.95
    items = [Item(0, ["Q:"] * 2, [" ï", " xc"], 0, ["ï", "xc"])]
    (res,) = score_tasks(Bigram(tok), tok, [(TASKS["piqa"], items)], max_len=16)
    assert res.per_item[0]["lls"] == pytest.approx(
        [ln(.2) + 2 * ln(OTHER), ln(.2) + ln(OTHER) + ln(.1 / 254)], abs=1e-5)
    assert res.metrics == {"acc": 1.0, "acc_norm": 0.0, "acc_bytes": 1.0}


def test_cloze_is_greedy_exact_match_by_hand(tok):
    model, ln = Bigram(tok), math.log
    items = [Item(0, ["Q x"], [" aa"], 0, [" aa"]),   # after x ' ', after ' ' 'a', after 'a' 'a'
             Item(1, ["Q x"], [" ab"], 0, [" ab"]),   # 'b' after 'a' is not the argmax
             Item(2, ["Q y"], [" aa"], 0, [" aa"])]   # ' ' after 'y' is not the argmax ('a' is)
    (res,) = score_tasks(model, tok, [(TASKS["lambada_openai"], items)], max_len=16)
    assert [r["acc"] for r in res.per_item] == [1.0, 0.0, 0.0]
    assert res.per_item[0]["ll"] == pytest.approx(ln(.7) + 2 * ln(.3), abs=1e-5)
    mean_ll = (ln(.7) + 2 * ln(.3) + ln(.7) + ln(.3) + ln(.1) + ln(.2) + 2 * ln(.3)) / 3
    assert res.metrics["perplexity"] == pytest.approx(math.exp(-mean_ll), rel=1e-5)


def test_encode_pair_moves_trailing_spaces_and_uses_eot_for_an_empty_context(tok):
    ctx, cont = encode_pair(tok, "Answer: ", "yes")  # lm-eval: the space goes with "yes"
    assert ctx == tok.encode("Answer:") and cont == tok.encode(" yes")
    assert encode_pair(tok, "", "ab") == ([tok.eot_id], tok.encode("ab"))


def test_batch_size_and_truncation_do_not_change_numbers(tok):
    model = Bigram(tok)
    pairs = [encode_pair(tok, "Q x" * k, " ab" * (k % 3 + 1)) for k in range(1, 12)]
    one = loglikelihoods(model, pairs, max_len=64, batch_size=1)
    assert loglikelihoods(model, pairs, max_len=64, batch_size=4) == one
    # a bigram sees one token back: cutting the context's left end (lm-eval's rule) keeps it
    short = loglikelihoods(model, pairs, max_len=10, batch_size=4)
    assert [s for s, _ in short] == pytest.approx([s for s, _ in one], abs=1e-5)


def test_a_continuation_longer_than_the_context_is_refused(tok):
    items = [Item(7, ["Q:"], [" " + "a" * 40], 0, ["a" * 40])]
    with pytest.raises(TaskError, match=r"task lambada_openai: item 7: .* 41 tokens .* 16"):
        score_tasks(Bigram(tok), tok, [(TASKS["lambada_openai"], items)], max_len=16)
