"""accelerate's own FSDP2 wrapping (the path tinylm takes on several GPUs) applied on CPU ranks:
does tinylm's grouping check accept it, and does the tie survive a few real steps?

    accelerate launch --config_file configs/accelerate/cpu-2proc.yaml accelerate_fsdp2_grouping.py

accelerate ignores its FSDP plugin on CPU (environment notes), so this calls the function its
``prepare`` calls on GPUs, ``accelerate.utils.fsdp_utils.fsdp2_prepare_model``, with the very
plugin ``tinylm.parallel.make_plugin`` builds. Prints "RESULT <json>" on each rank.
"""

import json
import os
import sys
from types import SimpleNamespace

import torch
import torch.distributed as dist
from accelerate import FullyShardedDataParallelPlugin
from accelerate.utils.fsdp_utils import fsdp2_prepare_model

from tinylm.model import GPT, GPTConfig
from tinylm.parallel import check_grouping, tie_group_label
from tinylm.tying import check_ties


def main() -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    plugin = FullyShardedDataParallelPlugin(  # make_plugin's settings (it only builds on CUDA)
        fsdp_version=2, auto_wrap_policy="transformer_based_wrap",
        transformer_cls_names_to_wrap=["Block"], reshard_after_forward=True,
        state_dict_type="FULL_STATE_DICT", cpu_ram_efficient_loading=False)
    acc = SimpleNamespace(state=SimpleNamespace(fsdp_plugin=plugin), mixed_precision="no",
                          is_main_process=rank == 0, device=torch.device("cpu"))
    torch.manual_seed(0)
    model = fsdp2_prepare_model(acc, GPT(GPTConfig(vocab_size=100, n_layer=2, n_head=2,
                                                   n_embd=32, block_size=16)))
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
    result = {"rank": rank, "world": dist.get_world_size(), "label": tie_group_label(model),
              "tied_is_one": model.embed_tokens.weight is model.lm_head.weight,
              "dtensor": type(model.embed_tokens.weight).__name__, "losses": losses}
    sys.stdout.flush()
    os.write(1, ("RESULT " + json.dumps(result) + "\n").encode())
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
