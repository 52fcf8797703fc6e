"""The one training loop every trainer runs on (sft, reward, dpo, online-dpo, ppo).

A stage does three things with it:

1. ``run = start_run(cfg, validate=check_flags)``: the flag checks, the output folder checked
   (refusing to clobber an earlier run, or to resume one recorded with other settings), the
   seed, the device, and under ``torchrun`` the process group. The folder and the resolved config
   beside it are written only when training starts (``trainer.resume()``): a run refused for its
   data writes nothing.
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
switched on, where the model is wrapped for data parallelism under ``torchrun`` (DDP, or FSDP2
with ``--distributed fsdp``) and each process's share of a step is decided (``distributed.py``),
where only the first process writes (every process writes its own shard of an FSDP checkpoint),
and where a stage's data position follows from the step number alone (which is what makes a
resumed run exact, at any number of processes).

Under FSDP the parameters the root owns (embeddings, final norm, LM head) are gathered only in a
forward through ``trainer.forward``; every other forward of the trained model (held-out
evaluation, reference log-probs, sampling) runs inside ``with trainer.unsharded():``, which
gathers the whole model (``fit`` already does it around ``evaluate``). After training,
``trainer.full_model()`` is the model with its full weights (on the first process), which
``save_final`` writes.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import torch

from alignkit.config import config_to_dict, save_config
from alignkit.data.sft import micro_batch_indices, token_budget_split
from alignkit.errors import UserError
from alignkit.models import checkpoint as ckpt
from alignkit.models.loading import pick_device, resolve_model
from alignkit.models.lora import count_parameters, is_lora
from alignkit.models.precision import autocast, numerics_name, uses_fp16
from alignkit.training.distributed import (gathered, init_world, no_sync, plain_copy, shard,
                                           skeleton, wrap)
from alignkit.utils.distributed import World, barrier, sum_across
from alignkit.utils.logs import progress_bar
from alignkit.utils.metrics import MetricsLog, strict
from alignkit.utils.trackers import TrackerError, check_installed, parse_report_to

# what stages cache inside their output folder (recomputed when missing)
OUTPUT_CACHES = ("reference_logps.pt", "reference_logps.pt.tmp")
# what a run writes into its output folder; --overwrite removes exactly these
RUN_OUTPUTS = ("checkpoints", "final", "best", "metrics.jsonl", "metrics.jsonl.tmp", "tensorboard",
               *OUTPUT_CACHES,
               # the local records of --report-to trackers (a replaced run starts new ones)
               "wandb", "mlflow.db", "mlartifacts", "trackers.json")

# settings a resumed run may change: how long it runs, how often it logs, evaluates and saves,
# and where and how it computes; any other difference changes what the run learns
RESUME_MAY_CHANGE = frozenset({
    "output", "resume", "overwrite", "force", "max_steps", "epochs", "rounds", "log_every",
    "eval_every", "save_every", "keep_checkpoints", "progress", "report_to", "device",
    "distributed", "fsdp_cpu_offload", "max_tokens_per_micro_batch", "gradient_checkpointing",
    "rollout_engine", "rollout_dtype", "rollout_sync", "vllm_kv_cache_gb", "vllm_gpu_memory",
    "vllm_max_model_len"})

# --schedule -> the transformers schedule of the same shape (linear warm-up, then the decay)
SCHEDULES = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}


class Stateful(Protocol):
    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


@dataclass
class Run:
    """Where a stage writes, what it computes on, and this process's place among the ranks.

    Nothing is written until ``commit()`` (which ``Trainer.resume`` calls once the stage's data
    and models have loaded): a run refused for its input leaves --output as it found it."""

    cfg: Any
    output: Path
    device: str
    world: World = field(default_factory=World)
    committed: bool = False

    @property
    def is_main(self) -> bool:
        """The process that writes files (checkpoints, final model, metrics) and prints."""
        return self.world.is_main

    def commit(self) -> None:
        """The output folder (with --overwrite: the earlier run's outputs removed) and the
        resolved config beside it, written by the first process; once."""
        if self.committed:
            return
        if self.is_main:
            prepare_output(self.cfg)
            save_config(self.cfg, self.output)
        barrier(self.world)
        self.committed = True


def resume_differences(cfg, output: Path) -> list[str]:
    """``name: recorded -> now`` for each setting outside ``RESUME_MAY_CHANGE`` in which ``cfg``
    differs from the run recorded in ``output/config.yaml`` (settings the file does not record,
    from an older alignkit, are not compared)."""
    import yaml

    path = output / "config.yaml"
    if not path.is_file():
        return []
    try:
        recorded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read the recorded config of the run to resume ({e})")
    if not isinstance(recorded, dict):
        raise UserError(f"{path}: the recorded config of the run to resume is not a mapping")
    # through YAML as the file was, so that both sides are written the same way
    now = yaml.safe_load(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    return [f"{name}: {recorded[name]!r} -> {value!r}" for name, value in now.items()
            if name in recorded and name not in RESUME_MAY_CHANGE and recorded[name] != value]


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
    """Step 1 of every trainer: ``validate()`` (checks that need no files), the output folder
    checked (never clobbered; with --resume its recorded config must match, see
    ``resume_differences``), the seed and the device. Nothing is written yet (``Run.commit``)."""
    if validate is not None:
        validate()
    if getattr(cfg, "fsdp_cpu_offload", False) and getattr(cfg, "distributed", "ddp") != "fsdp":
        raise UserError("--fsdp-cpu-offload applies to --distributed fsdp only")
    if getattr(cfg, "max_tokens_per_micro_batch", 0) and getattr(cfg, "distributed", "") == "fsdp":
        # FSDP gathers each layer in lockstep, so every process must run as many micro-batches
        # as the others; a token budget cuts each process's share its own way
        raise UserError("--max-tokens-per-micro-batch works with --distributed ddp (under fsdp "
                        "every process must run the same number of micro-batches)")
    try:  # a tracker whose library is missing stops the run before any model loads
        check_installed(parse_report_to(getattr(cfg, "report_to", "none")), Path(cfg.output))
    except TrackerError as e:
        raise UserError(str(e)) from None
    output = prepare_output(cfg, write=False)
    changed = resume_differences(cfg, output) if getattr(cfg, "resume", False) else []
    if changed and not getattr(cfg, "force", False):
        raise UserError(f"--resume: {output} holds a run started with other settings ("
                        + "; ".join(changed) + "): its checkpoint cannot continue this run. "
                        "Resume with the recorded settings (--config "
                        f"{output / 'config.yaml'}), pick a new --output, or pass --force")
    world, device = init_world(pick_device(cfg.device))
    for difference in changed if world.is_main else []:
        logging.getLogger("alignkit").warning("--resume --force: continuing with %s",
                                              difference)
    ckpt.seed_everything(cfg.seed)
    return Run(cfg, output, device, world)


def steps_for_epochs(cfg, examples: int) -> int:
    """Optimiser steps of a run: ``--max-steps`` when set, else ``--epochs`` over ``examples``
    in micro-batches of ``--batch-size`` accumulated ``--grad-accum`` at a time."""
    if cfg.max_steps > 0:
        return cfg.max_steps
    micro_per_epoch = -(-examples // cfg.batch_size)
    return max(1, math.ceil(cfg.epochs * micro_per_epoch / cfg.grad_accum))


def make_optimizer(params, lr: float, weight_decay: float, fused: bool = True):
    """AdamW; the fused kernel (one pass over all parameters) where this torch has it and
    ``fused``."""
    if fused:
        try:
            return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
        except (RuntimeError, TypeError):
            pass
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


class TrainingDiverged(UserError):
    """A step's loss or gradients were not finite: the run stops before the optimiser takes
    them into the weights (nothing of the step is saved, no ``final/``)."""


def full_value(t: torch.Tensor) -> torch.Tensor:
    """A DTensor's whole value (the norm of FSDP's sharded gradients); a tensor as it is."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


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
    ``--resume`` with more ``--max-steps`` continues the run). ``sources``: where each training
    example came from (``file:line``), named when a batch's loss is not finite.
    ``idle_parameters``: some trainable parameters sit out some micro-batches (under torchrun DDP
    then looks for them; FSDP reduces whatever gradients were accumulated).

    With ``--distributed fsdp`` under torchrun ``model`` is sharded in place: its parameters
    become shards (DTensors) and only ``trainer.forward``, ``trainer.unsharded()`` and
    ``trainer.full_model()`` see whole weights."""

    def __init__(self, run: Run, model: torch.nn.Module, total_steps: int, *, name: str,
                 counter: str = "tokens", optimizer_steps_per_step: int | None = None,
                 extra_state: dict[str, Stateful] | None = None,
                 checkpoint_at_end: bool = False, idle_parameters: bool = False,
                 sources: Sequence[str] | None = None):
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
        self.wrapped = None  # the DDP module or the FSDP root
        self.sharded = False
        self._template = None  # the model's structure, filled with the full weights at the end
        self._unsharded_depth = 0
        self._frozen_roots: list[torch.nn.Module] = []  # frozen models sharded beside it
        if self.world.distributed:
            # stages that step themselves (PPO, online DPO) share out their own micro-batches
            if getattr(cfg, "max_tokens_per_micro_batch", 0) and (
                    cfg.batch_size * cfg.grad_accum < self.world.size):
                raise UserError(f"--batch-size x --grad-accum ({cfg.batch_size * cfg.grad_accum})"
                                f" examples per step cannot be shared by {self.world.size} "
                                "processes")
            # (a token budget shares out the step's examples themselves)
            if (not self.steps_itself and not getattr(cfg, "max_tokens_per_micro_batch", 0)
                    and cfg.grad_accum % self.world.size):
                raise UserError(f"--grad-accum {cfg.grad_accum} must be a multiple of the "
                                f"{self.world.size} processes: each runs --grad-accum / "
                                f"{self.world.size} of a step's micro-batches, so that the "
                                "step's batch is the same at every world size")
            if getattr(cfg, "distributed", "ddp") == "fsdp":
                self._template = skeleton(model)
                self.wrapped = shard(model, self.device, self.world,
                                     getattr(cfg, "fsdp_cpu_offload", False), what=cfg.model)
                self.sharded = True
            else:
                self.wrapped = wrap(model, self.device, idle_parameters)
        # under FSDP these are the shards (DTensors): the optimiser state is sharded with them
        self.params = [p for p in model.parameters() if p.requires_grad]
        # fp16 gradients underflow: the loss is scaled up before the backward, the gradients
        # unscaled before clipping, and a step with inf/NaN gradients skipped (scale halved);
        # under FSDP each rank sees a shard of the gradients, so the sharded scaler agrees on
        # inf/NaN across ranks before skipping
        self.scaler = None
        if uses_fp16(cfg.precision):
            if self.sharded:
                from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler
                self.scaler = ShardedGradScaler(torch.device(self.device).type)
            else:
                self.scaler = torch.amp.GradScaler(torch.device(self.device).type)
            self.extra_state["grad_scaler"] = self.scaler
        # the fused kernel takes plain tensors, not the shards
        self.optimizer = make_optimizer(self.params, cfg.lr, cfg.weight_decay,
                                        fused=not self.sharded)
        self.scheduler = make_scheduler(self.optimizer, cfg.schedule, cfg.warmup_steps,
                                        total_steps * (optimizer_steps_per_step or 1))
        self.state = TrainerState(counters={f"{counter}_seen": 0, "nonfinite_skipped": 0})
        # what the non-finite guard names: each example's source, the micro-batches handed out
        # in this step, each backward's "loss is finite" flag and the updates taken this step
        self.sources = list(sources) if sources is not None else None
        self._step_batches: list[list[int]] = []
        self._loss_finite: list[torch.Tensor] = []
        self._updates_in_step = 0
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
        start from. The output folder and config.yaml are written here first: the stage's data
        and models have loaded, so its input was accepted."""
        self.run.commit()
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
            if "eval_row" in saved:  # this step was evaluated before its checkpoint
                self._evaluated.add(self.state.step)
                if saved["eval_row"]:
                    self.eval_history[self.state.step] = saved["eval_row"]
            threads = saved.get("torch_threads")
            if self.device == "cpu" and threads not in (None, torch.get_num_threads()):
                self.log_to.warning(
                    "the checkpoint was written with %d CPU threads and this process has %d: "
                    "the run goes on, but its numbers can differ from an uninterrupted run's in "
                    "the last float digits (OMP_NUM_THREADS=%d resumes with the same count)",
                    threads, torch.get_num_threads(), threads)
        resuming = getattr(self.cfg, "resume", False)
        if self.run.is_main:
            try:
                self.metrics = MetricsLog(self.output,
                                          # a run killed before its first checkpoint
                                          # starts again from nothing
                                          resume_step=self.state.step if resuming
                                          and self.state.step > 0 else None,
                                          report_to=getattr(self.cfg, "report_to", "tensorboard"),
                                          config=config_to_dict(self.cfg))
            except TrackerError as e:  # a tracker's library is missing or its run cannot start
                raise UserError(str(e)) from e
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
                         "numerics": numerics_name(self.device, self.cfg.precision),
                         "gradient_checkpointing": getattr(self.cfg, "gradient_checkpointing",
                                                           False)}, split="setup")

    # ------------------------------------------------------------------ one step

    def autocast(self):
        """bf16 autocast where ``--precision`` asks for it (the default on CUDA)."""
        return autocast(self.device, self.cfg.precision)

    def micro_batches(self, step: int, examples: int, seed: int | None = None,
                      lengths: Sequence[int] | None = None) -> list[list[int]]:
        """Example indices of this process's micro-batches of optimiser step ``step``: the
        step's ``--grad-accum`` micro-batches (shuffled epochs, a pure function of the step and
        seed), every ``world size``-th of them from this rank on. With
        ``--max-tokens-per-micro-batch`` (and the examples' token ``lengths``) the same step's
        examples are instead shared out by tokens and cut by that budget
        (``token_budget_split``)."""
        seed = self.cfg.seed if seed is None else seed
        cfg, world = self.cfg, self.world
        budget = getattr(cfg, "max_tokens_per_micro_batch", 0)
        if budget and lengths is not None:
            step_examples = [i for j in range(cfg.grad_accum) for i in micro_batch_indices(
                step * cfg.grad_accum + j, examples, cfg.batch_size, seed)]
            batches = token_budget_split(step_examples, lengths, budget, world.size, world.rank)
        else:
            batches = [micro_batch_indices(step * cfg.grad_accum + j, examples, cfg.batch_size,
                                           seed) for j in range(world.rank, cfg.grad_accum,
                                                                world.size)]
        self._step_batches += batches
        return batches

    def sum(self, values):
        """``values`` (a list of numbers or a tensor) summed over every process: the whole
        step's counts and loss sums, from each process's share."""
        return sum_across(values, self.world, self.device)

    def forward(self, compute, *args, **kwargs):
        """``compute(model, *args)``, through the DDP or FSDP wrapper when there are several
        processes (so that the backward synchronises the gradients, and under FSDP the root's
        parameters are gathered)."""
        if self.wrapped is None:
            return compute(self.model, *args, **kwargs)
        return self.wrapped(compute, *args, **kwargs)

    def accumulate(self, last: bool):
        """Around the forward and backward of one micro-batch: gradients stay local until the
        step's ``last`` micro-batch, whose backward averages them over the processes."""
        return no_sync(self.wrapped, last)

    @contextlib.contextmanager
    def unsharded(self):
        """Around forwards of the trained model that do not go through ``forward`` (held-out
        evaluation, reference log-probs, sampling): under FSDP every parameter is gathered on
        entry and freed on exit, so that the forwards inside need no collective and processes
        may run different numbers of them; nothing otherwise. Nests; every process must enter
        it (the gathering is collective), and no training step runs inside."""
        if not self.sharded or self._unsharded_depth:
            self._unsharded_depth += 1
            try:
                yield
            finally:
                self._unsharded_depth -= 1
            return
        self._unsharded_depth += 1
        try:
            with contextlib.ExitStack() as stack:
                for root in (self.wrapped, *self._frozen_roots):
                    stack.enter_context(gathered(root))
                yield
        finally:
            self._unsharded_depth -= 1

    def hold_frozen(self, module: torch.nn.Module | None) -> torch.nn.Module | None:
        """A frozen model the trained one is compared with (the reference copy of PPO or online
        DPO with full fine-tuning): under FSDP sharded like the trained model, so that it takes
        1/N of its memory while training steps run, and gathered beside it inside
        ``unsharded()``; otherwise left as it is. Returns ``module``."""
        if module is not None and self.sharded:
            self._frozen_roots.append(shard(module, self.device, self.world,
                                            getattr(self.cfg, "fsdp_cpu_offload", False),
                                            what="the reference"))
        return module

    def full_model(self) -> torch.nn.Module | None:
        """The trained model with its full weights: the model itself, except under FSDP, where
        every process takes part in gathering them into a new plain copy on the first process's
        CPU (``None`` on the others): for a save (final/, PPO's best/)."""
        if not self.sharded:
            return self.model
        # a new copy of the structure each time: the caller may change it (merge LoRA)
        return plain_copy(self.model, skeleton(self._template), self.world)

    def backward(self, loss: torch.Tensor) -> None:
        """``loss`` is this process's share of the step's loss (normalised by the whole step's
        count); DDP and FSDP average the processes' gradients, so each is scaled by their
        number."""
        self._loss_finite.append(torch.isfinite(loss.detach()).all())  # read at the step's end
        loss = loss * self.world.size if self.world.distributed else loss
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()

    def optimizer_step(self) -> dict[str, float]:
        """Clip (when --max-grad-norm > 0), step, advance the schedule, clear gradients.
        Returns the gradient norm before clipping and the learning rate used.

        A non-finite loss in any of the update's backwards, or non-finite gradients (without an
        fp16 scaler, which skips those steps itself), stops the run with ``TrainingDiverged``
        before the optimiser steps; with ``--skip-nonfinite`` the update is skipped instead
        (the schedule still advances) and counted in ``nonfinite_skipped``."""
        max_norm = self.cfg.max_grad_norm
        if self.scaler is not None:
            with warnings.catch_warnings():
                # the sharded scaler multiplies the gradient shards by its (1,)-shaped inverse
                # scale, which DTensor replicates with a warning on every step
                warnings.filterwarnings("ignore", message="Found a non-scalar tensor with numel=1")
                self.scaler.unscale_(self.optimizer)
        grad_norm = float(full_value(torch.nn.utils.clip_grad_norm_(
            self.params, max_norm if max_norm > 0 else math.inf)))
        lr = self.scheduler.get_last_lr()[0]
        row = {"grad_norm": grad_norm, "lr": lr}
        problem = self._nonfinite_problem(grad_norm)
        self._loss_finite, self._step_batches = [], []
        self._updates_in_step += 1
        if problem is not None:
            if not getattr(self.cfg, "skip_nonfinite", False):
                self.optimizer.zero_grad(set_to_none=True)
                raise TrainingDiverged(
                    f"{self.name}: {problem}; the run stopped before this update reached the "
                    "weights (nothing of it is saved; no final/ is written). Look at the data "
                    "named (margins, labels, empty answers), lower --lr, or pass "
                    "--skip-nonfinite to skip such updates and count them")
            self.state.counters["nonfinite_skipped"] += 1
            self.log_to.warning("%s: %s; update skipped (--skip-nonfinite; %d so far)",
                                self.name, problem, self.state.counters["nonfinite_skipped"])
            if self.scaler is not None:
                self.scaler.update()  # the scaler's own record of this update ends here
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            return {**row, "nonfinite_skipped": self.state.counters["nonfinite_skipped"]}
        if self.scaler is None:
            self.optimizer.step()
        else:
            row["loss_scale"] = self.scaler.get_scale()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return row

    def _nonfinite_problem(self, grad_norm: float) -> str | None:
        """What is not finite in the update about to be taken (``None``: nothing). Every process
        reaches the same answer: the gradients are already averaged, and under torchrun the
        processes' losses are compared."""
        flags = torch.stack(self._loss_finite) if self._loss_finite else torch.ones(0, dtype=bool)
        bad_losses = [i for i, ok in enumerate(flags.tolist()) if not ok]
        bad_anywhere = len(bad_losses)
        if self.world.distributed:
            bad_anywhere = int(self.sum([float(bad_anywhere)])[0])
        grads_bad = self.scaler is None and not math.isfinite(grad_norm)
        if not bad_anywhere and not grads_bad:
            return None
        where = f"step {self.state.step + 1}"
        if self.steps_itself:
            where += f", update {self._updates_in_step + 1} of the step"
        if bad_losses:
            what = f"the loss of micro-batch {bad_losses[0] + 1} is not finite"
            if len(self._step_batches) == len(flags) and self.sources is not None:
                examples = self._step_batches[bad_losses[0]]
                shown = [self.sources[i] for i in examples[:8]]
                what += (" (its examples: " + ", ".join(shown)
                         + (f" and {len(examples) - 8} more" if len(examples) > 8 else "") + ")")
        elif bad_anywhere:
            what = "the loss is not finite on another process"
        else:
            what = f"the gradient norm is {grad_norm}"
        return f"at {where}, {what}"

    def stop(self, reason: str) -> None:
        """End the run after the current step (its checkpoint is written first)."""
        self.stop_reason = reason

    # ------------------------------------------------------------------ the loop

    def evaluate_now(self, evaluate: Callable[[int], dict | None] | None, step: int) -> None:
        if evaluate is None:
            return
        self._evaluated.add(step)
        with self.unsharded():
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
            self._step_batches, self._loss_finite, self._updates_in_step = [], [], 0
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
        """The checkpoint of the current step: written by the first process, or under FSDP by
        every process (its shards) with the first writing the rest."""
        if not self.run.is_main and not self.sharded:
            return None
        extra = {key: obj.state_dict() for key, obj in self.extra_state.items()}
        step = self.state.step
        state = {**self.state.counters, **extra,
                 # CPU reductions split their work by thread: a resume with another count is
                 # exact in everything but the last float digits, and says so (``resume``)
                 "torch_threads": torch.get_num_threads(),
                 # the last step's evaluation comes before its checkpoint: a resume from there
                 # (the run killed while finishing, or resumed once done) does not repeat it
                 **({"eval_row": strict(self.eval_history.get(step, {}))}
                    if step in self._evaluated else {})}
        if self.sharded:
            return ckpt.save_sharded_checkpoint(
                self.output, self.state.step, self.model, self.optimizer, self.scheduler, state,
                keep=self.cfg.keep_checkpoints, is_main=self.run.is_main)
        return ckpt.save_checkpoint(self.output, self.state.step, self.model, self.optimizer,
                                    self.scheduler, state, keep=self.cfg.keep_checkpoints)

    def finish(self, summary: dict | None = None) -> None:
        """Log the run's summary (work done, time, rate) and close the metrics log."""
        seen_key = f"{self.counter}_seen"
        took = time.time() - self._started
        seen = self.state.counters[seen_key]
        if self.state.counters["nonfinite_skipped"]:
            summary = {**(summary or {}),
                       "nonfinite_skipped": self.state.counters["nonfinite_skipped"]}
        if self.device.startswith("cuda"):
            summary = {**(summary or {}),
                       "cuda_peak_mib": torch.cuda.max_memory_allocated(self.device) / 2**20}
        self.log(self.state.step, {seen_key: seen, "train_time_s": took,
                                   f"{self.counter}_per_s": (seen - self._seen_at_start)
                                   / max(took, 1e-9), **(summary or {})}, split="summary")
        if self.metrics is not None:
            self.metrics.close()

    def save_final(self, tokenizer, name: str = "final", keep_training: bool = False):
        """The plain Hugging Face folder ``<output>/<name>`` (LoRA merged in), written once by
        the first process from the full weights; returns (folder, the plain model; under FSDP
        a copy on the CPU). ``keep_training`` (a ``best/`` written mid-run): a LoRA model's
        adapters are merged into a copy, so the live ones keep training."""
        was_training = self.model.training
        self.model.eval()
        model = self.full_model()
        if not self.run.is_main:
            self.model.train(was_training and keep_training)
            return self.output / name, self.model
        bad = [name for name, p in model.named_parameters() if not torch.isfinite(p).all()]
        if bad:  # the guard in optimizer_step keeps this from happening; a last line of defence
            raise TrainingDiverged(f"{self.name}: {len(bad)} weight tensor(s) hold NaN or inf "
                                   f"({', '.join(bad[:3])}); {name}/ was not written")
        if keep_training and is_lora(model) and model is self.model:
            import copy

            model = copy.deepcopy(model)
        model.eval()
        final, plain = ckpt.save_final(self.output, model, tokenizer, name=name,
                                       card=self.model_card(is_lora(model)))
        self.log_to.info("saved %s", final)
        self.model.train(was_training and keep_training)
        return final, plain

    def model_card(self, adapter: bool) -> str:
        """README.md of a saved folder: the stage, its base, key settings and the last held-out
        evaluation in ``metrics.jsonl``."""
        import dataclasses

        from alignkit.models.card import model_card
        from alignkit.utils.metrics import read_metrics

        path = self.output / "metrics.jsonl"
        rows = read_metrics(path) if path.is_file() else []
        heldout = next((r for r in reversed(rows) if r.get("split") == "eval"), {})
        settings = {f.name: getattr(self.cfg, f.name) for f in dataclasses.fields(self.cfg)}
        base = str(settings.get("model", ""))
        try:
            folder = resolve_model(base)
        except UserError:
            folder = base
        return model_card(self.name, base, settings, heldout, adapter, folder)
