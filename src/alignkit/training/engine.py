"""The one training loop every trainer runs on (sft, reward, dpo, online-dpo, ppo).

A stage does three things with it:

1. ``run = start_run(cfg, validate=check_flags)``: the flag checks, the output folder (refusing
   to clobber an earlier run), the resolved config beside it, the seed, the device, and under
   ``torchrun`` the process group.
2. ``trainer = Trainer(run, model, total_steps, name="dpo")``: the optimiser (AdamW) and schedule
   (``transformers.get_scheduler``) over the model's trainable parameters, the metrics log, and
   -- with ``--resume`` -- parameters, optimiser, schedule, RNG, the counters and any extra state
   (a KL controller, a monitor) restored from the newest checkpoint.
3. ``trainer.fit(train_step, evaluate)``: for each step, ``train_step(step)`` runs the forward
   and backward passes of this process's micro-batches of the step (``trainer.micro_batches``,
   ``trainer.forward``, ``trainer.backward``, counts summed with ``trainer.sum``) and returns
   its metrics; the trainer clips and steps the optimiser, logs every ``--log-every`` steps,
   evaluates every ``--eval-every`` steps and at the end, writes a checkpoint every
   ``--save-every`` steps (atomically: a killed run never leaves a half-written one), and
   finally logs the run's summary.

It is the single place where a model trains: where gradients are clipped and the optimiser
steps, where autocast (bf16, or fp16 with a gradient scaler) and gradient checkpointing are
switched on, where the model is wrapped in DistributedDataParallel under ``torchrun`` and each
process's share of a step is decided (``distributed.py``), where only the first process writes,
and where a stage's data position follows from the step number alone (which is what makes a
resumed run exact, at any number of processes).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import torch

from alignkit.config import save_config
from alignkit.data.sft import micro_batch_indices
from alignkit.errors import UserError
from alignkit.models import checkpoint as ckpt
from alignkit.models.loading import pick_device
from alignkit.models.lora import count_parameters
from alignkit.models.precision import autocast, uses_fp16
from alignkit.training.distributed import init_world, no_sync, wrap
from alignkit.utils.distributed import World, barrier, sum_across
from alignkit.utils.logs import progress_bar
from alignkit.utils.metrics import MetricsLog

# what stages cache inside their output folder (recomputed when missing)
OUTPUT_CACHES = ("reference_logps.pt", "reference_logps.pt.tmp")
# what a run writes into its output folder; --overwrite removes exactly these
RUN_OUTPUTS = ("checkpoints", "final", "best", "metrics.jsonl", "tensorboard", *OUTPUT_CACHES)

# --schedule -> the transformers schedule of the same shape (linear warm-up, then the decay)
SCHEDULES = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}


class Stateful(Protocol):
    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


@dataclass
class Run:
    """Where a stage writes, what it computes on, and this process's place among the ranks."""

    cfg: Any
    output: Path
    device: str
    world: World = field(default_factory=World)

    @property
    def is_main(self) -> bool:
        """The process that writes files (checkpoints, final model, metrics) and prints."""
        return self.world.is_main


def prepare_output(cfg, write: bool = True) -> Path:
    """Create the output folder; refuse to clobber an earlier run unless --resume or --overwrite
    (which removes that run's outputs and caches first: a replaced run must not start from what
    the earlier one computed). ``write=False`` (ranks other than the first): the check only."""
    import shutil

    out = Path(cfg.output)
    existing = out.exists() and any((out / n).exists() for n in ("checkpoints", "final",
                                                                 "metrics.jsonl"))
    resume = getattr(cfg, "resume", False)
    if existing and not (resume or cfg.overwrite):
        raise UserError(f"{out}: holds an earlier run; pass --resume to continue it or "
                        "--overwrite to replace it")
    if not write:
        return out
    if out.exists() and cfg.overwrite and not resume:
        for name in RUN_OUTPUTS:
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    out.mkdir(parents=True, exist_ok=True)
    return out


def start_run(cfg, validate: Callable[[], None] | None = None) -> Run:
    """Step 1 of every trainer: ``validate()`` (checks that need no files) before anything is
    written, then the output folder, the resolved config beside it, the seed and the device."""
    if validate is not None:
        validate()
    world, device = init_world(pick_device(cfg.device))
    output = prepare_output(cfg, write=world.is_main)
    if world.is_main:
        save_config(cfg, output)
    barrier(world)
    ckpt.seed_everything(cfg.seed)
    return Run(cfg, output, device, world)


def steps_for_epochs(cfg, examples: int) -> int:
    """Optimiser steps of a run: ``--max-steps`` when set, else ``--epochs`` over ``examples``
    in micro-batches of ``--batch-size`` accumulated ``--grad-accum`` at a time."""
    if cfg.max_steps > 0:
        return cfg.max_steps
    micro_per_epoch = -(-examples // cfg.batch_size)
    return max(1, math.ceil(cfg.epochs * micro_per_epoch / cfg.grad_accum))


def make_optimizer(params, lr: float, weight_decay: float):
    """AdamW; the fused kernel (one pass over all parameters) where this torch has it."""
    try:
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def make_scheduler(optimizer, kind: str, warmup_steps: int, total_steps: int):
    """Linear warm-up over ``warmup_steps`` (from 0, as in transformers and TRL), then cosine,
    linear or constant over the remaining optimiser steps."""
    from transformers import get_scheduler

    return get_scheduler(SCHEDULES[kind], optimizer, num_warmup_steps=warmup_steps,
                         num_training_steps=total_steps)


def enable_gradient_checkpointing(model: torch.nn.Module) -> int:
    """Activation (gradient) checkpointing in every Hugging Face model inside ``model`` (a
    policy, its critic, the backbones of a reward ensemble): each layer's activations are
    recomputed in the backward pass instead of kept. Non-reentrant torch checkpointing: it needs
    no input that requires grad, so it works with LoRA and frozen embeddings. Returns how many
    models it was switched on in."""
    from transformers import PreTrainedModel

    covered: set[int] = set()
    count = 0
    for module in model.modules():
        if id(module) in covered or not isinstance(module, PreTrainedModel):
            continue
        if not module.supports_gradient_checkpointing:
            continue
        enable = getattr(module, "activation_checkpointing_enable", None)
        if enable is not None:
            enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:  # transformers < 5
            module.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False})
        covered.update(id(m) for m in module.modules())
        count += 1
    return count


@dataclass
class TrainerState:
    """What a checkpoint carries beyond the weights, optimiser, schedule and RNG."""

    step: int = 0
    counters: dict[str, float] = field(default_factory=dict)


class Trainer:
    """The training loop of one model (see the module docstring).

    ``counter``: the row key ``train_step`` reports its amount of work under (``tokens``,
    ``pairs``, ``rollouts``); the trainer sums it into ``<counter>_seen`` (kept across a resume)
    and reports ``<counter>_per_s``. ``optimizer_steps_per_step``: how many times
    ``train_step`` itself calls ``optimizer_step`` (PPO's epochs of minibatches); with the
    default ``None`` the trainer steps once after each ``train_step``. ``extra_state``: objects
    with ``state_dict``/``load_state_dict`` saved in every checkpoint under their key.
    ``checkpoint_at_end``: also write a checkpoint after the last step (so that a later
    ``--resume`` with more ``--max-steps`` continues the run). ``idle_parameters``: some
    trainable parameters sit out some micro-batches (under torchrun DDP then looks for them)."""

    def __init__(self, run: Run, model: torch.nn.Module, total_steps: int, *, name: str,
                 counter: str = "tokens", optimizer_steps_per_step: int | None = None,
                 extra_state: dict[str, Stateful] | None = None,
                 checkpoint_at_end: bool = False, idle_parameters: bool = False):
        cfg = run.cfg
        self.run, self.cfg, self.model, self.name = run, cfg, model, name
        self.log_to = logging.getLogger(f"alignkit.{name.replace('-', '_')}")
        self.device, self.output = run.device, run.output
        self.total_steps = total_steps
        self.counter = counter
        self.steps_itself = optimizer_steps_per_step is not None
        self.extra_state = dict(extra_state or {})
        self.checkpoint_at_end = checkpoint_at_end
        checkpointing = getattr(cfg, "gradient_checkpointing", False)
        if checkpointing and not enable_gradient_checkpointing(model):
            raise UserError("--gradient-checkpointing: this model has no Hugging Face layers that "
                            "support it")
        self.world = run.world
        self.ddp = None
        if self.world.distributed:
            # stages that step themselves (PPO, online DPO) share out their own micro-batches
            if not self.steps_itself and cfg.grad_accum % self.world.size:
                raise UserError(f"--grad-accum {cfg.grad_accum} must be a multiple of the "
                                f"{self.world.size} processes: each runs --grad-accum / "
                                f"{self.world.size} of a step's micro-batches, so that the "
                                "step's batch is the same at every world size")
            self.ddp = wrap(model, self.device, idle_parameters)
        self.params = [p for p in model.parameters() if p.requires_grad]
        # fp16 gradients underflow: the loss is scaled up before the backward, the gradients
        # unscaled before clipping, and a step with inf/NaN gradients skipped (scale halved)
        self.scaler = (torch.amp.GradScaler(torch.device(self.device).type)
                       if uses_fp16(cfg.precision) else None)
        if self.scaler is not None:
            self.extra_state["grad_scaler"] = self.scaler
        self.optimizer = make_optimizer(self.params, cfg.lr, cfg.weight_decay)
        self.scheduler = make_scheduler(self.optimizer, cfg.schedule, cfg.warmup_steps,
                                        total_steps * (optimizer_steps_per_step or 1))
        self.state = TrainerState(counters={f"{counter}_seen": 0})
        self.eval_history: dict[int, dict] = {}
        self.train_history: dict[int, dict] = {}
        self.stop_reason: str | None = None
        self.metrics: MetricsLog | None = None
        self._started = time.time()
        self._seen_at_start = 0.0
        self._evaluated: set[int] = set()

    # ------------------------------------------------------------------ set-up

    def resume(self) -> int:
        """With ``--resume``, restore everything from the newest checkpoint; open the metrics
        log (lines the killed run wrote after that checkpoint are dropped). Returns the step to
        start from."""
        found = ckpt.list_checkpoints(self.output) if getattr(self.cfg, "resume", False) else []
        if found:
            saved = ckpt.load_checkpoint(found[-1], self.model, self.optimizer, self.scheduler)
            self.state.step = saved["step"]
            for key in self.state.counters:
                self.state.counters[key] = saved.get(key, 0)
            for key, obj in self.extra_state.items():
                if saved.get(key) is not None:
                    obj.load_state_dict(saved[key])
            self.log_to.info("resuming from %s (step %d of %d)", found[-1], self.state.step,
                             self.total_steps)
        resuming = getattr(self.cfg, "resume", False)
        if self.run.is_main:
            self.metrics = MetricsLog(self.output,
                                      resume_step=self.state.step if resuming else None)
        return self.state.step

    @property
    def start_step(self) -> int:
        return self.state.step

    def log(self, step: int, row: dict, split: str = "train") -> None:
        if self.metrics is not None:
            self.metrics.log(step, row, split=split)

    def log_setup(self, row: dict) -> None:
        """The run's set-up (data sizes, parameters, mode), once at step 0 of a fresh run."""
        if self.state.step == 0:
            trainable, total = count_parameters(self.model)
            self.log(0, {**row, "trainable_params": trainable, "total_params": total,
                         "total_steps": self.total_steps, "device": self.device,
                         "gradient_checkpointing": getattr(self.cfg, "gradient_checkpointing",
                                                           False)}, split="setup")

    # ------------------------------------------------------------------ one step

    def autocast(self):
        """bf16 autocast where ``--precision`` asks for it (the default on CUDA)."""
        return autocast(self.device, self.cfg.precision)

    def micro_batches(self, step: int, examples: int, seed: int | None = None
                      ) -> list[list[int]]:
        """Example indices of this process's micro-batches of optimiser step ``step``: the
        step's ``--grad-accum`` micro-batches (shuffled epochs, a pure function of the step and
        seed), every ``world size``-th of them from this rank on."""
        seed = self.cfg.seed if seed is None else seed
        return [micro_batch_indices(step * self.cfg.grad_accum + j, examples,
                                    self.cfg.batch_size, seed)
                for j in range(self.world.rank, self.cfg.grad_accum, self.world.size)]

    def sum(self, values):
        """``values`` (a list of numbers or a tensor) summed over every process: the whole
        step's counts and loss sums, from each process's share."""
        return sum_across(values, self.world, self.device)

    def forward(self, compute, *args, **kwargs):
        """``compute(model, *args)``, through DistributedDataParallel when there are several
        processes (so that the backward synchronises the gradients)."""
        if self.ddp is None:
            return compute(self.model, *args, **kwargs)
        return self.ddp(compute, *args, **kwargs)

    def accumulate(self, last: bool):
        """Around the forward and backward of one micro-batch: gradients stay local until the
        step's ``last`` micro-batch, whose backward averages them over the processes."""
        return no_sync(self.ddp, last)

    def backward(self, loss: torch.Tensor) -> None:
        """``loss`` is this process's share of the step's loss (normalised by the whole step's
        count); DDP averages the processes' gradients, so each is scaled by their number."""
        loss = loss * self.world.size if self.world.distributed else loss
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()

    def optimizer_step(self) -> dict[str, float]:
        """Clip (when --max-grad-norm > 0), step, advance the schedule, clear gradients.
        Returns the gradient norm before clipping and the learning rate used."""
        max_norm = self.cfg.max_grad_norm
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        grad_norm = (float(torch.nn.utils.clip_grad_norm_(self.params, max_norm))
                     if max_norm > 0 else 0.0)
        lr = self.scheduler.get_last_lr()[0]
        row = {"grad_norm": grad_norm, "lr": lr}
        if self.scaler is None:
            self.optimizer.step()
        else:
            row["loss_scale"] = self.scaler.get_scale()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return row

    def stop(self, reason: str) -> None:
        """End the run after the current step (its checkpoint is written first)."""
        self.stop_reason = reason

    # ------------------------------------------------------------------ the loop

    def evaluate_now(self, evaluate: Callable[[int], dict | None] | None, step: int) -> None:
        if evaluate is None:
            return
        self._evaluated.add(step)
        row = evaluate(step)
        if row:
            self.eval_history[step] = row
            self.log(step, row, split="eval")

    def fit(self, train_step: Callable[[int], dict],
            evaluate: Callable[[int], dict | None] | None = None,
            progress: Callable[[dict], dict] | None = None) -> None:
        """Run steps ``start_step .. total_steps - 1`` (see the class docstring). ``evaluate``
        runs before the first step of a fresh run, every ``--eval-every`` steps and after the
        last; ``progress(row)`` picks what the progress bar shows."""
        cfg, counter = self.cfg, self.counter
        seen_key = f"{counter}_seen"
        if self.metrics is None and self.run.is_main:
            raise RuntimeError("call Trainer.resume() before fit()")
        if self.state.step == 0:
            self.evaluate_now(evaluate, 0)
        bar = progress_bar(self.total_steps, self.state.step, cfg.progress and self.run.is_main,
                           self.name)
        self._started, self._seen_at_start = time.time(), self.state.counters[seen_key]
        for step in range(self.state.step, self.total_steps):
            t0 = time.time()
            row = train_step(step)
            if not self.steps_itself:
                row.update(self.optimizer_step())
            done = self.state.step = step + 1
            elapsed = time.time() - t0
            self.state.counters[seen_key] += row.get(counter, 0)
            row[f"{counter}_per_s"] = row.get(counter, 0) / max(elapsed, 1e-9)
            row["step_time_s"] = elapsed
            self.train_history[done] = row
            if done % cfg.log_every == 0 or done == self.total_steps:
                self.log(done, row)
            if progress is not None:
                bar.set_postfix(progress(row))
            bar.update(1)
            last = done == self.total_steps
            if cfg.eval_every > 0 and done % cfg.eval_every == 0 and not last:
                self.evaluate_now(evaluate, done)
            if self.stop_reason is None and (cfg.save_every > 0 and done % cfg.save_every == 0
                                             and not last):
                self.save_checkpoint()
            if self.stop_reason is not None:
                self.save_checkpoint()
                self.log_to.warning("stopping at step %d: %s", done, self.stop_reason)
                break
        bar.close()
        end = self.state.step
        if end not in self._evaluated:
            self.evaluate_now(evaluate, end)
        if end == self.total_steps and self.checkpoint_at_end:
            self.save_checkpoint()

    def save_checkpoint(self) -> Path | None:
        if not self.run.is_main:
            return None
        extra = {key: obj.state_dict() for key, obj in self.extra_state.items()}
        return ckpt.save_checkpoint(self.output, self.state.step, self.model, self.optimizer,
                                    self.scheduler, {**self.state.counters, **extra},
                                    keep=self.cfg.keep_checkpoints)

    def finish(self, summary: dict | None = None) -> None:
        """Log the run's summary (work done, time, rate) and close the metrics log."""
        seen_key = f"{self.counter}_seen"
        took = time.time() - self._started
        seen = self.state.counters[seen_key]
        if self.device.startswith("cuda"):
            summary = {**(summary or {}),
                       "cuda_peak_mib": torch.cuda.max_memory_allocated(self.device) / 2**20}
        self.log(self.state.step, {seen_key: seen, "train_time_s": took,
                                   f"{self.counter}_per_s": (seen - self._seen_at_start)
                                   / max(took, 1e-9), **(summary or {})}, split="summary")
        if self.metrics is not None:
            self.metrics.close()

    def save_final(self, tokenizer, name: str = "final"):
        """The plain Hugging Face folder ``<output>/<name>`` (LoRA merged in); returns (folder,
        the plain model)."""
        self.model.eval()
        if not self.run.is_main:
            return self.output / name, self.model
        final, plain = ckpt.save_final(self.output, self.model, tokenizer, name=name)
        self.log_to.info("saved %s", final)
        return final, plain
