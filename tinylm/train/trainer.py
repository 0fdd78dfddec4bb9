"""The trainer, under Hugging Face Accelerate: one process or many, CPU or GPU.

Made of parts, as torchtitan's: :func:`tinylm.train.step.train_step` does one optimizer step; the
loop in :meth:`Trainer.fit` asks each part whether it is due (the logger, the evaluator, the
checkpointer, the sync checker) and keeps the :class:`TrainState`. Reads top to bottom:
set-up (accelerator, data, model, optimizer, resume), the checks run before every update,
the loop, the end of a run.

    summary = train(load_config("configs/tiny.yaml"))   # or Trainer(cfg).fit()

The config passed in is never changed: the model's vocab_size comes from the tokenizer and
lives in ``trainer.cfg``, a copy.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

from tinylm.checkpoint.checkpointer import Checkpointer
from tinylm.checkpoint.format import resolve_resume
from tinylm.checkpoint.init_from import init_from
from tinylm.checkpoint.resume_state import require_same_data, require_same_run
from tinylm.distributed.parallel import (describe, is_sharded, make_plugin, strategy_line, unwrap,
                                         wrap)
from tinylm.distributed.restart import init_restarted_group
from tinylm.distributed.sync_check import SyncChecker, check_tied_sync
from tinylm.distributed.timeout import is_collective_timeout, process_group_kwargs, rank_timeout
from tinylm.eval.loss import EvalResult
from tinylm.eval.report import write_report
from tinylm.model.config import GPTConfig
from tinylm.model.gpt import GPT, materialize
from tinylm.train.budget import TimeBudget
from tinylm.train.config import TrainConfig, config_to_dict, save_config
from tinylm.train.distill import load_teacher
from tinylm.train.hardware import mfu
from tinylm.train.inputs import build_inputs, eval_split, source_tokens
from tinylm.train.metrics import RunLogger, plot_losses
from tinylm.train.optim import build_optimizers
from tinylm.train.rundir import LauncherWatch, RunDirError, claim_run_dir
from tinylm.train.spikes import SpikeGuard
from tinylm.train.state import StopSignal, TrainHooks, TrainState
from tinylm.train.step import StepStats, StepWindow, TrainingDiverged, choose_precision, train_step

__all__ = ["TrainHooks", "TrainState", "Trainer", "TrainingDiverged", "train"]


class Trainer:
    """Builds everything a run needs from ``cfg``; :meth:`fit` trains it."""

    def __init__(self, cfg: TrainConfig, hooks: TrainHooks | None = None,
                 clock: Callable[[], float] | None = None) -> None:
        """``clock`` (default ``time.time``, counted from the launch) is what a time budget
        is measured with; tests give a fake one."""
        self.hooks = hooks or TrainHooks()
        self.run_dir = Path(cfg.run_dir)
        self.accelerator = acc = self._make_accelerator(cfg)
        self.main = acc.is_main_process
        self.lock = claim_run_dir(self.run_dir, acc)  # before anything is written there
        self.launcher = LauncherWatch()
        try:
            self._build(cfg, clock)
        except BaseException:  # a refused resume, bad data...: the run dir is free again
            if self.lock is not None:
                self.lock.release()
            raise

    def _build(self, cfg: TrainConfig, clock: Callable[[], float] | None) -> None:
        """Data, model, optimizer, resume, logger: everything after the run dir is claimed."""
        acc = self.accelerator
        set_seed(cfg.seed)
        model_cfg = self._build_data(cfg)
        o, T = cfg.optim, model_cfg.block_size
        # -- model and optimizer: one module instance for training and evaluation. Built on
        # meta: a resume's weights come from the checkpoint, with no random init before them.
        with torch.device("meta"):
            self.raw_model = GPT(model_cfg)
        c = cfg.checkpoint
        self.checkpointer = Checkpointer(self.run_dir, acc, c.interval, c.keep_last, c.trust_pickle,
                                         c.keep_every, c.interval_s)
        resume_from = resolve_resume(cfg.checkpoint.resume, self.checkpointer.root)
        rng = True
        if resume_from is not None:
            rng = require_same_run(resume_from, self.cfg, acc.num_processes, self.print)
            self.same_data = require_same_data(resume_from, self.data.fingerprint,
                                               c.allow_data_change, self.print)
            rng = rng and self._restores_rng(cfg)
            self.checkpointer.restore_weights(resume_from, self.raw_model, rng)
        else:
            materialize(self.raw_model, "cpu")  # from the RNG as set_seed left it
            if cfg.checkpoint.init_from:  # resuming wins over init_from
                self.print(init_from(self.raw_model, cfg.checkpoint.init_from,
                                     self.data.tokenizer_path).summary())
        self.teacher = self._load_teacher()
        self.model, self.optimizers = wrap(self.raw_model, acc, cfg.parallel,
                                           lambda m: build_optimizers(m, o), o.compile)
        if o.name == "muon" and is_sharded(self.model):
            self.print("note: Muon on FSDP2 shards runs Newton-Schulz through DTensor ops: the "
                       "same updates as under DDP (to ~1e-4), but ~10x slower steps on CPU "
                       "(docs/performance.md)")
        self.print(f"parallel: {describe(self.model, acc.num_processes)}")
        self.state = TrainState()
        if resume_from is not None:
            self.state.load_state_dict(self.checkpointer.restore_state(
                resume_from, self.model, self.optimizers, rng), self.tokens_per_step)
            self.batches.load_state_dict(self.state.data, self.same_data)
            self.print(f"resumed from {resume_from} at step {self.state.step}")
        if self.main:
            save_config(self.cfg, self.run_dir / "config.yaml")
        self.sync = SyncChecker(cfg.sync_check.interval, first_step=self.state.step)
        self.spikes = SpikeGuard(o.spike_window, o.spike_sigma, o.spike_max_skips)
        self.spikes.load_state_dict(self.state.spikes)  # a resume judges as the run would have
        self.budget = TimeBudget(o.max_time, self.state.budget_used_s, clock)
        self.logger = RunLogger(self.run_dir, acc, cfg.log, config_to_dict(self.cfg), o.max_steps,
                                self.state.tracker_run_id, resumed_at=self.state.step)
        self.state.tracker_run_id = self.logger.run_id
        n_params = self.raw_model.num_params()
        self.flops_per_token = self.raw_model.flops_per_token(T)
        self.print(f"model: {n_params / 1e6:.2f}M parameters (tied matrix counted once), vocab "
                   f"{model_cfg.vocab_size}, context {T}; train {self.meta['train_tokens']:,} "
                   f"tokens, val {self.meta['val_tokens']:,} tokens")
        if self.meta["train_tokens"] < 0.1 * n_params:  # gpt2-small on the 2 MB built-in corpus
            self.print(f"warning: {self.meta['train_tokens'] / n_params:.3f} unique training "
                       f"tokens per parameter (Chinchilla-optimal is ~20): this model will "
                       f"mostly memorize data.source={cfg.data.source}; give it a bigger corpus")

    def _restores_rng(self, cfg: TrainConfig) -> bool:
        if not cfg.checkpoint.restore_rng:
            self.print("checkpoint.restore_rng=false: resuming without the random states "
                       "(dropout masks will differ from an uninterrupted run)")
        return cfg.checkpoint.restore_rng

    def _build_data(self, cfg: TrainConfig) -> GPTConfig:
        """Data, training batches and evaluators (tinylm/train/inputs.py: one source or a
        mixture). Returns the model's config: vocab_size from the tokenizer, the architecture
        from ``init_from``'s checkpoint if there is one."""
        i, acc, o = build_inputs(cfg, self.accelerator), self.accelerator, cfg.optim
        self.data, self.meta, self.batches = i.data, i.data.meta, i.batches
        self.evaluator, self.tasks, self.cfg = i.evaluator, i.tasks, replace(cfg, model=i.model_cfg)
        self.tokens_per_step = o.batch_size * i.model_cfg.block_size * o.grad_accum * acc.num_processes
        return i.model_cfg

    @staticmethod
    def _make_accelerator(cfg: TrainConfig) -> Accelerator:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if not torch.cuda.is_available():  # accelerate gives one CPU process 1 thread: use the
            local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))  # cores (before measuring)
            torch.set_num_threads(cfg.cpu_threads or max(1, (os.cpu_count() or 1) // local))
        vocab = replace(cfg.model, vocab_size=cfg.data.vocab_size)  # the tokenizer's, about
        precision, why = choose_precision(cfg.optim.mixed_precision, vocab, cfg.optim, world)
        init_restarted_group(cfg.parallel.timeout_s)  # a restart: not on the dead group's keys
        acc = Accelerator(
            # Without CUDA, say so: a MULTI_GPU launch config with use_cpu then really gives N
            # gloo ranks instead of N independent single-process runs (environment notes).
            cpu=not torch.cuda.is_available(),
            fsdp_plugin=make_plugin(cfg.parallel, world),
            gradient_accumulation_steps=cfg.optim.grad_accum,
            mixed_precision=precision,
            log_with="wandb" if cfg.log.wandb != "disabled" else None,
            project_dir=str(cfg.run_dir),
            dynamo_backend="inductor" if cfg.optim.compile else "no",
            kwargs_handlers=[process_group_kwargs(cfg.parallel.timeout_s)],
        )
        strategy = strategy_line(cfg.parallel, acc)
        threads = f", {torch.get_num_threads()} thread(s) each" if acc.device.type == "cpu" else ""
        acc.print(f"tinylm: {acc.num_processes} process(es), {strategy}, device {acc.device}"
                  f"{threads}, mixed precision {acc.mixed_precision}{f' ({why})' if why else ''}")
        return acc

    def _load_teacher(self) -> GPT | None:
        """Frozen, eval mode, never prepared: no DDP wrapper, no optimizer state."""
        d = self.cfg.distill
        if not d.teacher:
            return None
        self.print(f"distilling from {d.teacher} (alpha {d.alpha}, temperature {d.temperature})")
        return load_teacher(d.teacher, self.accelerator.device, self.cfg.model.vocab_size,
                            self.data.tokenizer_path)

    def print(self, line: str) -> None:
        self.accelerator.print(line)

    def _any_process(self, flag: bool) -> bool:
        """True on every process if ``flag`` is True on any (so all take the same branch)."""
        return bool(self._agree(float(flag))[0])

    def _agree(self, *values: float) -> list[float]:
        """The maximum of each value over all processes, on every process: one all-reduce."""
        if self.accelerator.num_processes == 1:
            return list(values)
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64, device=self.accelerator.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return t.tolist()

    # -- checks before every update -------------------------------------------------------------
    def _before_update(self, stats: StepStats) -> bool:
        """Runs after the gradients are all-reduced and before AdamW applies them; True skips
        the update (a spike, ``optim.skip_spikes``)."""
        step = self.state.step
        if self.hooks.after_backward:
            self.hooks.after_backward(self.model, step)
        bad = not (torch.isfinite(stats.loss) & torch.isfinite(stats.grad_norm)).item()
        if self._any_process(bad):
            raise TrainingDiverged(
                f"loss is {stats.loss.item()} (gradient norm {stats.grad_norm.item()}) at step "
                f"{step} on this process, non-finite on at least one; stopped without updating. "
                f"Last good checkpoint: {self.checkpointer.latest() or 'none'}")
        if self.sync.due(step):
            t0 = time.perf_counter()
            summary = check_tied_sync(self.model, self.accelerator)
            self.print(f"sync check @ step {step}: {summary} "
                       f"({(time.perf_counter() - t0) * 1e3:.1f} ms)")
        if not self.cfg.optim.skip_spikes:
            return False
        loss = self.accelerator.reduce(stats.loss.detach().float(), "mean").item()  # alike everywhere
        return self.spikes.check(loss, stats.grad_norm.item(), step, self.print, self.checkpointer.latest())

    # -- the loop ----------------------------------------------------------------------------------
    def fit(self) -> dict:
        """Train to ``optim.max_steps`` or the end of ``optim.max_time`` (or a stop signal);
        returns a summary of the run."""
        s, o = self.state, self.cfg.optim
        first, last_eval, window = s.step, None, StepWindow()
        self.checkpointer.saved_at_s = s.budget_used_s  # the same on every process
        self.model.train()
        try:
            with StopSignal() as stop:
                while s.step < o.max_steps:
                    if self.launcher.launcher_gone():  # orphaned: no collective, just stop
                        raise RunDirError(f"the launcher (process {self.launcher.parent}) is "
                                          "gone; this rank stops instead of training on")
                    b, used_here = self.budget, self.budget.used()
                    stop_any, used, needed = self._agree(  # one all-reduce for all three
                        float(stop.signum is not None), used_here,
                        used_here + b.reserve(len(self.evaluator.loader)) + self.tasks.last_s)
                    if stop_any:  # before drawing data, so a resume loses no batch
                        stop.signum = stop.signum or signal.SIGTERM
                        break
                    if b.seconds and needed >= b.seconds:
                        self.print(f"time budget: {used:.1f} of {b.seconds:g} s used at step "
                                   f"{s.step}; stopping to leave {needed - used:.1f} s for the "
                                   "final eval and checkpoint")
                        break
                    s.budget_used_s = used
                    self._qat(used / b.seconds if b.seconds else s.step / o.max_steps)
                    t0 = time.perf_counter()
                    stats = train_step(self.model, self.optimizers, self.batches, self.accelerator,
                                       o, s.step, teacher=self.teacher, distill=self.cfg.distill,
                                       before_update=self._before_update,
                                       progress=used / b.seconds if b.seconds else None)
                    if b.seconds and b.eval_s_per_batch is None:  # price the final eval once
                        self._evaluate(final=False, probe=True)
                    s.step, s.tokens = s.step + 1, s.tokens + self.tokens_per_step
                    if s.step > first + 1:  # the first step pays for compilation and warm-up
                        s.train_seconds += time.perf_counter() - t0
                        s.steps_timed += 1
                    window.add(stats)
                    if self.hooks.after_step:
                        self.hooks.after_step(self.model, s.step)
                    if self.logger.due(s.step):
                        self.logger.log(self._train_record(window.pop(self.accelerator)))
                    if self.evaluator.due(s.step, o.max_steps):
                        last_eval = self._evaluate(final=False)
                    self.tasks.maybe_run(self.model, s.step, o.max_steps, self.logger.log)
                    if self.checkpointer.due(s.step, o.max_steps, used):
                        self.checkpointer.saved_at_s = used
                        self._save()
        except BaseException as e:
            self._release_on_error(e)
            raise
        if stop.signum is not None:
            self.print(f"received signal {signal.Signals(stop.signum).name}: saving a "
                       f"checkpoint at step {s.step}")
        else:
            last_eval = self._evaluate(final=True)
            self.tasks.maybe_run(self.model, s.step, o.max_steps, self.logger.log, final=True)
        checkpoint = self._save()
        return self._finish(stop.signum, checkpoint, last_eval)

    def _release_on_error(self, e: BaseException) -> None:
        """Release the process group, or the exit may abort. A collective that timed out
        becomes a :class:`RankTimeout` naming the ranks that stopped answering."""
        if self.accelerator.num_processes > 1 and is_collective_timeout(e):
            error = rank_timeout(self.cfg.parallel.timeout_s, self.state.step,
                                 self.checkpointer.latest())
            self.accelerator.end_training()
            raise error from None
        self.accelerator.end_training()

    def _qat(self, progress: float) -> None:
        """From ``optim.qat_from`` of the run on, the blocks train through their quantized
        matrices (every process at the same step: ``progress`` is agreed)."""
        o, model = self.cfg.optim, unwrap(self.model)
        if o.qat_from and progress >= o.qat_from and model.layers[0].fake_quant_bits is None:
            model.set_fake_quant(o.qat_bits)
            self.print(f"QAT from step {self.state.step} ({progress:.0%} of the run): the blocks "
                       f"compute with int{o.qat_bits} round trips of their matrices")

    # -- what the parts do when due ---------------------------------------------------------------
    def _train_record(self, means: dict) -> dict:
        s, o = self.state, self.cfg.optim
        tok_s = self.tokens_per_step * s.steps_timed / s.train_seconds if s.steps_timed else 0.0
        eta = (o.max_steps - s.step) * s.train_seconds / max(s.steps_timed, 1)
        if self.budget.seconds:  # the budget ends first, or the step cap
            eta = min(eta, max(self.budget.seconds - self.budget.used(), 0.0))
        record = {"kind": "train", "step": s.step, "tokens": s.tokens, **means,
                  "tokens_per_s": tok_s, "eta_s": eta, **source_tokens(self.batches),
                  **({"skipped_updates": self.spikes.skipped} if o.skip_spikes else {})}
        if torch.cuda.is_available():  # model FLOPs: a CPU has no meaningful peak, so no MFU there
            record["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
            per_process = tok_s / self.accelerator.num_processes
            record["tflops"] = per_process * self.flops_per_token / 1e12
            record["mfu"] = mfu(per_process, self.flops_per_token, torch.cuda.get_device_name())
        return record

    def _evaluate(self, final: bool, probe: bool = False) -> EvalResult:
        """An eval, logged; ``probe`` scores one batch, only to time it (for the budget)."""
        t0 = self.budget.clock()  # the budget's own clock (a test's fake one)
        result = self.evaluator.run(self.model, final=final, max_batches=1 if probe else None)
        batches = 1 if probe else (len(self.evaluator.loader) if final else
                                   min(self.cfg.eval.max_batches or len(self.evaluator.loader),
                                       len(self.evaluator.loader)))
        self.budget.eval_s_per_batch = (self.budget.clock() - t0) / batches
        if probe:
            return result
        self.logger.log(self.evaluator.record(self.state.step, result))
        if self.hooks.after_eval:
            self.hooks.after_eval(self.model, result, self.state.step)
        return result

    def _save(self) -> Path:
        bad = [n for n, p in self.raw_model.named_parameters()
               if not torch.isfinite(p.to_local() if hasattr(p, "to_local") else p).all()]
        if self._any_process(bool(bad)):  # shards differ by rank: all stop if any is bad
            raise TrainingDiverged(
                f"weights are not finite at step {self.state.step} "
                f"({(bad[0] + (' ...' if len(bad) > 1 else '')) if bad else 'on another process'}); "
                f"not saved. Last good checkpoint: {self.checkpointer.latest() or 'none'}")
        self.state.data, self.state.spikes = self.batches.state_dict(), self.spikes.state_dict()
        if self.budget.seconds:
            self.state.budget_used_s = self.budget.used()
        t0 = self.budget.clock()  # the budget's own clock (a test's fake one)
        path = self.checkpointer.save(
            self.state.step, self.model, self.optimizers, config_to_dict(self.cfg),
            self.data.tokenizer_path,
            self.state.state_dict(),
            {**eval_split(self.data), "data_fingerprint": self.data.fingerprint})
        self.budget.save_s = self.budget.clock() - t0
        self.print(f"saved checkpoint {path}")
        return path

    def _finish(self, signum: int | None, checkpoint: Path, last_eval: EvalResult | None) -> dict:
        s = self.state
        if self.main and self.cfg.log.plot:
            plot_losses(self.run_dir / "metrics.jsonl", self.run_dir / "loss.png")
            if self.cfg.log.report:  # samples from the checkpoint just saved
                write_report(self.run_dir, device=self.accelerator.device)
        self.accelerator.wait_for_everyone()  # no rank tears its process group down while
        self.accelerator.end_training()  # another is still in one (an abort at exit, seen ~4%)
        if self.lock is not None:
            self.lock.release()
        tok_s = self.tokens_per_step * s.steps_timed / s.train_seconds if s.steps_timed else 0.0
        self.tasks.print_cost(s.train_seconds, self.print)  # what judging in the loop cost
        return {
            "step": s.step, "stopped_by": signal.Signals(signum).name if signum else None,
            "num_processes": self.accelerator.num_processes, "tokens_per_s": tok_s,
            "bytes_per_s": tok_s * self.meta["train_bytes"] / max(self.meta["train_tokens"], 1),
            "train_seconds": s.train_seconds, "checkpoint": str(checkpoint),
            "budget_used_s": self.budget.used() if self.budget.seconds else None,
            "val": last_eval.to_dict() if last_eval else None,
            "params": self.raw_model.num_params(), "tasks_seconds": self.tasks.seconds,
        }


def train(cfg: TrainConfig, hooks: TrainHooks | None = None) -> dict:
    """Train ``cfg`` to ``optim.max_steps``; returns a summary (final eval, speed, paths)."""
    return Trainer(cfg, hooks).fit()
