"""accelerate's own FSDP2 wrapping (the path tinylm takes on several GPUs) applied on CPU ranks:
does tinylm's grouping check accept it, and does the tie survive a few real steps? And the
check's other side: a grouping that gives lm_head a group of its own must be refused.

    accelerate launch --config_file configs/accelerate/cpu-2proc.yaml accelerate_fsdp2_grouping.py

accelerate ignores its FSDP plugin on CPU (environment notes), so this calls the function its
``prepare`` calls on GPUs, ``accelerate.utils.fsdp_utils.fsdp2_prepare_model``, with the very
plugin tinylm builds (``tinylm.distributed.parallel.fsdp2_plugin``). Prints "RESULT <json>" on each rank: what it
saw, or the error that stopped it. This worker asserts nothing itself, so that every rank
reports even when one fails: ``tests/distributed/test_parallel.py::
test_accelerates_own_fsdp2_grouping_passes_the_check`` asserts on both ranks' results.
"""

import json
import os
import sys
from types import SimpleNamespace

import torch
import torch.distributed as dist
from accelerate.utils.fsdp_utils import fsdp2_prepare_model
from torch.distributed.fsdp import fully_shard

from tinylm.distributed.parallel import (ParallelConfig, check_grouping, fsdp2_plugin,
                                         tie_group_label)
from tinylm.model.config import GPTConfig
from tinylm.model.gpt import GPT
from tinylm.sharing.tying import TieError, check_ties


def tiny() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=100, n_layer=2, n_head=2, n_embd=32, block_size=16))


def split_grouping_refused() -> str:
    """Blocks, then lm_head alone, then the root: torch 2.13 accepts this and gives the head
    its own sharded copy of the matrix. check_grouping must refuse it; returns its error."""
    model = tiny()
    for block in model.layers:
        fully_shard(block)
    fully_shard(model.lm_head)
    fully_shard(model)
    try:
        check_grouping(model)
    except TieError as e:
        return str(e)
    return ""


def report(result: dict) -> None:
    sys.stdout.flush()
    os.write(1, ("RESULT " + json.dumps(result) + "\n").encode())


def main() -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    try:
        report({"rank": rank, "world": dist.get_world_size(), **run(rank)})
    except Exception as e:  # report, don't crash: the test reads each rank's outcome
        report({"rank": rank, "error": f"{type(e).__name__}: {e}"})
    dist.destroy_process_group()


def run(rank: int) -> dict:
    plugin = fsdp2_plugin(ParallelConfig(strategy="fsdp2"))  # what make_plugin gives on CUDA
    acc = SimpleNamespace(state=SimpleNamespace(fsdp_plugin=plugin), mixed_precision="no",
                          is_main_process=rank == 0, device=torch.device("cpu"))
    model = fsdp2_prepare_model(acc, tiny())
    check_grouping(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(rank)
    losses = []
    for _ in range(3):
        x = torch.randint(0, 100, (2, 16), generator=g)
        _, loss = model(x, x)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    check_ties(model)
    return {"label": tie_group_label(model),
            "tied_is_one": model.embed_tokens.weight is model.lm_head.weight,
            "dtensor": type(model.embed_tokens.weight).__name__, "losses": losses,
            "split_refused": split_grouping_refused()}


if __name__ == "__main__":
    main()
