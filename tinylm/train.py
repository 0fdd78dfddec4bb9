"""The training loop, under Hugging Face Accelerate: one process or many, CPU or GPU.

Reads top to bottom: set-up (accelerator, data, model, optimizer, resume), then the loop: a
step is ``grad_accum`` micro-batches; on the last one the gradients are all-reduced, and before
the optimizer steps we check that the loss is finite, whether a stop signal arrived, and (on
the first step and every ``sync_check.interval``) that every tied parameter and its gradient are
identical on all processes. Periodic evals use the very module being trained, in eval mode
under no_grad, on their own dataloader. Checkpoints are atomic; ``resume=auto`` continues
exactly where the last one stopped.

The learning rate is set by hand from the optimizer-step count rather than by a prepared
scheduler: accelerate steps a prepared scheduler once per process per step, which silently
shortens warmup and decay on N processes.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from tinylm import checkpoint as ckpt
from tinylm.config import OptimConfig, TrainConfig, config_to_dict, save_config
from tinylm.data import EvalBlocks, TrainBatches, prepare
from tinylm.distill import distill_forward, load_teacher
from tinylm.evaluate import EvalResult, evaluate
from tinylm.metrics import MetricsFile, eval_line, plot_losses, train_line
from tinylm.student import init_from, init_model_config
from tinylm.model import GPT
from tinylm.sync_check import check_tied_sync
from tinylm.tying import check_ties


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the run stopped without saving the bad state."""


@dataclass
class TrainHooks:
    """Extension points, called on every process (tests use them to observe or inject faults)."""

    after_backward: Callable[[torch.nn.Module, int], None] | None = None  # (model, step)
    after_eval: Callable[[torch.nn.Module, EvalResult, int], None] | None = None
    after_step: Callable[[torch.nn.Module, int], None] | None = None


def lr_at(step: int, cfg: OptimConfig) -> float:
    """Learning rate for optimizer step ``step`` (0-based): linear warmup, then cosine to
    ``lr * min_lr_ratio``, or warmup-stable-decay with a linear decay over the last 20%."""
    peak, floor = cfg.lr, cfg.lr * cfg.min_lr_ratio
    if step < cfg.warmup_steps:
        return peak * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "wsd":
        decay_start = int(cfg.max_steps * 0.8)
        if step < decay_start:
            return peak
        frac = (step - decay_start) / max(cfg.max_steps - decay_start, 1)
        return peak + (floor - peak) * min(frac, 1.0)
    frac = (step - cfg.warmup_steps) / max(cfg.max_steps - cfg.warmup_steps, 1)
    return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * min(frac, 1.0)))


def padded_vocab_size(vocab_size: int) -> int:
    """The tokenizer's vocab rounded up to a multiple of 64: a faster head matmul."""
    return 64 * math.ceil(vocab_size / 64)


def resolve_mixed_precision(choice: str) -> str:
    """"auto" -> bf16 on GPUs and CPUs that do bf16 natively (about 15% faster here), else no."""
    if choice != "auto":
        return choice
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "no"
    try:
        return "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "no"
    except (AttributeError, RuntimeError):
        return "no"


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only. The tied embedding/head matrix is ONE
    parameter (``parameters()`` de-duplicates) and is decayed like the other matrices, as in
    GPT-2 and nanoGPT: it is the head's weight, and decaying only one of its two uses is not a
    thing a single parameter can do. Norm scales are never decayed."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    # fused: one kernel over all tensors (CUDA, and CPU since torch 2.4): 1.02-1.04x on a CPU step
    impls = {"fused": {"fused": True}, "foreach": {"foreach": True}, "loop": {"foreach": False}}
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), **impls[cfg.adamw])


class _StopSignal:
    """SIGINT/SIGTERM ask for a checkpoint and a clean exit at the next step boundary; a second
    SIGINT interrupts at once."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old = {}
        for s in (signal.SIGINT, signal.SIGTERM):
            self._old[s] = signal.signal(s, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def restore(self) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


def _any_process(flag: bool, accelerator) -> bool:
    """True on every process if ``flag`` is True on any (so all take the same branch)."""
    if accelerator.num_processes == 1:
        return flag
    t = torch.tensor([float(flag)], device=accelerator.device)
    return bool(accelerator.reduce(t, reduction="sum").item() > 0)


def _resolve_resume(cfg: TrainConfig, ckpt_root: Path) -> Path | None:
    choice = cfg.checkpoint.resume
    if not choice:
        return None
    if choice == "auto":
        return ckpt.latest_checkpoint(ckpt_root)
    path = Path(choice)
    if not (path / ckpt.CONFIG_FILE).is_file():
        raise ckpt.CheckpointError(f"checkpoint.resume={choice}: not a checkpoint directory")
    return path


def train(cfg: TrainConfig, hooks: TrainHooks | None = None) -> dict:
    """Train ``cfg`` to ``optim.max_steps``; returns a summary (final eval, speed, paths)."""
    hooks = hooks or TrainHooks()
    run_dir = Path(cfg.run_dir)
    ckpt_root = run_dir / "checkpoints"
    o = cfg.optim
    accelerator = Accelerator(
        # Without CUDA, say so: a MULTI_GPU launch config with use_cpu then really gives N
        # gloo ranks instead of N independent single-process runs (environment notes).
        cpu=not torch.cuda.is_available(),
        gradient_accumulation_steps=o.grad_accum,
        mixed_precision=resolve_mixed_precision(o.mixed_precision),
        log_with="wandb" if cfg.log.wandb != "disabled" else None,
        project_dir=str(run_dir),
        dynamo_backend="inductor" if o.compile else "no",
    )
    main = accelerator.is_main_process
    log = accelerator.print
    threads = ""
    if accelerator.device.type == "cpu":
        local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        torch.set_num_threads(cfg.cpu_threads or max(1, (os.cpu_count() or 1) // local))
        threads = f", {torch.get_num_threads()} thread(s) each"
    log(f"tinylm: {accelerator.num_processes} process(es) ({accelerator.distributed_type.value}), "
        f"device {accelerator.device}{threads}, mixed precision {accelerator.mixed_precision}")
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        ckpt_root.mkdir(exist_ok=True)
    set_seed(cfg.seed)

    # -- data: the main process prepares (tokenizer, token files) while the others wait -----
    data = prepare(cfg.data, accelerator=accelerator)
    meta = data.meta
    cfg.model.vocab_size = padded_vocab_size(meta["vocab_size"])
    if cfg.checkpoint.init_from:  # the weights fix the architecture; the tokenizer must match
        cfg.model = init_model_config(cfg.checkpoint.init_from, vocab_size=cfg.model.vocab_size)
    T = cfg.model.block_size
    batches = TrainBatches(data.train_path, T, o.batch_size, rank=accelerator.process_index,
                           world_size=accelerator.num_processes, seed=cfg.seed, dtype=data.dtype)
    eval_loader = accelerator.prepare(DataLoader(EvalBlocks(data.val_path, T, dtype=data.dtype),
                                                 batch_size=cfg.eval.batch_size, shuffle=False))

    # -- model and optimizer: one module instance for training and evaluation --------------
    raw_model = GPT(cfg.model)
    optimizer = build_optimizer(raw_model, o)
    start_step, run_id = 0, None
    resume_from = _resolve_resume(cfg, ckpt_root)
    if resume_from is not None:  # resuming wins over init_from
        ckpt.load_weights(raw_model, resume_from / ckpt.MODEL_FILE)
    elif cfg.checkpoint.init_from:
        log(init_from(raw_model, cfg.checkpoint.init_from, data.tokenizer_path).summary())
    teacher = None
    if cfg.distill.teacher:  # frozen, eval mode, never prepared: no DDP wrapper, no optimizer
        teacher = load_teacher(cfg.distill.teacher, accelerator.device, cfg.model.vocab_size,
                               data.tokenizer_path)
        log(f"distilling from {cfg.distill.teacher} (alpha {cfg.distill.alpha}, "
            f"temperature {cfg.distill.temperature})")
    model, optimizer = accelerator.prepare(raw_model, optimizer)
    check_ties(model)  # wrapping (DDP, compile) must keep the tie, or we stop here
    # Our model.safetensors holds the weights (ties stored once); accelerate keeps the rest.
    accelerator.register_save_state_pre_hook(lambda models, weights, out: weights.clear())
    accelerator.register_load_state_pre_hook(lambda models, inp: models.clear())
    if resume_from is not None:
        accelerator.load_state(str(resume_from / ckpt.STATE_DIR))
        state = ckpt.read_trainer_state(resume_from)
        start_step, run_id = state["step"], state.get("wandb_run_id")
        batches.load_state_dict(state["data"])
        log(f"resumed from {resume_from} at step {start_step}")
    if main:
        save_config(cfg, run_dir / "config.yaml")
    n_params = raw_model.num_params()
    log(f"model: {n_params / 1e6:.2f}M parameters (tied matrix counted once), "
        f"vocab {cfg.model.vocab_size}, context {T}; train {meta['train_tokens']:,} tokens, "
        f"val {meta['val_tokens']:,} tokens")

    if cfg.log.wandb != "disabled":
        os.environ.setdefault("WANDB_SILENT", "true")
        run_id = run_id or f"tinylm-{int(time.time())}"
        accelerator.init_trackers(cfg.log.project, config=config_to_dict(cfg), init_kwargs={
            "wandb": {"dir": str(run_dir), "id": run_id, "resume": "allow", "mode": cfg.log.wandb}})
    metrics = MetricsFile(run_dir / "metrics.jsonl", enabled=main)

    def run_eval(step: int, max_batches: int) -> EvalResult:
        result = evaluate(model, eval_loader, accelerator=accelerator, max_batches=max_batches,
                          split_bytes=meta["val_bytes"], split_tokens=meta["val_tokens"])
        log(eval_line(step, result.loss, result.bits_per_byte, result.tokens))
        record = {"val_loss": result.loss, "val_ppl": result.perplexity,
                  "val_bits_per_byte": result.bits_per_byte, "val_tokens": result.tokens}
        metrics.write({"kind": "eval", "step": step, **record})
        accelerator.log(record, step=step)
        if hooks.after_eval:
            hooks.after_eval(model, result, step)
        return result

    def save(step: int) -> Path:
        tmp = ckpt.temp_dir_for(ckpt_root, step)
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp / ckpt.STATE_DIR))  # optimizer, RNG of every process
        final = ckpt_root / f"step-{step}"
        if main:
            ckpt.write_checkpoint_files(
                tmp, raw_model, config_to_dict(cfg), data.tokenizer_path,
                trainer_state={"step": step, "data": batches.state_dict(), "wandb_run_id": run_id},
                extra={"step": step, "data_dir": str(Path(data.dir).resolve()), "val_tokens": meta["val_tokens"],
                       "val_bytes": meta["val_bytes"]})
            final = ckpt.publish(tmp, ckpt_root, step, cfg.checkpoint.keep_last)
            log(f"saved checkpoint {final}")
        accelerator.wait_for_everyone()
        return final

    # -- the loop ------------------------------------------------------------------------
    tokens_per_step = o.batch_size * T * o.grad_accum * accelerator.num_processes
    stop = _StopSignal()
    step, last_eval, last_ckpt = start_step, None, None
    train_seconds, steps_timed, loss_acc, loss_n = 0.0, 0, torch.zeros(()), 0
    kl_acc = torch.zeros(())  # distillation's KL term, summed like loss_acc
    bar = tqdm(total=o.max_steps, initial=start_step, desc="train",
               disable=not main or not sys.stderr.isatty(),  # logs get the step lines only
               dynamic_ncols=True, leave=False)
    model.train()
    try:
        while step < o.max_steps:
            if _any_process(stop.signum is not None, accelerator):  # before drawing data, so
                stop.signum = stop.signum or signal.SIGTERM  # a resume loses no batch
                break
            t0 = time.perf_counter()
            step_loss = torch.zeros((), device=accelerator.device)
            for _ in range(o.grad_accum):
                x, y = next(batches)
                x, y = x.to(accelerator.device), y.to(accelerator.device)
                with accelerator.accumulate(model):
                    with accelerator.autocast():
                        if teacher is None:
                            _, loss = model(x, y)
                        else:
                            loss, parts = distill_forward(model, teacher, x, y, cfg.distill)
                            kl_acc += parts["kl"].detach().float().cpu() / o.grad_accum
                    accelerator.backward(loss)
                step_loss += loss.detach() / o.grad_accum
            assert accelerator.sync_gradients, "grad_accum micro-steps must end on a sync step"
            # Gradients are all-reduced now; nothing has been applied yet.
            if hooks.after_backward:
                hooks.after_backward(model, step)
            if _any_process(not torch.isfinite(step_loss).item(), accelerator):
                good = ckpt.latest_checkpoint(ckpt_root)
                raise TrainingDiverged(
                    f"loss is {step_loss.item()} at step {step} on at least one process; stopped "
                    f"without updating. Last good checkpoint: {good or 'none'}")
            if cfg.sync_check.interval and (step == start_step or step % cfg.sync_check.interval == 0):
                t_check = time.perf_counter()
                summary = check_tied_sync(model, accelerator)
                log(f"sync check @ step {step}: {summary} ({(time.perf_counter() - t_check) * 1e3:.1f} ms)")
            grad_norm = accelerator.clip_grad_norm_(model.parameters(), o.grad_clip) if o.grad_clip else None
            lr = lr_at(step, o)
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            dt = time.perf_counter() - t0
            if step > start_step + 1:  # the first step pays for compilation and warm-up
                train_seconds, steps_timed = train_seconds + dt, steps_timed + 1
            loss_acc, loss_n = loss_acc + step_loss.float().cpu(), loss_n + 1
            bar.update(1)
            if hooks.after_step:
                hooks.after_step(model, step)

            if step % cfg.log.interval == 0 or step == o.max_steps:
                mean_loss = accelerator.reduce(loss_acc.to(accelerator.device), "mean").item() / loss_n
                tok_s = tokens_per_step * steps_timed / train_seconds if steps_timed else 0.0
                eta = (o.max_steps - step) * (train_seconds / steps_timed if steps_timed else dt)
                gn = float(grad_norm) if grad_norm is not None else None
                if main:
                    bar.write(train_line(step, o.max_steps, mean_loss, lr, tok_s, eta, gn))
                record = {"loss": mean_loss, "lr": lr, "tokens_per_s": tok_s, "grad_norm": gn}
                if teacher is not None:  # loss is then the mix; KL is the teacher-matching part
                    record["distill_kl"] = kl_acc.item() / loss_n
                    kl_acc = torch.zeros(())
                metrics.write({"kind": "train", "step": step, "tokens": step * tokens_per_step, **record})
                accelerator.log(record, step=step)
                loss_acc, loss_n = torch.zeros(()), 0
            if cfg.eval.interval and step % cfg.eval.interval == 0 and step < o.max_steps:
                last_eval = run_eval(step, cfg.eval.max_batches)
            if cfg.checkpoint.interval and step % cfg.checkpoint.interval == 0 and step < o.max_steps:
                last_ckpt = save(step)
    except BaseException:
        accelerator.end_training()  # release the process group, or the exit may abort
        raise
    finally:
        bar.close()
        stop.restore()

    if stop.signum is not None:
        log(f"received signal {signal.Signals(stop.signum).name}: saving a checkpoint at step {step}")
        last_ckpt = save(step)
    else:
        last_eval = run_eval(step, max_batches=0)  # the whole val split
        last_ckpt = save(step)
    if main and cfg.log.plot:
        plot_losses(run_dir / "metrics.jsonl", run_dir / "loss.png")
    accelerator.end_training()
    tok_s = tokens_per_step * steps_timed / train_seconds if steps_timed else 0.0
    return {
        "step": step, "stopped_by": signal.Signals(stop.signum).name if stop.signum else None,
        "num_processes": accelerator.num_processes, "tokens_per_s": tok_s,
        "bytes_per_s": tok_s * meta["train_bytes"] / max(meta["train_tokens"], 1),
        "train_seconds": train_seconds, "checkpoint": str(last_ckpt),
        "val": last_eval.to_dict() if last_eval else None, "params": n_params,
    }
