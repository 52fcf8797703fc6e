"""Typed configs that are at once the CLI flags, the YAML schema and the saved record of a run.

A stage config is a flat dataclass assembled from the field groups below (model, data, optim,
run) plus the stage's own fields; ``DEFAULTS`` gives an inherited option another default without
declaring it again. A pipeline's config (the demo's) nests one stage config per stage it runs:
options ``ppo.max_steps``, flags ``--ppo.max-steps``, YAML ``ppo: {max_steps: ...}``.
Precedence: dataclass defaults < ``--config FILE.yaml`` < command-line flags.
The resolved config is written to ``<output>/config.yaml``. The parser is the standard library's
argparse (``--help`` stays instant; every flag keeps its spelling), plus a suggestion for a
mistyped flag or YAML key.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import functools
import logging
import math
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from alignkit.errors import UserError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Range:
    """The values a numeric option allows: a lower and an upper bound (each closed or open),
    single values allowed besides (``also``: e.g. -1 for "use --epochs"), and whether an infinite
    value counts (NaN never does)."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    also: tuple = ()
    inf: bool = False

    def allows(self, value: float) -> bool:
        if value in self.also:
            return True
        if isinstance(value, float) and (math.isnan(value) or (math.isinf(value) and not self.inf)):
            return False
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        if self.high is not None and (value > self.high or (self.high_open and value == self.high)):
            return False
        return True

    def describe(self) -> str:
        """``>= 1``, ``in [0, 1)``, ``-1 or >= 1``; empty when every number is allowed."""
        if self.low is not None and self.high is not None:
            bounds = (f"in {'(' if self.low_open else '['}{self.low}, {self.high}"
                      f"{')' if self.high_open else ']'}")
        elif self.low is not None:
            bounds = f"{'>' if self.low_open else '>='} {self.low}"
        elif self.high is not None:
            bounds = f"{'<' if self.high_open else '<='} {self.high}"
        else:
            bounds = ""
        return " or ".join([*(str(v) for v in self.also), *([bounds] if bounds else [])])


def opt(default: Any, help: str, choices: tuple | None = None, *, ge: float | None = None,
        gt: float | None = None, le: float | None = None, lt: float | None = None,
        also: tuple = (), inf: bool = False, unbounded: bool = False,
        required: bool = False) -> Any:
    """A config field with its help text (shown by ``--help``), optional allowed values and, for
    numbers, the allowed range: ``ge``/``gt`` (lower bound, closed/open), ``le``/``lt`` (upper
    bound), ``also`` (single values allowed besides, such as -1 or 0 with a special meaning),
    ``inf`` (an infinite float is allowed) or ``unbounded`` (any finite number). Every config
    rejects a value outside it, and NaN / inf in every float field, however it is built. A
    subclass that redefines a field to change its help keeps the range of the base class's
    field. ``required``: the command line must give it (the default, None, is for configs built
    in Python that never use the field)."""
    bounded = any(b is not None for b in (ge, gt, le, lt)) or also or inf
    if ge is not None and gt is not None or le is not None and lt is not None:
        raise TypeError("give one lower bound (ge or gt) and one upper bound (le or lt)")
    if required and default is not None:
        raise TypeError("a required option has no default")
    rng = (Range(ge if gt is None else gt, le if lt is None else lt, gt is not None,
                 lt is not None, tuple(also), inf) if bounded or unbounded else None)
    return field(default=default, metadata={"help": help, "choices": choices, "range": rng,
                                            "required": required})


# RETIRED of the stages that train nothing: a step limit would mean nothing there
RUNS_NO_STEPS = {"max_steps": "the stage runs no optimiser steps (the flag never had an effect "
                              "here)"}

# numpy takes only non-negative seeds; 32 bits keep the derived torch seeds
# (seed * 1_000_003 + epoch) inside 64 bits
SEED = {"ge": 0, "le": 2**32 - 1}


@functools.cache
def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _base_type(tp: Any) -> Any:
    """``Optional[int]`` -> ``int``."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if typing.get_origin(tp) is typing.Union and len(args) == 1 else tp


def _is_optional(tp: Any) -> bool:
    return typing.get_origin(tp) is typing.Union and type(None) in typing.get_args(tp)


class Config:
    """Base of every config: a value outside its option's choices or range is a ``UserError``
    when the config is built, from the command line or in Python (``dataclasses.replace``
    included).

    A field whose type is itself a ``Config`` (the demo's ``ppo: PPOConfig``) is a nested config:
    its options are ``ppo.max_steps`` (flag ``--ppo.max-steps``, YAML ``ppo: {max_steps: 16}``),
    checked like the config's own, except those in ``FILLED``."""

    # option name -> why it was removed; its flag and YAML key get a message instead of a value
    RETIRED: typing.ClassVar[dict[str, str]] = {}
    # nested config -> its options that this config sets itself (paths between stages, say) ->
    # from what; they have no flag and no YAML key, are not saved, and keep their defaults
    FILLED: typing.ClassVar[dict[str, dict[str, str]]] = {}
    # an earlier spelling of an option -> the option (``"ppo_steps": "ppo.max_steps"``): a flag
    # and YAML key that keep working (``alias_values`` says what they set)
    ALIASES: typing.ClassVar[dict[str, str]] = {}

    def __post_init__(self) -> None:
        check_nested(self)
        check_values(type(self), _values(self))

    @classmethod
    def alias_values(cls, old: str, value: Any) -> dict[str, Any]:
        """The options an earlier spelling ``old`` given ``value`` sets: the one it names."""
        return {cls.ALIASES[old]: value}

    def validate(self) -> None:
        """What a stage checks before it runs: the values (again: a field may have been set after
        the config was built) and that every required option is given."""
        values = _values(self)
        check_values(type(self), values)
        missing = missing_required(type(self), values)
        if missing:
            raise UserError("; ".join(missing))


def config(cls: type) -> type:
    """``@dataclass`` for a config class, plus its ``DEFAULTS`` (``{"lr": 1e-3}``): inherited
    options that only take another default here, declared once in the base class (same type,
    help, choices and range)."""
    defaults = cls.__dict__.get("DEFAULTS", {})
    if defaults:
        if "__annotations__" not in cls.__dict__:
            cls.__annotations__ = {}
        for name, value in defaults.items():
            base = next((b for b in cls.__mro__[1:]
                         if name in getattr(b, "__dataclass_fields__", {})), None)
            if base is None:
                raise TypeError(f"{cls.__name__}.DEFAULTS: no inherited option {name!r}")
            cls.__annotations__[name] = _field_types(base)[name]
            setattr(cls, name, field(default=value,
                                     metadata=base.__dataclass_fields__[name].metadata))
    return dataclass(cls)


@dataclass
class ChatTemplateArgs(Config):
    chat_template: Optional[str] = opt(None, "Chat template for a model without one, or to "
                                       "replace its own: a Jinja file or a named template "
                                       "(chatml, llama3, zephyr, plain). Every causal LM this "
                                       "stage loads gets it (policy, reference, local judges, "
                                       "causal reward models); saved folders keep it.")


@dataclass
class ModelArgs(ChatTemplateArgs):
    model: str = opt("default", "Model to start from: 'default' (packaged SmolLM2-135M-Instruct), "
                     "a local Hugging Face folder, a .gguf file, or a hub id.")
    lora: bool = opt(False, "Train LoRA adapters (peft) instead of all weights.")
    lora_r: int = opt(16, "LoRA rank.", ge=1)
    lora_alpha: int = opt(32, "LoRA alpha (scale = alpha / r).", ge=1)
    lora_dropout: float = opt(0.0, "Dropout on the LoRA input.", ge=0, lt=1)
    lora_targets: str = opt("q_proj,k_proj,v_proj,o_proj",
                            "Comma-separated module names that get LoRA adapters.")
    lora_init: Optional[str] = opt(None, "With --lora: go on training these adapters (a peft "
                                   "adapter folder, or a saved model folder with adapter/ "
                                   "inside, trained on --model with the same rank and targets) "
                                   "instead of fresh ones. The reference stays --model itself "
                                   "(adapters disabled), so the KL is measured from where the "
                                   "adapters first started.")
    device: str = opt("auto", "Device: auto (CUDA when present, else CPU), cpu, cuda, cuda:N.")
    precision: str = opt("auto", "Numerics: auto (fp32 on CPU, bf16 autocast on CUDA), fp32, "
                         "bf16, fp16 (autocast with loss scaling). Weights stay fp32.",
                         ("auto", "fp32", "bf16", "fp16"))


@dataclass
class DataArgs(Config):
    data: Optional[str] = opt(None, "Training data: .jsonl, .parquet, .csv or a saved HF datasets "
                              "folder; 'demo' means the demonstrations alignkit ships; a hub "
                              "id org/name[:split] or json:FILES (datasets.load_dataset); a "
                              "mixture a.jsonl:0.7,b.jsonl:0.3 or a mixture .yaml file.")
    eval_data: Optional[str] = opt(None, "Held-out data file; without it --eval-fraction of --data "
                                   "is held out.")
    eval_fraction: float = opt(0.05, "Fraction of --data held out for evaluation when --eval-data "
                               "is not given (0 disables evaluation).", ge=0, lt=1)
    max_length: int = opt(512, "Longest tokenised example; longer ones are an error unless "
                          "--skip-invalid.", ge=1)
    skip_invalid: bool = opt(False, "Drop invalid records (counted and reported) instead of "
                             "stopping.")
    oversample: Optional[str] = opt(None, "Weight records of --data by a field's value: "
                                    "FIELD=VALUE:FACTOR[,...] (category=harmful:3 draws each "
                                    "such record 3 times); seeded by --seed.")
    mixture_size: Optional[int] = opt(None, "Examples drawn from --data (a mixture, or with "
                                      "--oversample); default: all its records, each its "
                                      "--oversample factor times.", ge=1)


@dataclass
class OptimArgs(Config):
    lr: float = opt(2e-5, "Peak learning rate.", gt=0)
    weight_decay: float = opt(0.0, "AdamW weight decay.", ge=0)
    warmup_steps: int = opt(0, "Linear warm-up steps.", ge=0)
    schedule: str = opt("cosine", "Learning-rate decay after warm-up.",
                        ("cosine", "linear", "constant"))
    max_grad_norm: float = opt(1.0, "Clip the global gradient norm to this (0 disables).", ge=0)
    skip_nonfinite: bool = opt(False, "When a step's loss or gradients are not finite (NaN or "
                               "inf), skip that optimiser step and count it (metrics: "
                               "nonfinite_skipped) instead of stopping the run with an error.")
    batch_size: int = opt(8, "Examples per micro-batch.", ge=1)
    grad_accum: int = opt(1, "Micro-batches accumulated per optimiser step.", ge=1)
    max_steps: int = opt(-1, "Optimiser steps to run; -1 means --epochs full passes.",
                         ge=1, also=(-1,))
    epochs: float = opt(1.0, "Passes over the training data when --max-steps is -1.", gt=0)
    gradient_checkpointing: bool = opt(False, "Recompute each transformer layer's activations in "
                                       "the backward pass instead of keeping them: less memory "
                                       "for about a third more compute (works with LoRA).")
    max_tokens_per_micro_batch: int = opt(0, "Cut each step's examples into micro-batches by "
                                          "memory instead of --batch-size: at most this many "
                                          "(padded) tokens each, longest first, shared evenly "
                                          "across processes; the step's batch and loss stay the "
                                          "same (0: off).", ge=0)
    distributed: str = opt("ddp", "Data parallelism under torchrun (ignored in one process): ddp "
                           "(every process holds the whole model, optimiser and gradients) or "
                           "fsdp (FSDP2: each holds 1/N of them and gathers one decoder layer at "
                           "a time; for models whose training state does not fit one device).",
                           ("ddp", "fsdp"))
    fsdp_cpu_offload: bool = opt(False, "With --distributed fsdp: keep the sharded parameters, "
                                 "gradients and optimiser state in CPU memory and step the "
                                 "optimiser there (less accelerator memory, slower steps; a run "
                                 "on the CPU has them there already).")


@dataclass
class PackingArgs(Config):
    packing: bool = opt(True, "Padding-free batches: several examples share a row, each attending "
                        "only to itself (used for a batch when it is clearly cheaper).")
    pack_length: int = opt(0, "Longest packed row in tokens (0: --max-length).", ge=0)
    share_prefix: bool = opt(True, "With packing, run a shared prompt prefix once (a chat "
                             "template's system prompt per row; for reward models also each "
                             "prompt once for all its responses); every example still computes "
                             "exactly what it would alone.")


@dataclass
class SafetyEvalArgs(Config):
    eval_adversarial: str = opt("none", "At every held-out evaluation also answer an adversarial "
                                "suite ('shipped' or a JSONL file of {prompt, category, "
                                "expect}; none: off) and log refusal_rate (harmful and "
                                "jailbreak prompts refused), over_refusal_rate (benign prompts "
                                "refused) and uncertainty_rate: safety over training.")
    eval_adversarial_prompts: int = opt(0, "At most N prompts of each category of "
                                        "--eval-adversarial (0: all).", ge=0)


@dataclass
class RolloutArgs(ChatTemplateArgs):
    rollout_engine: str = opt("hf", "What writes the sampled answers: hf (alignkit's own batched "
                              "sampler on the policy) or vllm (a vLLM engine in this process "
                              "that takes the policy's new weights after every update; pip "
                              "install -e '.[vllm]').", ("hf", "vllm"))
    rollout_dtype: str = opt("auto", "With --rollout-engine vllm: the engine's numerics, auto "
                             "(fp32 on CPU, bf16 on CUDA), fp32, bf16 or fp16. Training keeps "
                             "--precision; the log-probs that train are always the trainer's.",
                             ("auto", "fp32", "bf16", "fp16"))
    vllm_kv_cache_gb: float = opt(1.0, "With --rollout-engine vllm on a CPU: GiB of memory for "
                                  "the engine's KV cache.", gt=0)
    vllm_gpu_memory: float = opt(0.3, "With --rollout-engine vllm on CUDA: the share of the GPU's "
                                 "memory the engine takes (the trainer uses the rest).",
                                 gt=0, le=1)
    vllm_max_model_len: int = opt(0, "With --rollout-engine vllm: the longest prompt + answer "
                                  "the engine holds (0: the model's own limit).", ge=0)


@dataclass
class TrainedRolloutArgs(RolloutArgs):
    """The rollout options of a stage whose policy trains while it samples."""

    rollout_sync: str = opt("auto", "With --rollout-engine vllm and --lora: after an update push "
                            "only the adapter (adapter: vLLM serves it as a LoRA request) or the "
                            "merged weights (merged); auto: adapter on CUDA, merged on CPU "
                            "(vLLM's CPU LoRA kernels decode ~2.5x slower).",
                            ("auto", "adapter", "merged"))


@dataclass
class RunArgs(Config):
    output: str = opt("runs/run", "Output folder (config.yaml, metrics.jsonl, checkpoints/, "
                      "final/).")
    seed: int = opt(42, "Seed for data order, initialisation and sampling.", **SEED)
    log_every: int = opt(1, "Write metrics every N steps.", ge=1)
    eval_every: int = opt(50, "Held-out evaluation every N steps (0: only at start and end).", ge=0)
    save_every: int = opt(100, "Checkpoint every N steps (0: only final/).", ge=0)
    keep_checkpoints: int = opt(2, "Keep the newest N checkpoints (0 keeps all).", ge=0)
    resume: bool = opt(False, "Continue from the newest checkpoint in --output exactly where it "
                       "stopped.")
    overwrite: bool = opt(False, "Replace the outputs of an earlier run in --output (without it, "
                          "an existing run is never overwritten).")
    force: bool = opt(False, "With --resume: continue even where this run's settings differ from "
                      "the recorded config.yaml in something that changes what it learns (data, "
                      "model, lr, seed ...; each difference is logged as a warning).")
    progress: bool = opt(True, "Show a progress bar.")
    report_to: str = opt("tensorboard", "Experiment trackers that get the run's metrics and its "
                         "resolved config besides metrics.jsonl: a comma-separated list of "
                         "tensorboard, wandb, mlflow and trackio, or none (the last three: pip "
                         "install -e '.[trackers]').")

    def __post_init__(self) -> None:
        super().__post_init__()
        # the tracker names are checked where the trackers live
        from alignkit.utils.trackers import TrackerError, parse_report_to

        try:
            parse_report_to(self.report_to)
        except TrackerError as e:
            raise UserError(str(e)) from None


@config
class SFTConfig(ModelArgs, DataArgs, PackingArgs, OptimArgs, RunArgs):
    """Stage 1: supervised fine-tuning on demonstrations."""

    DEFAULTS = {"output": "runs/sft"}

    train_on_prompt: bool = opt(False, "Also learn the prompt tokens (default: loss on response "
                                "tokens only).")
    chat: str = opt("auto", "Render string prompts with the model's chat template: auto (when the "
                    "model has one), always, never.", ("auto", "always", "never"))


# ---------------------------------------------------------------------------------------------
# dataclass <-> argparse / YAML


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def closest(name: str, candidates: typing.Iterable[str]) -> str | None:
    """The candidate a mistyped ``name`` most likely meant, if any is close: of the three most
    similar, the one sharing the longest start with it (a typo rarely hits the first letters:
    ``--max-stpes`` means ``--max-prompts``, not the similar-looking ``--aspects``)."""
    found = difflib.get_close_matches(name, sorted(candidates), n=3)
    if not found:
        return None
    return max(found, key=lambda c: len(os.path.commonprefix([name.lstrip("-"), c.lstrip("-")])))


# where the parser puts a retired option's flag; build_config turns it into a UserError
RETIRED_DEST = "retired:"


# where the parser puts the value of an option's earlier spelling (``ALIASES``): build_config
# translates it and names it as the user typed it
ALIAS_DEST = "alias:"


class Option(typing.NamedTuple):
    """One option of a config: a field of its own, or of one of its nested configs."""

    path: str      # "lr"; "ppo.max_steps" for the option max_steps of the nested config ppo
    owner: type    # the config class that declares the field
    field: dataclasses.Field
    default: Any   # its default in the config that holds it (a nested config's: the parent's)


def nested_configs(cls: type) -> dict[str, type]:
    """The fields of ``cls`` that are configs themselves, by name."""
    types = _field_types(cls)
    return {f.name: types[f.name] for f in dataclasses.fields(cls)
            if isinstance(types[f.name], type) and issubclass(types[f.name], Config)}


def nested_default(cls: type, name: str) -> Any:
    """The default value of the nested config field ``name`` of ``cls``."""
    f = cls.__dataclass_fields__[name]
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


@functools.cache
def config_options(cls: type, filled: bool = False) -> tuple[Option, ...]:
    """Every option of ``cls`` in field order, a nested config's in its place; without those the
    config fills in itself (``FILLED``) unless ``filled``."""
    nested, out = nested_configs(cls), []
    for f in dataclasses.fields(cls):
        if f.name not in nested:
            out.append(Option(f.name, cls, f, f.default))
            continue
        sub, default = nested[f.name], nested_default(cls, f.name)
        skip = () if filled else getattr(cls, "FILLED", {}).get(f.name, {})
        out += [Option(f"{f.name}.{g.name}", sub, g, getattr(default, g.name))
                for g in dataclasses.fields(sub) if g.name not in skip]
    return tuple(out)


def default_values(cls: type) -> dict[str, Any]:
    """Every option's default, nested and filled-in ones included, by path."""
    return {o.path: o.default for o in config_options(cls, filled=True)}


def check_nested(cfg: Any) -> None:
    """Each nested config is of its declared class, with the options its parent fills in left at
    their defaults (a value given there would be silently replaced)."""
    cls = type(cfg)
    for name, sub in nested_configs(cls).items():
        value = getattr(cfg, name)
        if type(value) is not sub:
            raise UserError(f"option {name!r}: expected a {sub.__name__}, got "
                            f"{type(value).__name__}")
        filled = cls.FILLED.get(name, {})
        if filled:
            default = nested_default(cls, name)
            for key, source in filled.items():
                if getattr(value, key) != getattr(default, key):
                    raise UserError(f"option '{name}.{key}' is filled in by the pipeline "
                                    f"({source}); leave it out")


class _AliasedStore(argparse.Action):
    """Stores a flag's value under ``dest``, or under ``ALIAS_DEST + <earlier name>`` when the user
    typed an earlier spelling (``old_names``: option string -> earlier name)."""

    def __init__(self, option_strings, dest, old_names=None, **kwargs):
        self.old_names = old_names or {}
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        old = self.old_names.get(option_string)
        setattr(namespace, ALIAS_DEST + old if old else self.dest, values)


class _Switch(_AliasedStore):
    """A boolean flag with its negative spellings (``--ppo.gold`` / ``--ppo.no-gold``)."""

    def __init__(self, option_strings, dest, negatives=(), **kwargs):
        self.negatives = set(negatives)
        super().__init__(option_strings, dest, nargs=0, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        super().__call__(parser, namespace, option_string not in self.negatives, option_string)


def _negative(path: str) -> str:
    """``--no-lora``; ``--sft.no-lora`` for a nested option."""
    head, _, name = path.rpartition(".")
    return f"--{head}.no-{name.replace('_', '-')}" if head else f"--no-{name.replace('_', '-')}"


def _add_option(group, option: Option, old_names: typing.Sequence[str]) -> None:
    f, path = option.field, option.path
    tp = _base_type(_field_types(option.owner)[f.name])
    help_text = f.metadata.get("help", "").replace("%", "%%")  # argparse formats help
    choices = f.metadata.get("choices")
    shown = "required" if f.metadata.get("required") else f"default: {option.default}"
    allowed = field_range(option.owner, f.name)
    allowed = allowed.describe() if allowed is not None else ""
    kwargs: dict[str, Any] = {"dest": path, "default": argparse.SUPPRESS,
                              "help": f"{help_text} ({shown}"
                                      f"{'; allowed: ' + allowed if allowed else ''})"}
    plain = "." not in path and not old_names
    if tp is bool:
        if plain:
            group.add_argument(flag_name(path), action=argparse.BooleanOptionalAction, **kwargs)
            return
        strings = [s for name in (path, *old_names) for s in (flag_name(name), _negative(name))]
        old = {s: name for name in old_names for s in (flag_name(name), _negative(name))}
        group.add_argument(*strings, action=_Switch, old_names=old,
                           negatives=[_negative(n) for n in (path, *old_names)], **kwargs)
        return
    kwargs["type"] = tp if tp in (int, float, str) else str
    kwargs["metavar"] = tp.__name__.upper() if tp in (int, float, str) else "VALUE"
    if choices:
        kwargs["choices"] = choices
        kwargs.pop("metavar")
    if not plain:
        kwargs["action"] = _AliasedStore
        kwargs["old_names"] = {flag_name(name): name for name in old_names}
    group.add_argument(*(flag_name(n) for n in (path, *old_names)), **kwargs)


def add_config_flags(parser: argparse.ArgumentParser, cls: type) -> None:
    """One flag per option; booleans get ``--x/--no-x``; a nested config's options are
    ``--name.x`` in a group of their own; an earlier spelling (``ALIASES``) is a second flag of
    the option it names. Defaults are left unset (``SUPPRESS``) so that only flags the user typed
    override the YAML file. A retired option keeps a hidden flag (with or without a value) so
    that ``build_config`` can say why it went."""
    old_names: dict[str, list[str]] = {}
    for old, path in getattr(cls, "ALIASES", {}).items():
        old_names.setdefault(path, []).append(old)
    nested = nested_configs(cls)
    if nested:  # one usage entry per option would run to a hundred lines
        parser.usage = (f"%(prog)s [-h] [--config FILE.yaml] [--OPTION VALUE ...] "
                        f"[--{{{','.join(nested)}}}.OPTION VALUE ...]")
    groups = {g: parser.add_argument_group(title) for g, title in FLAG_GROUPS}
    own = parser.add_argument_group(f"{cls.__name__} options")
    options = config_options(cls)
    for o in sorted((o for o in options if "." not in o.path),
                    key=lambda o: _group_index(cls, o.path)):
        group = next((groups[g] for g, _ in FLAG_GROUPS
                      if issubclass(cls, g) and o.path in g.__dataclass_fields__), own)
        _add_option(group, o, old_names.get(o.path, ()))
    for name, sub in nested.items():
        filled = getattr(cls, "FILLED", {}).get(name, {})
        title = cls.__dataclass_fields__[name].metadata.get("help") or f"{sub.__name__} options"
        group = parser.add_argument_group(
            f"{name}: {title}", "Set by the pipeline, not here: " + "; ".join(
                f"{k} ({v})" for k, v in filled.items()) if filled else None)
        for o in sorted((o for o in options if o.path.startswith(name + ".")),
                        key=lambda o: _group_index(sub, o.field.name)):
            _add_option(group, o, old_names.get(o.path, ()))
    for name in getattr(cls, "RETIRED", {}):
        parser.add_argument(flag_name(name), nargs="?", dest=RETIRED_DEST + name,
                            default=argparse.SUPPRESS, help=argparse.SUPPRESS)


FLAG_GROUPS = ((ModelArgs, "model"), (DataArgs, "data"), (PackingArgs, "batching"),
               (OptimArgs, "optimisation"), (RunArgs, "run"))


def _group_index(cls: type, name: str) -> int:
    for i, (g, _) in enumerate(FLAG_GROUPS):
        if issubclass(cls, g) and name in g.__dataclass_fields__:
            return i
    return len(FLAG_GROUPS)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    base = _base_type(tp)
    if value is None:
        if _is_optional(tp):
            return None
        raise UserError(f"{where}: must not be empty")
    if base is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise UserError(f"{where}: expected true or false, got {value!r}")
    if base is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise UserError(f"{where}: expected an integer, got {value!r}")
        try:
            return int(value)
        except ValueError:
            raise UserError(f"{where}: expected an integer, got {value!r}") from None
    if base is float:
        if isinstance(value, bool):
            raise UserError(f"{where}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError, OverflowError):  # OverflowError: an int past float range
            raise UserError(f"{where}: expected a number, got {value!r}") from None
    if base is str:
        if isinstance(value, (dict, list)):
            raise UserError(f"{where}: expected a string, got {value!r}")
        return str(value)
    return value


def read_yaml_file(path: str, what: str) -> tuple[Any, dict[tuple, int]]:
    """A YAML file's data, and the 1-based line of every mapping key and list item by its path
    (``("principles", 2)``; keys as strings) for messages. A file that is missing, a folder,
    unreadable, not UTF-8 or not YAML is a ``UserError`` naming it (``what``: "config file" ...)
    and the line where there is one."""
    import yaml

    p = Path(path)
    if p.is_dir():
        raise UserError(f"{path}: a folder, not a {what}")
    if not p.is_file():
        raise UserError(f"{path}: {what} not found")
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise UserError(f"{path}: cannot read the {what} ({e.strerror or e})") from None
    try:
        text = raw.decode("utf-8-sig")  # -sig: a byte-order mark is not part of the first key
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise UserError(f"{path}:{line}: not UTF-8 text (byte 0x{raw[e.start]:02x}); save the "
                        "file as UTF-8") from None
    try:
        data = yaml.safe_load(text)
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise UserError(f"{path}{line}: not valid YAML ({getattr(e, 'problem', e)})") from None
    except RecursionError:
        raise UserError(f"{path}: not valid YAML (nested too deeply)") from None
    except ValueError:  # an integer longer than Python converts (sys.get_int_max_str_digits)
        raise UserError(f"{path}: not valid YAML (a number with too many digits)") from None
    lines: dict[tuple, int] = {}
    todo = [((), root)] if root is not None else []
    while todo:
        at, node = todo.pop()
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode):
                    lines[at + (key.value,)] = key.start_mark.line + 1
                    todo.append((at + (key.value,), value))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                lines[at + (i,)] = item.start_mark.line + 1
                todo.append((at + (i,), item))
    return data, lines


def read_yaml_overrides(cls: type, path: str, where: dict[str, str] | None = None
                        ) -> dict[str, Any]:
    """The options of a YAML file, typed. ``where`` (when given) receives, per option, how an
    error names it: ``file.yaml:LINE: option 'key'``."""
    raw, lines = read_yaml_file(path, "config file")
    raw = raw or {}
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a mapping of option: value")
    options = {o.path: o for o in config_options(cls)}
    nested = nested_configs(cls)
    aliases = getattr(cls, "ALIASES", {})
    out: dict[str, Any] = {}
    given: dict[str, str] = {}  # option -> how the file gave it, to name a second setting

    def put(option: str, value: Any, at: str) -> None:
        if option in given:
            raise UserError(f"{at} sets {option!r} again (already {given[option]})")
        out[option], given[option] = value, at
        if where is not None:
            where[option] = at

    def typed(option: str, value: Any, at: str) -> Any:
        o = options[option]
        return _coerce(value, _field_types(o.owner)[o.field.name], at)

    def unknown(at: str, name: str, candidates: typing.Iterable[str]) -> UserError:
        close = closest(name, candidates)
        now = f" (now {aliases[close]!r})" if close in aliases else ""
        return UserError(f"{at} is not an option of this stage (see --help)"
                         + (f"; did you mean {close!r}{now}?" if close else ""))

    for key, value in raw.items():
        k = str(key).replace("-", "_")
        line_no = lines.get((str(key),), 0)
        at = f"{path}:{line_no}: option {key!r}" if line_no else f"{path}: option {key!r}"
        if k in getattr(cls, "RETIRED", {}):  # earlier config.yaml files hold it: ignored
            log.warning("%s is ignored: %s", at, cls.RETIRED[k])
            continue
        if k in nested:
            _read_nested(cls, k, str(key), value, lines, path, put, typed, unknown)
        elif k in aliases:
            for option, v in cls.alias_values(k, typed(aliases[k], value, at)).items():
                put(option, v, at)
        elif k in options:
            put(k, typed(k, value, at), at)
        else:
            raise unknown(at, k, [*options, *nested, *aliases])
    return out


def _read_nested(cls: type, name: str, key: str, value: Any, lines: dict, path: str, put, typed,
                 unknown) -> None:
    """The block ``name: {option: value ...}`` of a nested config in a YAML file."""
    sub = nested_configs(cls)[name]
    line_no = lines.get((key,), 0)
    if value is None:  # `ppo:` with nothing under it
        return
    if not isinstance(value, dict):
        raise UserError(f"{path}:{line_no}: option {key!r}: expected a mapping of option: value "
                        f"(the {sub.__name__} options), got {value!r}")
    filled = getattr(cls, "FILLED", {}).get(name, {})
    own = [f"{name}.{f.name}" for f in dataclasses.fields(sub) if f.name not in filled]
    for sub_key, sub_value in value.items():
        k = str(sub_key).replace("-", "_")
        shown = f"{key}.{sub_key}"
        line_no = lines.get((key, str(sub_key)), 0)
        at = f"{path}:{line_no}: option {shown!r}" if line_no else f"{path}: option {shown!r}"
        if k in getattr(sub, "RETIRED", {}):
            log.warning("%s is ignored: %s", at, sub.RETIRED[k])
        elif k in filled:
            raise UserError(f"{at} is filled in by the pipeline ({filled[k]}); leave it out")
        elif f"{name}.{k}" in own:
            put(f"{name}.{k}", typed(f"{name}.{k}", sub_value, at), at)
        else:
            raise unknown(at, f"{name}.{k}", own)


def _values(cfg: Any) -> dict[str, Any]:
    """Every option's value by path, those of nested configs (all of them) included."""
    nested = nested_configs(type(cfg))
    out = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if f.name in nested and dataclasses.is_dataclass(value):
            out.update({f"{f.name}.{k}": v for k, v in _values(value).items()})
        else:
            out[f.name] = value
    return out


def choice_problems(cls: type, values: dict[str, Any]) -> list[str]:
    out = []
    for o in config_options(cls, filled=True):
        choices = o.field.metadata.get("choices")
        if choices and o.path in values and values[o.path] not in choices:
            out.append(f"option {o.path!r}: {values[o.path]!r} is not one of "
                       f"{', '.join(choices)}")
    return out


def field_range(cls: type, name: str) -> Range | None:
    """The range of a numeric field: its own, else that of the nearest base class that declares
    one (a subclass may redefine a field to give it its own help)."""
    for klass in cls.__mro__:
        f = getattr(klass, "__dataclass_fields__", {}).get(name)
        if f is not None and f.metadata.get("range") is not None:
            return f.metadata["range"]
    return None


def range_problems(cfg: Any, where: dict[str, str] | None = None) -> list[str]:
    """Every numeric value outside its field's range, and NaN or inf in any float field (unless
    the range allows inf), as ``<where> must be <range>, got <value>`` in field order; ``where``
    maps a field to how the user gave it (``--batch-size``, ``run.yaml:3: option 'batch_size'``)."""
    return value_range_problems(type(cfg), _values(cfg), where)


def value_range_problems(cls: type, values: dict[str, Any], where: dict[str, str] | None = None
                         ) -> list[str]:
    """``range_problems`` of the options in ``values`` (a config's options, by path)."""
    out = []
    for o in config_options(cls, filled=True):
        name = o.field.name
        base, value = _base_type(_field_types(o.owner)[name]), values.get(o.path)
        if (base not in (int, float) or not isinstance(value, (int, float))
                or isinstance(value, bool)):
            continue
        rng = field_range(o.owner, name)
        if rng is None:
            if base is int:
                continue
            rng = Range()
        if rng.allows(value):
            continue
        allowed = rng.describe()
        if base is float and not rng.inf:
            allowed = f"a finite number {allowed}".rstrip()
        shown = (where or {}).get(o.path, f"option {o.path!r}")
        out.append(f"{shown} must be {allowed}, got {value!r}")
    return out


def validate_ranges(cfg: Any, where: dict[str, str] | None = None) -> None:
    """``UserError`` naming every out-of-range value (one line, the problems joined by "; ")."""
    problems = range_problems(cfg, where)
    if problems:
        raise UserError("; ".join(problems))


def check_values(cls: type, values: dict[str, Any], where: dict[str, str] | None = None) -> None:
    """A ``UserError`` for the first value outside its choices, else for every value outside its
    range (what ``Config.__post_init__`` and ``build_config`` check)."""
    problems = choice_problems(cls, values)
    if problems:
        raise UserError(problems[0])
    problems = value_range_problems(cls, values, where)
    if problems:
        raise UserError("; ".join(problems))


def missing_required(cls: type, values: dict[str, Any]) -> list[str]:
    """``--flag is required: <help>`` for every required option that is None in ``values`` (a
    nested config's required options that its parent fills in are its parent's business)."""
    return [f"{flag_name(o.path)} is required: {o.field.metadata['help']}"
            for o in config_options(cls)
            if o.field.metadata.get("required") and values.get(o.path) is None]


def build_config(cls: type, args: argparse.Namespace, extra: dict[str, Any] | None = None) -> Any:
    """Defaults < YAML (``args.config``) < flags given on the command line < ``extra``. A retired
    flag, a value outside its choices or range (all such values at once), then a required option
    left out, is a ``UserError``."""
    retired = [k[len(RETIRED_DEST):] for k in vars(args) if k.startswith(RETIRED_DEST)]
    if retired:
        raise UserError("; ".join(f"{flag_name(k)} was removed from this stage: "
                                  f"{cls.RETIRED[k]}; leave it out" for k in retired))
    values: dict[str, Any] = {}
    where: dict[str, str] = {}  # how each value was given, for error messages
    if getattr(args, "config", None):
        values.update(read_yaml_overrides(cls, args.config, where))
    options = {o.path: o for o in config_options(cls)}
    flags = {k: v for k, v in vars(args).items() if k in options}
    for key, value in flags.items():  # "none" or nothing turns an optional value off (YAML null)
        if (isinstance(value, str) and value.strip().lower() in ("", "none", "null")
                and _is_optional(_field_types(options[key].owner)[options[key].field.name])):
            flags[key] = None
    typed = {k: flag_name(k) for k in flags}
    for key, value in vars(args).items():
        if not key.startswith(ALIAS_DEST):
            continue
        old = key[len(ALIAS_DEST):]
        for option, v in cls.alias_values(old, value).items():
            if option in flags:
                raise UserError(f"{flag_name(old)} and {typed[option]} both set {option!r}; "
                                "give one")
            flags[option], typed[option] = v, flag_name(old)
    values.update(flags)
    where.update(typed)
    values.update(extra or {})
    where.update({k: f"option {k!r}" for k in extra or {}})
    # checked here, before the config exists, to name each value the way the user gave it
    resolved = default_values(cls) | values
    check_values(cls, resolved, where)
    missing = missing_required(cls, resolved)
    if missing:
        raise UserError("; ".join(missing))
    return assemble(cls, values)


def assemble(cls: type, values: dict[str, Any]) -> Any:
    """``cls`` from option values by path: ``ppo.max_steps`` goes to the nested config ``ppo``
    (its other options keep the parent's defaults for it)."""
    top = {k: v for k, v in values.items() if "." not in k}
    for name in nested_configs(cls):
        own = {k.split(".", 1)[1]: v for k, v in values.items() if k.startswith(name + ".")}
        if own:
            base = top.get(name, None) or nested_default(cls, name)
            top[name] = dataclasses.replace(base, **own)
    return cls(**top)


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """The config as saved: nested configs as mappings, without the options their parent fills
    in (they are not options of the parent)."""
    out = dataclasses.asdict(cfg)
    for name, filled in getattr(type(cfg), "FILLED", {}).items():
        for key in filled:
            out[name].pop(key, None)
    return out


def save_config(cfg: Any, output_dir: str | os.PathLike, name: str = "config.yaml") -> Path:
    """Write the resolved config beside the run's outputs (atomically)."""
    import yaml

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / name
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), encoding="utf-8")
    tmp.replace(path)
    return path


@config
class RewardConfig(ModelArgs, DataArgs, PackingArgs, OptimArgs, RunArgs):
    """Stage 2: a reward model (or an ensemble, or per-aspect heads) from preferences."""

    DEFAULTS = {"lr": 5e-5, "warmup_steps": 10, "eval_fraction": 0.1, "output": "runs/reward"}

    model: str = opt("minilm", "Reward-model backbone: 'minilm' (the packaged all-MiniLM-L6-v2 "
                     "encoder, fast on CPU), 'default', a local folder (e.g. runs/demo/sft/final), "
                     "a .gguf file or a hub id.")
    backbone: str = opt("auto", "How the backbone reads a response: encoder (text pair, mean "
                        "pooling), causal (chat-rendered, last token), or auto.",
                        ("auto", "encoder", "causal"))
    ensemble: int = opt(1, "Members of the reward ensemble (different seeds and bootstrap "
                        "resamples).", ge=1)
    shared_backbone: bool = opt(False, "Ensemble members share one frozen backbone (heads only: "
                                "cheap, but only the heads learn).")
    bootstrap: bool = opt(True, "With --ensemble > 1, each member sees a Poisson(1) bootstrap "
                          "resample of the prompts.")
    reinit_layers: int = opt(0, "Each member draws its own random weights for the top N "
                             "transformer blocks of its backbone (more diverse members: their "
                             "spread then tracks what the data leave open).", ge=0)
    aspects: str = opt("", "Comma-separated reward heads (e.g. helpful,harmless,honest); empty: "
                       "the aspects tagged in the data, or one 'reward' head.")
    loss: str = opt("bradley_terry", "Loss of K-way rankings: bradley_terry on their K(K-1)/2 "
                    "pairs (InstructGPT), or plackett_luce on the whole ranking (pairwise "
                    "records always use Bradley-Terry).", ("bradley_terry", "plackett_luce"))
    label_smoothing: float = opt(0.0, "Label smoothing for noisy labels (0 = plain "
                                 "Bradley-Terry).", ge=0, le=0.5)
    annotator_weights: str = opt("", "Per-annotator loss weights, e.g. 'ann-0=1,ann-4=0.3'.")
    combine: str = opt("mean", "How ensemble members combine into the reward to optimise.",
                       ("mean", "min", "mean_minus_std", "mean_minus_var"))
    uncertainty_penalty: float = opt(1.0, "lambda of mean_minus_std / mean_minus_var.", ge=0)
    aspect_weights: str = opt("", "Weights of the aspects, e.g. 'helpful=1,honest=0.5' (empty: "
                              "equal).")
    aspect_floor: str = opt("", "Constraint mode: floors of gated aspects, e.g. 'harmless=0'; "
                            "below it the reward is the shortfall minus --gate-penalty.")
    gate_penalty: float = opt(1.0, "Penalty under a broken aspect floor.", ge=0)
    chat: str = opt("auto", "Render prompts with the chat template (causal backbones).",
                    ("auto", "always", "never"))
    batch_size: int = opt(8, "Prompts (whole comparison groups) per micro-batch.")


@config
class PPOConfig(TrainedRolloutArgs, ModelArgs, DataArgs, OptimArgs, SafetyEvalArgs,
                RunArgs):
    """Stage 3: PPO (or RLOO / GRPO / REINFORCE++) against a reward model, leashed by a KL penalty
    to the frozen reference (the starting policy), with a reward-hacking monitor."""

    DEFAULTS = {"schedule": "constant", "save_every": 10, "output": "runs/ppo"}

    model: Optional[str] = opt(None, "Policy to start from (also the frozen reference): usually "
                               "the SFT model (e.g. runs/demo/sft/final); 'default', a folder, a "
                               ".gguf file or a hub id.", required=True)
    # not required here: the recipe names a missing one, after checks of the other options
    reward_model: Optional[str] = opt(None, "Reward model folder (written by alignkit reward, "
                                      "e.g. runs/demo/reward/final): one model, an ensemble or "
                                      "aspect heads.")
    data: Optional[str] = opt("demo-prompts", "Training prompts ({prompt[, category]}); "
                              "'demo-prompts' are the shipped ones.")
    eval_data: Optional[str] = opt("demo-prompts-heldout", "Held-out prompts for the monitor "
                                   "(none: no monitor).")
    eval_prompts: int = opt(32, "Held-out prompts the monitor samples each time (0: all).", ge=0)
    advantage: str = opt("gae", "Advantage estimator: gae (PPO with a value head), rloo, grpo "
                         "(k samples per prompt, group baselines) or reinforce++ (global "
                         "baseline).", ("gae", "rloo", "grpo", "reinforce++"))
    batch_size: int = opt(16, "Prompts per rollout batch (one PPO step).")
    samples_per_prompt: int = opt(1, "Responses sampled per prompt (rloo / grpo need >= 2).", ge=1)
    minibatch_size: int = opt(8, "Rollouts per PPO minibatch (one optimiser step each).", ge=1)
    ppo_epochs: int = opt(2, "Passes over each rollout batch.", ge=1)
    grad_accum: int = opt(1, "Micro-batches per minibatch (minibatch_size / grad_accum each).")
    max_steps: int = opt(40, "Rollout batches (PPO steps) to run.", ge=1)
    lr: float = opt(1e-5, "Peak learning rate (LoRA usually wants ~1e-4).")
    max_new_tokens: int = opt(48, "Longest sampled response.", ge=1)
    max_prompt_length: int = opt(256, "Longest tokenised prompt (longer ones are an error unless "
                                 "--skip-invalid).", ge=1)
    # the policy gradient needs sampled rollouts (greedy ones have no log-probs to ratio)
    temperature: float = opt(1.0, "Sampling temperature (also divides the training logits).", gt=0)
    top_p: float = opt(1.0, "Nucleus sampling (1: off).", gt=0, le=1)
    top_k: int = opt(0, "Top-k sampling (0: off).", ge=0)
    kl_coef: float = opt(0.05, "KL penalty coefficient beta (initial value when adaptive).", ge=0)
    kl_estimator: str = opt("k1", "Per-token KL in the reward: k1 (log-ratio) or k3 "
                            "((r - 1) - log r); both are logged.", ("k1", "k2", "k3"))
    adaptive_kl: bool = opt(False, "Adapt beta towards --kl-target (Ziegler et al. 2019).")
    kl_target: float = opt(6.0, "Target KL (nats per response) of the adaptive controller.", gt=0)
    kl_horizon: int = opt(10000, "Horizon of the adaptive controller (samples).", ge=1)
    clip: float = opt(0.2, "PPO ratio clip epsilon.", gt=0)
    value_clip: float = opt(0.2, "Value clip epsilon.", gt=0)
    vf_coef: float = opt(0.1, "Value loss coefficient.", ge=0)
    entropy_coef: float = opt(0.0, "Entropy bonus coefficient.", ge=0)
    gamma: float = opt(1.0, "Discount.", ge=0, le=1)
    lam: float = opt(0.95, "GAE lambda.", ge=0, le=1)
    whiten_rewards: bool = opt(False, "Whiten the token rewards of each batch (keeping their "
                               "mean).")
    whiten_advantages: Optional[bool] = opt(None, "Whiten advantages per batch (default: on for "
                                            "gae; off for rloo, whose leave-one-out baseline is "
                                            "the whole point, as Ahmadian et al. 2024 and TRL; "
                                            "grpo and reinforce++ normalise their own way).")
    kl_penalty: str = opt("auto", "Where the KL to the reference acts: in the reward (a "
                          "per-token penalty, Ziegler et al. 2019) or as a separate k3 loss term "
                          "(GRPO, Shao et al. 2024); auto: loss for grpo, reward otherwise.",
                          ("auto", "reward", "loss"))
    loss_aggregation: str = opt("token_mean", "How per-token losses reduce: token_mean (every "
                                "token of the minibatch weighs the same) or sequence_mean (each "
                                "response's own mean, then the mean over responses, as the "
                                "GRPO paper).", ("token_mean", "sequence_mean"))
    reward_normalization: str = opt("saved", "saved: the reward model's own normalisation "
                                    "(alignkit reward fits it on its training responses); "
                                    "reference: before training, refit every member's offset "
                                    "and scale so fresh samples of the starting policy score "
                                    "mean 0, std 1 (Huang et al. 2024).", ("saved", "reference"))
    normalization_prompts: int = opt(64, "With --reward-normalization reference: training "
                                     "prompts the starting policy answers for the fit.", ge=1)
    target_kl: float = opt(0.0, "Stop a step's PPO epochs early when the approximate KL to the "
                           "rollout policy exceeds 1.5x this (0: never).", ge=0)
    missing_eos_penalty: float = opt(1.0, "Subtracted from the score of a response cut at "
                                     "--max-new-tokens (it never ended).", ge=0)
    rollout_is_cap: float = opt(0.0, "With --rollout-engine vllm: weigh each token's policy loss "
                                "by min(pi_trainer / pi_engine, CAP), truncated importance "
                                "sampling for rollouts drawn in other numerics (e.g. "
                                "--rollout-dtype bf16; 0: off, 2 is usual).", ge=0)
    critic: str = opt("shared", "Value head on the policy's backbone (shared), on a separate "
                      "copy of the starting policy with a zero head (separate), or a separate "
                      "value model initialised from the reward model: its backbone and its "
                      "(normalised) head, Huang et al. 2024 (reward_model; needs a causal reward "
                      "model with the policy's tokenizer).", ("shared", "separate",
                                                              "reward_model"))
    value_model: Optional[str] = opt(None, "With --critic reward_model: the reward-model folder "
                                     "the value model starts from (default: --reward-model), "
                                     "e.g. a causal reward model beside an encoder ensemble "
                                     "that gives the reward.")
    keep_dropout: bool = opt(False, "Keep the model's dropout on while training (default: off in "
                             "the policy, critic and LoRA adapters, so the rollout, old, reference "
                             "and training forwards compute the same function: the first ratio is "
                             "1 and the KL at step 0 is 0).")
    combine: Optional[str] = opt(None, "Override how the reward ensemble combines: mean, min, "
                                 "mean_minus_std (uncertainty-weighted, Coste et al. 2023), "
                                 "mean_minus_var.")
    uncertainty_penalty: Optional[float] = opt(None, "Override lambda of mean_minus_std / "
                                               "mean_minus_var.", ge=0)
    reward_members: Optional[int] = opt(None, "Score with the ensemble's first N members only "
                                        "(1: one member alone, a single reward model; unset: "
                                        "all).", ge=1)
    gold: bool = opt(True, "Score held-out samples with the gold scorer in the monitor "
                     "(simulated-annotator experiments).")
    select_by: str = opt("lcb", "How best/ is chosen among the monitor's held-out readings: lcb "
                         "(the reward ensemble's mean minus its members' spread: what a user "
                         "without gold has), proxy (the optimised reward) or gold (the "
                         "simulation's hidden scorer; needs --gold). With --gold on, the gold "
                         "regret of the choice is logged.", ("lcb", "proxy", "gold"))
    forecast_margin: float = opt(0.8, "Monitor: fit Gao et al.'s RL over-optimisation form to "
                                 "the held-out readings of the ensemble's lower bound and warn "
                                 "once KL reaches this share of the KL where it is forecast to "
                                 "peak (0: no forecast warning).", ge=0, le=1)
    # inf is allowed in the monitor's thresholds: it never warns
    kl_budget: float = opt(0.0, "Monitor: warn when held-out KL (nats per response) exceeds this "
                           "(0: no budget).", ge=0, inf=True)
    length_drift: float = opt(2.0, "Monitor: warn when mean response length moves beyond this "
                              "factor of its start value.", ge=1, inf=True)
    min_entropy: float = opt(0.05, "Monitor: warn when mean token entropy falls below this.", ge=0)
    stop_on_hacking: bool = opt(False, "Stop the run when the monitor warns.")
    chat: str = opt("auto", "Render prompts with the chat template.", ("auto", "always", "never"))
    eval_every: int = opt(10, "Run the monitor every N steps (0: only at start and end).")


@config
class DPOConfig(ModelArgs, DataArgs, PackingArgs, OptimArgs, SafetyEvalArgs, RunArgs):
    """DPO and its family (IPO, cDPO, hinge, robust, RPO) on preference pairs or rankings: the
    policy learns from comparisons directly, against a frozen reference (the starting policy)."""

    DEFAULTS = {"eval_fraction": 0.1, "eval_every": 25, "output": "runs/dpo"}

    model: Optional[str] = opt(None, "Policy to start from (also the reference): usually the SFT "
                               "model (e.g. runs/demo/sft/final); 'default', a folder, a .gguf "
                               "file or a hub id.", required=True)
    data: Optional[str] = opt(None, "Preference pairs or rankings (.jsonl/.parquet/.csv); a "
                              "ranking gives all its K(K-1)/2 pairs.")
    loss: str = opt("sigmoid", "sigmoid (DPO), ipo, hinge (SLiC) or robust (rDPO); "
                    "--label-smoothing with sigmoid is cDPO.", ("sigmoid", "ipo", "hinge", "robust"))
    beta: float = opt(0.1, "KL strength beta (IPO: tau).", gt=0)
    label_smoothing: float = opt(0.0, "Assumed label-flip rate: cDPO with --loss sigmoid, the "
                                 "noise rate of --loss robust.", ge=0, le=0.5)
    rpo_alpha: float = opt(0.0, "Add alpha * per-token NLL of the chosen response (RPO).", ge=0)
    reference_free: bool = opt(False, "No reference model (its log-probs taken as 0).")
    keep_dropout: bool = opt(False, "Keep the model's dropout on while training (default: off, "
                             "LoRA dropout included, so the policy and the reference log-probs "
                             "come from the same function: the step-0 loss is exactly ln 2).")
    keep_empty: bool = opt(False, "Train on pairs with an empty response (default: skip them, "
                           "counted in metrics).")
    sample_prompts: Optional[str] = opt("demo-prompts-heldout", "Held-out prompts the policy "
                                        "answers at each evaluation, for its KL to the reference "
                                        "(and gold score with --gold); none: skip.")
    sample_count: int = opt(16, "How many of --sample-prompts to answer (0: all).", ge=0)
    max_new_tokens: int = opt(48, "Longest sampled answer at evaluation.", ge=1)
    gold: bool = opt(True, "Score the sampled answers with the gold scorer (simulated-annotator "
                     "experiments).")
    select_by: str = opt("none", "Keep best/: the checkpoint whose held-out answers "
                         "(--sample-prompts, at each evaluation) score best by lcb (the "
                         "--select-reward-model ensemble's mean minus its members' spread: what "
                         "a user without gold has), proxy (that model's reward) or gold (the "
                         "simulation's hidden scorer; needs --gold); none: final/ only. With "
                         "--gold on, the gold regret of the choice is logged.",
                         ("none", "lcb", "proxy", "gold"))
    select_reward_model: Optional[str] = opt(None, "Reward-model folder that scores the held-out "
                                             "answers for --select-by lcb / proxy (online DPO "
                                             "with --labeler reward_model: its labeler when "
                                             "unset).")
    chat: str = opt("auto", "Render prompts with the chat template.", ("auto", "always", "never"))
    lr: float = opt(5e-7, "Peak learning rate (full fine-tuning; LoRA usually wants ~5e-5..5e-4).")
    batch_size: int = opt(8, "Prompts (whole comparison groups) per micro-batch.")


@config
class OnlineDPOConfig(TrainedRolloutArgs, DPOConfig):
    """Iterative (online) DPO: each round the current policy answers prompts, a labeler picks the
    better and worse of its answers, and DPO learns from those fresh pairs (Xu et al. 2023;
    Guo et al. 2024)."""

    DEFAULTS = {"output": "runs/online-dpo"}

    data: Optional[str] = opt("demo-prompts", "Training prompts ({prompt[, category]}).")
    # --labeler simulated needs none
    reward_model: Optional[str] = opt(None, "Reward model (or ensemble) that labels the pairs "
                                      "(--labeler reward_model; e.g. runs/demo/reward/final).")
    labeler: str = opt("reward_model", "Who labels: reward_model (best vs worst of the "
                       "samples by the combined reward) or simulated (the gold scorer's panel).",
                       ("reward_model", "simulated"))
    combine: Optional[str] = opt(None, "Override how the ensemble combines (mean, min, "
                                 "mean_minus_std, mean_minus_var).")
    rounds: int = opt(8, "Sample -> label -> train rounds (--max-steps N > 0 overrides).", ge=1)
    prompts_per_round: int = opt(16, "Prompts answered per round.", ge=1)
    samples_per_prompt: int = opt(2, "Answers sampled per prompt (>= 2).", ge=2)
    dpo_epochs: int = opt(1, "Passes over a round's pairs (one optimiser step per micro-batch).",
                          ge=1)
    uncertain: str = opt("keep", "Pairs the ensemble is unsure of: keep, drop (std of the "
                         "members' margins above --max-std, or mean margin below --min-margin), "
                         "or soft (the members' mean Bradley-Terry probability, from their raw "
                         "trained rewards, as the label).", ("keep", "drop", "soft"))
    max_std: float = opt(0.0, "With --uncertain drop: drop a pair whose member-margin std "
                         "exceeds this, in normalised reward units (0: no limit).", ge=0)
    min_margin: float = opt(0.0, "With --uncertain drop: drop a pair whose mean margin is below "
                            "this, in normalised reward units (those of the combined reward).",
                            unbounded=True)
    gold_scale: float = opt(2.0, "--labeler simulated: gold scale of the panel.", ge=0)
    # greedy answers to one prompt are all the same: no pair to learn from
    temperature: float = opt(1.0, "Sampling temperature.", gt=0)
    top_p: float = opt(1.0, "Nucleus sampling (1: off).", gt=0, le=1)
    max_prompt_length: int = opt(256, "Longest tokenised prompt.", ge=1)
    eval_every: int = opt(2, "Held-out sampling every N rounds (0: only at start and end).")
    save_every: int = opt(2, "Checkpoint every N rounds (0: only final/).")


@config
class DemoLabelConfig(Config):
    """The demo's stage 2 labels: the SFT policy answers training prompts K times and the
    simulated panel ranks the answers."""

    prompts: int = opt(254, "Training prompts whose sampled answers the simulated panel ranks "
                       "(254: all the shipped ones; 96 left the reward model near chance on "
                       "held-out pairs).", ge=1)
    labels_per_prompt: int = opt(2, "Rankings per prompt, each by a panel member drawn at "
                                 "random, with its own noise (the demo's stages: 5).", ge=1)
    num_responses: int = opt(4, "Answers sampled per prompt (K).", ge=2)
    gold_scale: float = opt(2.0, "Gold scale of the simulated annotators.", ge=0)
    length_bias: float = opt(0.0, "Verbosity bias of every simulated annotator: gold units it "
                             "adds to an answer per 10 words, so longer answers look better to "
                             "it, as they do to people (0: none; the labels' report gives how "
                             "often the longer answer was chosen, and how often gold prefers "
                             "it; < 0: shorter answers look better).", unbounded=True)
    temperatures: str = opt("0.7,1.0,1.2", "Sampling temperatures of the policy's answers, "
                            "comma-separated: the answers to a prompt are shared out over them "
                            "in turn (diverse candidates, as InstructGPT labelled).")
    base_answers: int = opt(1, "Of the K answers to a prompt, how many the model before SFT "
                            "writes (diverse candidates; 0: the policy writes all).", ge=0)
    aspects: str = opt("", "Label each aspect of the gold score on its own, each record tagged "
                       "with it, for a reward head per aspect (e.g. helpful,harmless: K-way "
                       "rankings by helpfulness, and harmlessness asked of the pairs that differ "
                       "in it); empty: one overall ranking.")

    def aspect_list(self, flag: str = "--label") -> tuple[str, ...]:
        return _aspect_list(self.aspects, f"{flag}.aspects")

    def temperature_list(self, flag: str = "--label") -> list[float]:
        values = _float_list(self.temperatures, f"{flag}.temperatures", 0.0, math.inf)
        if not values or 0.0 in values:
            raise UserError(f"{flag}.temperatures {self.temperatures!r}: give temperatures > 0 "
                            "(sampled answers), separated by commas")
        return values

    def validate(self, flag: str = "--label") -> None:
        """``flag``: the option that holds this config (``--label``, the demo's ``--relabel``),
        named in the errors."""
        super().validate()
        self.temperature_list(flag)
        self.aspect_list(flag)
        if self.base_answers >= self.num_responses:
            raise UserError(f"{flag}.base-answers {self.base_answers} leaves the policy no "
                            f"answer of the {self.num_responses} per prompt ({flag}."
                            "num-responses)")


# what the demo sets in every stage's config from its own options
_DEMO_RUN = {"seed": "--seed", "device": "--device", "progress": "--progress",
             "chat_template": "--chat-template"}
_DEMO_ROLLOUT = {name: f"--{name.replace('_', '-')}" for name in (
    "rollout_engine", "rollout_dtype", "vllm_kv_cache_gb", "vllm_gpu_memory",
    "vllm_max_model_len")}
# options of stage 1 that the flat demo config had as its own flags (--lr: stage 1's lr)
_DEMO_SFT_FLAGS = (
    "data", "eval_data", "eval_fraction", "max_length", "skip_invalid", "lora", "lora_r",
    "lora_alpha", "lora_dropout", "lora_targets", "lr", "weight_decay", "warmup_steps", "schedule",
    "max_grad_norm", "batch_size", "grad_accum", "max_steps", "epochs", "packing", "pack_length",
    "share_prefix", "log_every", "eval_every", "save_every", "keep_checkpoints", "resume",
    "train_on_prompt", "chat")


# the simulated panel's rankings of the demo, beside its stage folders
DEMO_LABELS = "prefs.jsonl"
# the same rankings with the base model's answers taken out: the SFT policy's own, for DPO
DEMO_POLICY_LABELS = "prefs-policy.jsonl"


@config
class DemoConfig(RolloutArgs):
    """The main job: the whole pipeline on the packaged model. Demo-wide options, then one
    nested config per stage with the demo's defaults (``--ppo.max-steps 10``, in YAML
    ``ppo: {max_steps: 10}``); the demo fills in the paths between stages and its seed, device,
    precision and progress."""

    FILLED = {
        "sft": {"model": "--model", "output": "<output>/sft", "precision": "--precision",
                "overwrite": "--overwrite", **_DEMO_RUN},
        "reward": {"data": "the panel's rankings, <output>/prefs.jsonl (round k > 1: and "
                           "<output>/prefs-r2.jsonl ... prefs-r<k>.jsonl)",
                   "output": "<output>/reward (earlier rounds: <output>/reward-r<k>)",
                   "overwrite": "always", **_DEMO_RUN},
        "ppo": {"model": "the SFT policy, <output>/sft/final",
                "lora_init": "round k > 1 with --continue-rounds (the default): round "
                             "k - 1's adapters, <output>/ppo-r<k-1>/final/adapter; else none",
                "reward_model": "the round's reward ensemble, <output>/reward/final",
                "output": "<output>/ppo (earlier rounds: <output>/ppo-r<k>)",
                "max_new_tokens": "--max-new-tokens",
                "eval_prompts": "--compare-prompts, at most 16",
                "eval_every": "a quarter of the round's steps", "precision": "--precision",
                "overwrite": "always", **_DEMO_RUN, **_DEMO_ROLLOUT},
        "dpo": {"model": "the SFT policy, <output>/sft/final",
                "data": "the panel's rankings of the SFT policy's own answers, "
                        "<output>/prefs-policy.jsonl (--dpo-base-answers, or no "
                        "--label.base-answers: <output>/prefs.jsonl)", "output": "<output>/dpo",
                "precision": "--precision", "overwrite": "always", **_DEMO_RUN},
    }
    # the flat demo flags (and YAML keys) of earlier versions
    ALIASES = {
        **{name: f"sft.{name}" for name in _DEMO_SFT_FLAGS},
        "label_prompts": "label.prompts", "labels_per_prompt": "label.labels_per_prompt",
        "num_responses": "label.num_responses", "gold_scale": "label.gold_scale",
        "reward_ensemble": "reward.ensemble", "reward_steps": "reward.max_steps",
        "reward_lr": "reward.lr", "ppo_steps": "ppo.max_steps", "ppo_batch_size": "ppo.batch_size",
        "ppo_lr": "ppo.lr", "ppo_kl_coef": "ppo.kl_coef", "ppo_combine": "ppo.combine",
        "dpo_steps": "dpo.max_steps", "dpo_lr": "dpo.lr", "dpo_beta": "dpo.beta",
    }

    model: str = opt("default", "Model to start from: 'default' (packaged SmolLM2-135M-Instruct), "
                     "a local Hugging Face folder, a .gguf file, or a hub id.")
    output: str = opt("runs/demo", "Output folder: config.yaml, one folder per stage (sft/, "
                      "reward/, ppo/, dpo/), prefs.jsonl, demo_summary.json, report/.")
    seed: int = opt(42, "Seed of every stage (data order, initialisation, sampling, the panel).",
                    **SEED)
    device: str = opt("auto", "Device: auto (CUDA when present, else CPU), cpu, cuda, cuda:N.")
    precision: str = opt("auto", "Numerics of the policies: auto (fp32 on CPU, bf16 autocast on "
                         "CUDA), fp32, bf16.", ("auto", "fp32", "bf16"))
    progress: bool = opt(True, "Show progress bars.")
    overwrite: bool = opt(True, "Replace an earlier demo's stage 1 in --output (the later "
                          "stages are always replaced).")
    quick: bool = opt(False, "A short version (fewer steps, prompts and samples).")
    annotate: bool = opt(False, "Instead of training: start the annotation app filled with the "
                         "demo's prompts and sampled answers; prints the URL and sign-in tokens.")
    samples: int = opt(4, "Held-out prompts to answer before and after training.", ge=1)
    max_new_tokens: int = opt(48, "Length limit of the sampled answers (every stage).", ge=1)
    compare_prompts: int = opt(96, "Held-out prompts on which base, SFT, PPO, DPO and best-of-n "
                               "are compared (gold score, its difference to SFT paired by "
                               "prompt with its standard error, KL to SFT); 96: all the "
                               "shipped held-out prompts.", ge=1)
    best_of: int = opt(4, "n of the best-of-n baseline (SFT samples, reward ensemble picks).",
                       ge=1)
    compare_samples: int = opt(4, "Answers per held-out prompt from each compared policy (its "
                               "gold on a prompt is their mean: more answers, a smaller paired "
                               "standard error).", ge=1)
    base_samples: int = opt(1, "Answers per held-out prompt from the base model in the "
                            "comparison (at most --compare-samples): it trails SFT by about 20 "
                            "paired standard errors with one, so more buy nothing but time.",
                            ge=1)
    best_of_pool: int = opt(6, "SFT answers per held-out prompt in the comparison (at least "
                            "--best-of and --compare-samples): the SFT row averages them, and "
                            "best-of-n is the exact expectation over every n of them (not one "
                            "noisy draw of n).", ge=1)
    skip_ppo: bool = opt(False, "Leave out stage 3, PPO (as --ppo-steps 0 did).")
    skip_dpo: bool = opt(False, "Leave out stage 4, DPO (as --dpo-steps 0 did).")
    dpo_base_answers: bool = opt(
        False, "DPO also learns from the rankings' answers of the model before SFT "
               "(--label.base-answers). Left out by default (DPO then learns from "
               "prefs-policy.jsonl): they are there for the reward model's sake, and DPO spent "
               "half its pairs pushing down answers the SFT policy no longer writes (seed 1: "
               "+0.12 +/- 0.05 gold over SFT at KL 2.8 with them, +0.27 +/- 0.06 at KL 1.3 "
               "without, in half the time).")
    rounds: int = opt(2, "Rounds of RLHF in stage 3 (iterated RLHF, as InstructGPT and "
                      "Anthropic ran it): after each PPO run but the last, the panel ranks that "
                      "policy's answers to the training prompts (--relabel), the ensemble learns "
                      "again from every ranking so far, and PPO goes on against it "
                      "(--continue-rounds). An ensemble learned from SFT answers alone misjudges "
                      "the answers PPO moves to (it paid for brevity: one round's PPO gained "
                      "+0.10 gold, two rounds' +0.32). Earlier rounds keep reward-r<k>/, "
                      "ppo-r<k>/ and prefs-r<k+1>.jsonl; reward/ and ppo/ hold the last. Each "
                      "round adds about 8 minutes on 2 CPU cores.", ge=1)
    earlier_rounds_ppo_steps: int = opt(
        0, "PPO steps of every round but the last (0: ppo.max-steps). Those policies "
           "write the answers the panel ranks next (and are where the next round starts, "
           "--continue-rounds), but fewer steps cost the last round its "
           "gain: with 8 of 16 the round-2 policy gained +0.10 gold over SFT, with 16 +0.32.",
        ge=0)
    later_rounds_reward_steps: int = opt(
        40, "Training steps of every round's reward ensemble but the first (0: "
            "reward.max-steps; never more than it): a first ensemble given more steps "
            "(reward.max-steps) leaves the later ones at 40, which holds the demo's time.",
        ge=0)
    continue_rounds: bool = opt(
        True, "Each round's PPO after the first goes on training the LoRA adapters of the "
              "round before (--ppo.lora-init; the KL is still to SFT) against the ensemble that "
              "just learned from that policy's answers, instead of starting again from SFT "
              "(--no-continue-rounds). Round 2 then builds on round 1's 16 steps at no cost: "
              "on the same folders, +0.246 +/- 0.052 gold over SFT instead of +0.033 +/- 0.051 "
              "(seed 1), +0.337 +/- 0.055 instead of +0.266 +/- 0.066 (seed 11).")
    compare_earlier_rounds: bool = opt(False, "Also compare every round's PPO policy but the "
                                       "last (ppo-r<k>) on the held-out prompts (about 1.5 "
                                       "minutes each on 2 CPU cores).")
    sft: SFTConfig = field(
        default_factory=functools.partial(
            SFTConfig, data="demo", lora=True, lr=1e-3, warmup_steps=4, max_steps=60,
            eval_fraction=0.1, eval_every=20, save_every=20),
        metadata={"help": "stage 1, LoRA SFT on the shipped demonstrations"})
    label: DemoLabelConfig = field(
        default_factory=functools.partial(DemoLabelConfig, labels_per_prompt=5),
        metadata={"help": "stage 2, the SFT policy's answers ranked by a simulated panel, each "
                          "prompt's answers 5 times: at no cost in compute (the rankings of "
                          "one prompt share one forward pass) the ensemble's held-out accuracy "
                          "is read on 2.5 times the pairs; the accuracy itself moved by a "
                          "point at most"})
    relabel: DemoLabelConfig = field(
        default_factory=functools.partial(DemoLabelConfig, prompts=128, temperatures="1.0",
                                          base_answers=0, labels_per_prompt=5),
        metadata={"help": "stage 3's later rounds (--rounds): the last PPO policy's own answers "
                          "to training prompts, ranked by the simulated panel"})
    reward: RewardConfig = field(
        default_factory=functools.partial(
            RewardConfig, model="minilm", ensemble=3, max_steps=40, lr=2e-4, warmup_steps=2,
            eval_fraction=0.2, eval_every=0, save_every=0),
        metadata={"help": "stage 2, the MiniLM reward ensemble learned from the rankings (lr "
                          "2e-4: on three demos' rankings its held-out accuracy rose 1.2-1.6 "
                          "points over 1e-4; 3e-4 or 80 steps at 1e-4 gained less). 40 steps: "
                          "120 (about one pass over the rankings) read 0-2 points more "
                          "accuracy on two demos, but PPO against that ensemble drifted further "
                          "and gained less gold on both (seed 8, round 1: +0.05 against +0.14 "
                          "at 40), for 2 more minutes; later rounds: --later-rounds-reward-steps"})
    ppo: PPOConfig = field(
        default_factory=functools.partial(
            PPOConfig, lora=True, lr=5e-4, batch_size=4, samples_per_prompt=4,
            advantage="rloo", minibatch_size=4, ppo_epochs=1, max_steps=16, kl_coef=0.05,
            combine="mean_minus_std", save_every=0),
        metadata={"help": "stage 3, PPO with LoRA against the ensemble (its combine also "
                          "scores the comparison); 4 answers per prompt, each one's advantage "
                          "its reward less the mean of the other three (RLOO): with 16 rollouts "
                          "a step a value head learned too little to beat SFT on gold. One pass "
                          "over each batch (TRL's RLOO and GRPO default): a second pass cost "
                          "a sixth of each step and gained nothing on gold (seed 1, round 2: "
                          "+0.168 +/- 0.046 with one, +0.179 +/- 0.051 with two)"})
    dpo: DPOConfig = field(
        default_factory=functools.partial(
            DPOConfig, lora=True, lr=3e-4, beta=0.1, max_steps=32, batch_size=8, warmup_steps=2,
            eval_fraction=0.1, eval_every=0, save_every=0, sample_prompts=None),
        metadata={"help": "stage 4, DPO with LoRA on the panel's rankings (warm-up at most "
                          "dpo.max_steps)"})

    @classmethod
    def alias_values(cls, old: str, value: Any) -> dict[str, Any]:
        stage = {"ppo_steps": "ppo", "dpo_steps": "dpo"}.get(old)
        if stage is None:
            return super().alias_values(old, value)
        # the step counts of earlier versions took 0 for "leave the stage out"
        if value == 0:
            return {f"skip_{stage}": True}
        return {f"{stage}.max_steps": value, f"skip_{stage}": False}

    def validate(self) -> None:
        super().validate()
        self.label.validate()
        self.relabel.validate("--relabel")
        if self.ppo_rounds() > 1 and "," in self.output:
            raise UserError(f"--output {self.output!r}: with --rounds {self.rounds} the later "
                            "rounds' reward models read the rankings as a comma-separated list; "
                            "choose an output folder without a comma")
        if self.continue_rounds and self.ppo_rounds() > 1 and not self.ppo.lora:
            raise UserError("--continue-rounds goes on training the LoRA adapters of the round "
                            "before; it needs --ppo.lora")
        if self.best_of_pool < max(self.best_of, self.compare_samples):
            raise UserError(f"--best-of-pool {self.best_of_pool} must be at least --best-of "
                            f"({self.best_of}) and --compare-samples ({self.compare_samples})")
        if self.base_samples > self.compare_samples:
            raise UserError(f"--base-samples {self.base_samples} must be at most "
                            f"--compare-samples ({self.compare_samples})")

    def shortened(self) -> "DemoConfig":
        """``--quick``: fewer steps, prompts and samples in every stage. PPO takes one step a
        round: one step runs every part of it (rollouts, rewards, advantages, the update, the
        monitor before and after), and each further step cost about 50 s on 2 AVX2 cores."""
        replace = dataclasses.replace
        return replace(
            self, samples=min(self.samples, 2), compare_prompts=min(self.compare_prompts, 6),
            sft=replace(self.sft, max_steps=min(self.sft.max_steps, 8), eval_every=0,
                        save_every=0, warmup_steps=min(self.sft.warmup_steps, 2)),
            label=replace(self.label, prompts=min(self.label.prompts, 10)),
            relabel=replace(self.relabel, prompts=min(self.relabel.prompts, 10)),
            reward=replace(self.reward, max_steps=min(self.reward.max_steps, 4)),
            later_rounds_reward_steps=min(self.later_rounds_reward_steps, 4),
            ppo=replace(self.ppo, max_steps=min(self.ppo.max_steps, 1),
                        batch_size=min(self.ppo.batch_size, 4)),
            dpo=replace(self.dpo, max_steps=min(self.dpo.max_steps, 2)))

    def ppo_rounds(self) -> int:
        """Rounds of reward learning and PPO that run (one when PPO is left out)."""
        return 1 if self.skip_ppo else self.rounds

    def reward_steps(self, k: int) -> int:
        """Training steps of round ``k``'s reward ensemble: ``reward.max_steps`` in the first
        round, else ``later_rounds_reward_steps`` (when set; never more than the first round's
        step count)."""
        first = self.reward.max_steps
        if k == 1 or not self.later_rounds_reward_steps:
            return first
        if first < 0:  # -1: the first round runs --reward.epochs passes
            return self.later_rounds_reward_steps
        return min(self.later_rounds_reward_steps, first)

    def ppo_steps(self, k: int) -> int:
        """PPO steps of round ``k``: ``ppo.max_steps`` in the last round, else
        ``earlier_rounds_ppo_steps`` (when set; never more than the last round's)."""
        if k == self.ppo_rounds() or not self.earlier_rounds_ppo_steps:
            return self.ppo.max_steps
        return min(self.earlier_rounds_ppo_steps, self.ppo.max_steps)

    @staticmethod
    def round_folder(stage: str, k: int, rounds: int) -> str:
        """Folder of round ``k``'s ``stage`` (reward, ppo) of ``rounds``: the last round's is
        the stage's own name, an earlier one's ``<stage>-r<k>``."""
        return stage if k == rounds else f"{stage}-r{k}"

    @staticmethod
    def later_round(name: str, is_dir: bool, rounds: int) -> bool:
        """Whether ``name`` in a demo folder is a stage or rankings file of a round after the
        last of ``rounds`` (an earlier run's: ``reward-r<k>/`` and ``ppo-r<k>/`` for k >=
        rounds, ``prefs-r<k>.jsonl`` and its ``.report.json`` for k > rounds)."""
        found = re.fullmatch(r"(?:reward|ppo)-r(\d+)|prefs-r(\d+)\.(?:jsonl|report\.json)", name)
        if found is None or is_dir != (found.group(1) is not None):
            return False
        k = int(found.group(1) or found.group(2))
        return k > rounds or (k == rounds and is_dir)

    def dpo_labels(self) -> str:
        """The rankings file stage 4 (DPO) learns from, in the demo folder."""
        return (DEMO_POLICY_LABELS if self.label.base_answers and not self.dpo_base_answers
                else DEMO_LABELS)

    @staticmethod
    def round_labels(k: int) -> str:
        """The rankings that round ``k`` adds: the SFT answers' (stage 2) for the first, the
        answers of round k - 1's PPO policy after it."""
        return DEMO_LABELS if k == 1 else f"prefs-r{k}.jsonl"

    def stage_configs(self, root: str | Path) -> dict[str, Config]:
        """Each stage's own config under the demo folder ``root``, keyed by its folder: the
        demo's nested one with what the demo fills in (``DemoConfig.FILLED``), so that each
        stage's config.yaml loads again with ``alignkit <stage> --config``. Round k of
        ``ppo_rounds()`` learns its ensemble from the rankings of rounds 1 ... k."""
        replace = dataclasses.replace
        root = Path(root)
        run_wide = {"seed": self.seed, "device": self.device, "progress": self.progress,
                    "chat_template": self.chat_template}
        sft_final = str(root / "sft" / "final")
        dpo_warmup = self.dpo.warmup_steps  # never longer than the run
        if self.dpo.max_steps > 0:
            dpo_warmup = min(dpo_warmup, self.dpo.max_steps)
        configs: dict[str, Config] = {
            "sft": replace(self.sft, model=self.model, output=str(root / "sft"),
                           precision=self.precision, overwrite=self.overwrite, **run_wide)}
        rounds = self.ppo_rounds()
        for k in range(1, rounds + 1):
            reward_dir = root / self.round_folder("reward", k, rounds)
            ppo_dir = root / self.round_folder("ppo", k, rounds)
            so_far = ",".join(str(root / self.round_labels(j)) for j in range(1, k + 1))
            configs[reward_dir.name] = replace(self.reward, data=so_far, output=str(reward_dir),
                                               max_steps=self.reward_steps(k), overwrite=True,
                                               **run_wide)
            steps = self.ppo_steps(k)
            lora_init = None
            if self.continue_rounds and k > 1:
                lora_init = str(root / self.round_folder("ppo", k - 1, rounds) / "final"
                                / "adapter")
            configs[ppo_dir.name] = replace(
                self.ppo, model=sft_final, lora_init=lora_init,
                reward_model=str(reward_dir / "final"),
                output=str(ppo_dir), max_new_tokens=self.max_new_tokens, max_steps=steps,
                eval_prompts=min(self.compare_prompts, 16),
                eval_every=max(1, steps // 4), precision=self.precision,
                overwrite=True, **run_wide,
                **{name: getattr(self, name) for name in _DEMO_ROLLOUT})
        configs["dpo"] = replace(self.dpo, model=sft_final, data=str(root / self.dpo_labels()),
                                 output=str(root / "dpo"), warmup_steps=dpo_warmup,
                                 precision=self.precision, overwrite=True, **run_wide)
        return configs


@config
class StudyConfig(Config):
    """``alignkit study overoptimisation``: reward over-optimisation on the demo task, measured
    against the hidden gold scorer (Gao et al. 2022; Coste et al. 2023). A single reward model
    and ensembles combined as mean, worst case (WCO) and uncertainty-weighted (UWO), learned
    from labels at each noise level; best-of-n for n = 1 ... --bon-n and PPO at each KL
    coefficient; gold and proxy against sqrt(KL), Gao et al.'s forms fitted, the monitor's
    forecast and checkpoint choice scored against gold; plots in the run report."""

    FILLED = {
        "sft": {"model": "--model", "output": "<output>/sft", "precision": "--precision",
                "overwrite": "--overwrite", **_DEMO_RUN},
        "reward": {"data": "the panel's rankings at each noise level, "
                           "<output>/noise-<rate>/prefs.jsonl",
                   "output": "<output>/noise-<rate>/reward", "overwrite": "always", **_DEMO_RUN},
        "ppo": {"model": "--policy, or the SFT policy <output>/sft/final",
                "reward_model": "the ensemble of each noise level",
                "output": "<output>/noise-<rate>/ppo-<proxy>-kl<coef>",
                "kl_coef": "each of the study's KL coefficients",
                "combine": "each proxy's rule", "reward_members": "1 for the single proxy",
                "uncertainty_penalty": "the study's UWO lambda",
                "max_new_tokens": "--max-new-tokens",
                "precision": "--precision", "overwrite": "always", **_DEMO_RUN},
    }

    policy: Optional[str] = opt(None, "Policy the study starts from (its candidates are labelled, "
                                "best-of-n samples it, PPO trains it), e.g. runs/demo/sft/final. "
                                "Unset: stage 1 of the demo (LoRA SFT on the shipped "
                                "demonstrations) runs first, into <output>/sft.")
    model: str = opt("default", "Model the SFT stage starts from when --policy is unset.")
    output: str = opt("runs/study", "Output folder: config.yaml, sft/, noise-<rate>/ "
                      "(prefs.jsonl, reward/, ppo-<proxy>-kl<coef>/), bon_samples.jsonl, "
                      "study.json, report/.")
    seed: int = opt(42, "Seed of every part (sampling, the panel, initialisation).", **SEED)
    device: str = opt("auto", "Device: auto (CUDA when present, else CPU), cpu, cuda, cuda:N.")
    precision: str = opt("auto", "Numerics of the policies: auto, fp32, bf16.",
                         ("auto", "fp32", "bf16"))
    progress: bool = opt(True, "Show progress bars.")
    overwrite: bool = opt(False, "Replace an earlier study's stage 1 in --output.")
    quick: bool = opt(False, "A short version (fewer prompts, samples, members and steps): "
                      "minutes instead of hours on a CPU.")
    max_new_tokens: int = opt(48, "Length limit of every sampled answer.", ge=1)
    label_noise: str = opt("0,0.25", "Label-noise levels, comma-separated: the share of the "
                           "panel's pairwise labels flipped (each label is replaced by a random "
                           "one with twice this probability), each in [0, 0.5].")
    proxies: str = opt("single,mean,wco,uwo", "Proxies optimised, comma-separated: single (member "
                       "0 of the ensemble alone), mean, wco (worst case: the members' minimum), "
                       "uwo (mean - --uwo-lambda x the members' variance).")
    uwo_lambda: float = opt(1.0, "lambda of the uncertainty-weighted proxy (reward units per "
                            "unit of variance; member rewards are normalised to std 1).", ge=0)
    bon_n: int = opt(64, "Largest n of best-of-n: n = 1, 2, 4, ... up to it, each computed "
                     "exactly over every n-subset of --bon-n samples per prompt (0: no "
                     "best-of-n).", ge=0)
    bon_prompts: int = opt(32, "Held-out prompts best-of-n answers.", ge=1)
    bon_samples: Optional[str] = opt(None, "Reuse the best-of-n samples of an earlier study of "
                                     "the same policy (its bon_samples.jsonl) instead of "
                                     "sampling: the first --bon-prompts prompts and the first "
                                     "--bon-n answers of each, with the gold recorded beside "
                                     "them; with --label.prompts, the same samples are read by "
                                     "ensembles learned from fewer labels.")
    kl_coefs: str = opt("0.01,0.05", "KL coefficients of the PPO runs, comma-separated (empty: "
                        "no PPO); one run per noise level, proxy and coefficient.")
    ppo_label_noise: str = opt("", "The label-noise levels whose ensembles the PPO runs optimise, "
                               "comma-separated, each one of --label-noise (empty: every "
                               "level).")
    label: DemoLabelConfig = field(
        default_factory=functools.partial(DemoLabelConfig, temperatures="1.0", base_answers=0),
        metadata={"help": "the policy's answers to training prompts (its own samples, as Gao "
                          "et al. labelled), ranked by the simulated panel at each noise level"})
    sft: SFTConfig = field(
        default_factory=functools.partial(
            SFTConfig, data="demo", lora=True, lr=1e-3, warmup_steps=4, max_steps=60,
            eval_fraction=0.1, eval_every=20, save_every=20),
        metadata={"help": "stage 1 when --policy is unset: LoRA SFT on the shipped "
                          "demonstrations (the demo's)"})
    reward: RewardConfig = field(
        default_factory=functools.partial(
            RewardConfig, model="minilm", ensemble=4, bootstrap=False, max_steps=40, lr=1e-4,
            warmup_steps=2, eval_fraction=0.2, eval_every=0, save_every=0),
        metadata={"help": "the MiniLM reward ensemble of each noise level (members differ by "
                          "seed: initialisation and data order, as in Coste et al.)"})
    ppo: PPOConfig = field(
        default_factory=functools.partial(
            PPOConfig, lora=True, lr=1e-3, batch_size=8, minibatch_size=4, ppo_epochs=2,
            max_steps=24, eval_every=4, eval_prompts=32, save_every=0),
        metadata={"help": "each PPO run (LoRA), its monitor reading held-out prompts every "
                          "ppo.eval-every steps"})

    def levels(self) -> list[float]:
        return _float_list(self.label_noise, "--label-noise", 0.0, 0.5)

    def ppo_levels(self) -> list[float]:
        chosen = _float_list(self.ppo_label_noise, "--ppo-label-noise", 0.0, 0.5)
        if any(level not in self.levels() for level in chosen):
            raise UserError(f"--ppo-label-noise {self.ppo_label_noise!r}: each level must be one "
                            f"of --label-noise {self.label_noise!r}")
        return chosen or self.levels()

    def coefficients(self) -> list[float]:
        return _float_list(self.kl_coefs, "--kl-coefs", 0.0, math.inf)

    def proxy_names(self) -> list[str]:
        known = ("single", "mean", "wco", "uwo")
        names = [p.strip() for p in self.proxies.split(",") if p.strip()]
        bad = [p for p in names if p not in known]
        if bad or not names:
            raise UserError(f"--proxies {self.proxies!r}: choose from {', '.join(known)}")
        if len(set(names)) != len(names):
            raise UserError(f"--proxies {self.proxies!r}: a proxy is named twice")
        return names

    def validate(self) -> None:
        super().validate()
        self.label.validate()
        if not self.levels():
            raise UserError("--label-noise: give at least one level (0 for clean labels)")
        self.coefficients()
        self.ppo_levels()
        self.proxy_names()
        if self.bon_samples and self.bon_n == 0:
            raise UserError("--bon-samples with --bon-n 0: there is no best-of-n to read them; "
                            "give --bon-n, or drop --bon-samples")
        if self.reward.ensemble < 2 and any(p != "single" for p in self.proxy_names()):
            raise UserError("--reward.ensemble 1 has no ensemble to combine: raise it, or "
                            "--proxies single")

    def shortened(self) -> "StudyConfig":
        """``--quick``: a few prompts, samples, members and steps in every part."""
        replace = dataclasses.replace
        return replace(
            self, bon_n=min(self.bon_n, 8), bon_prompts=min(self.bon_prompts, 8),
            sft=replace(self.sft, max_steps=min(self.sft.max_steps, 8), eval_every=0,
                        save_every=0, warmup_steps=min(self.sft.warmup_steps, 2)),
            label=replace(self.label, prompts=min(self.label.prompts, 16)),
            reward=replace(self.reward, ensemble=min(self.reward.ensemble, 2),
                           max_steps=min(self.reward.max_steps, 4)),
            ppo=replace(self.ppo, max_steps=min(self.ppo.max_steps, 2),
                        batch_size=min(self.ppo.batch_size, 4),
                        minibatch_size=min(self.ppo.minibatch_size, 2), eval_every=1,
                        eval_prompts=min(self.ppo.eval_prompts, 4)),
            kl_coefs=",".join(self.kl_coefs.split(",")[:1]))



# the parts of the gold score the simulated panel can label one by one (``judges.gold.ASPECTS``
# says what each measures)
LABEL_ASPECTS = ("overall", "helpful", "harmless", "honest")


def _aspect_list(text: str, flag: str) -> tuple[str, ...]:
    """``helpful,harmless`` -> the gold scorer's aspects named (``LABEL_ASPECTS``)."""
    names = tuple(a.strip() for a in text.split(",") if a.strip())
    unknown = [a for a in names if a not in LABEL_ASPECTS]
    if unknown or len(set(names)) != len(names):
        raise UserError(f"{flag} {text!r}: give distinct aspects of the gold score, "
                        f"separated by commas, from {', '.join(LABEL_ASPECTS)}")
    return names


def _float_list(text: str, flag: str, low: float, high: float) -> list[float]:
    """``"0,0.25"`` -> [0.0, 0.25], each in [low, high], none twice."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{flag} {text!r}: give numbers separated by commas") from None
    bad = [v for v in values if not (math.isfinite(v) and low <= v <= high)]
    if bad:
        raise UserError(f"{flag} {text!r}: each value must be in [{low}, {high}]")
    if len(set(values)) != len(values):
        raise UserError(f"{flag} {text!r}: a value is given twice")
    return values


@config
class BestOfNConfig(RolloutArgs):
    """Best-of-n: sample n answers per prompt with the shared sampler and keep the one the reward
    model prefers (rejection sampling; Stiennon et al. 2020, Nakano et al. 2021)."""

    RETIRED = RUNS_NO_STEPS

    model: Optional[str] = opt(None, "Policy that writes the candidates (see sft --model; e.g. "
                               "runs/demo/sft/final).", required=True)
    reward_model: Optional[str] = opt(None, "Reward model folder that picks the best (e.g. "
                                      "runs/demo/reward/final).", required=True)
    data: Optional[str] = opt("demo-prompts-heldout", "Prompts ({prompt[, category]}).")
    output: str = opt("runs/best-of-n", "Output folder (best.jsonl, metrics.jsonl, config.yaml).")
    n: int = opt(4, "Candidates sampled per prompt.", ge=1)
    max_prompts: int = opt(0, "Use only the first N prompts (0: all).", ge=0)
    combine: Optional[str] = opt(None, "Override how an ensemble combines (mean, min, "
                                 "mean_minus_std, mean_minus_var).")
    max_new_tokens: int = opt(48, "Longest sampled answer.", ge=1)
    max_prompt_length: int = opt(256, "Longest tokenised prompt (longer: an error unless "
                                 "--skip-invalid).", ge=1)
    temperature: float = opt(1.0, "Sampling temperature.", ge=0)
    top_p: float = opt(1.0, "Nucleus sampling (1: off).", gt=0, le=1)
    batch_size: int = opt(32, "Sequences sampled per generate call.", ge=1)
    gold: bool = opt(True, "Also report the gold score of the picked and of a single sample "
                     "(simulated-annotator experiments).")
    chat: str = opt("auto", "Render prompts with the chat template.", ("auto", "always", "never"))
    skip_invalid: bool = opt(False, "Drop invalid prompts (counted) instead of stopping.")
    seed: int = opt(42, "Seed of the sampling.", **SEED)
    device: str = opt("auto", "Device: auto, cpu, cuda.")
    precision: str = opt("auto", "Numerics: auto, fp32, bf16.", ("auto", "fp32", "bf16"))
    overwrite: bool = opt(False, "Replace the outputs of an earlier run in --output.")


@config
class ScoreConfig(Config):
    """Score (prompt, response) records with a saved reward model."""

    reward_model: Optional[str] = opt(None, "Reward model folder (written by alignkit reward).")
    data: Optional[str] = opt(None, "Records with prompt and response (or chosen/rejected, or "
                              "responses).")
    output: str = opt("scores.jsonl", "Where to write one JSON line of rewards per record.")
    batch_size: int = opt(32, "Responses per forward pass.", ge=1)
    device: str = opt("auto", "Device: auto, cpu, cuda.")
    combine: Optional[str] = opt(None, "Override the saved ensemble combination "
                                 "(mean, min, mean_minus_std, mean_minus_var).")


@config
class LabelConfig(RolloutArgs):
    """Preference labels for prompts: sample K responses per prompt from a policy (or take the
    record's own ``responses``) and have annotators rank them."""

    RETIRED = RUNS_NO_STEPS

    model: str = opt("default", "Policy that writes the candidate responses (see sft --model).")
    data: Optional[str] = opt("demo-prompts", "Prompts ({prompt[, category]}) or samples "
                              "({prompt, responses}); 'demo-prompts' are the shipped ones.")
    output: str = opt("prefs.jsonl", "Where to write the labelled rankings or pairs (JSONL).")
    annotators: str = opt("simulated", "Who labels: 'simulated' (a gold scorer plus a panel of "
                          "noisy annotators).", ("simulated",))
    panel: Optional[str] = opt(None, "YAML/JSON file describing the simulated panel "
                               "(annotators, gold_scale, assignment); default: 5 annotators.")
    gold_scale: float = opt(2.0, "Multiplies gold scores before Bradley-Terry noise (higher: "
                            "annotators agree with gold more often).", ge=0)
    num_responses: int = opt(4, "Responses sampled per prompt (K).", ge=2)
    labels_per_prompt: int = opt(1, "Annotators who label each prompt (R >= 2 measures "
                                 "agreement).", ge=1)
    format: str = opt("rankings", "Write K-way rankings or pairwise records.",
                      ("rankings", "pairs"))
    aspects: str = opt("", "Simulated panel: label each aspect of the gold score on its own, "
                       "each record tagged with it, for a reward head per aspect (e.g. "
                       "helpful,harmless: rankings by helpfulness, and harmlessness asked of the "
                       "pairs of answers that differ in it); empty: one overall label.")
    max_prompts: int = opt(0, "Use only the first N prompts (0: all).", ge=0)
    max_new_tokens: int = opt(48, "Length limit of sampled responses.", ge=1)
    temperature: float = opt(1.0, "Sampling temperature.", ge=0)
    top_p: float = opt(1.0, "Nucleus sampling threshold.", gt=0, le=1)
    batch_size: int = opt(16, "Prompts sampled per generate call.", ge=1)
    seed: int = opt(42, "Seed for sampling and for the panel.", **SEED)
    device: str = opt("auto", "Device: auto, cpu, cuda.")
    judge: Optional[str] = opt(None, "RLAIF: an AI judge labels instead of the simulated panel: "
                               "http(s)://HOST:PORT/v1#MODEL (any OpenAI-compatible endpoint), "
                               "local:PATH (a causal LM's verdict-token log-probs), reward:PATH "
                               "(a reward model) or gold.")
    judge_workers: int = opt(4, "Pairs judged at once (HTTP judges; thread pool).", ge=1)
    judge_cache: Optional[str] = opt(None, "Folder of the HTTP judge's response cache (default: "
                                     "<output>.judge-cache beside the output).")
    judge_both_orders: bool = opt(True, "Ask the judge both orders of every pair (cancels and "
                                  "measures position bias; twice the requests).")
    judge_max_tokens: int = opt(16, "max_tokens of each HTTP judge request.", ge=1)
    judge_retries: int = opt(4, "Retries of a failed HTTP judge request (exponential backoff).",
                             ge=0)
    judge_rate: float = opt(0.0, "Most HTTP judge requests per second (0: no limit).", ge=0)
    judge_timeout: float = opt(60.0, "Seconds to wait for one HTTP judge answer.", gt=0)
    judge_logprobs: bool = opt(True, "HTTP judges: ask for token log-probs and take a verdict's "
                               "confidence from them (p(A) / (p(A) + p(B)) at the verdict "
                               "token); off: the confidence the judge writes (1.0 for a bare "
                               "letter).")
    principles: Optional[str] = opt(None, "Judge under constitutional principles, one drawn per "
                                    "record (seeded): 'default' (the shipped constitution) or a "
                                    "YAML file; none: plain 'better'.")
    agreement: str = opt("gold", "With --judge: report the judge's agreement (and position "
                         "bias) against the gold scorer, the human labels of labelled pairs in "
                         "--data ({prompt, chosen, rejected}), or none.",
                         ("gold", "human", "none"))
    resume: bool = opt(False, "With --judge: continue a killed labelling run, judging only what "
                       "--output does not hold yet.")
    overwrite: bool = opt(False, "With --judge: replace an existing --output.")

    def aspect_list(self) -> tuple[str, ...]:
        return _aspect_list(self.aspects, "--aspects")

    def validate(self) -> None:
        super().validate()
        self.aspect_list()
        if self.aspects and self.judge:
            raise UserError("--aspects labels by the gold score's parts (the simulated panel); "
                            "with --judge, give the judge aspects as principles instead")


@config
class ServeConfig(RolloutArgs):
    """An OpenAI-compatible chat endpoint (/v1/chat/completions, /v1/models) for a policy."""

    RETIRED = RUNS_NO_STEPS

    model: str = opt(None, "Policy to serve: a model folder, 'default', a .gguf file or a hub "
                     "id.", required=True)
    host: str = opt("127.0.0.1", "Interface to listen on (0.0.0.0: every interface).")
    port: int = opt(8000, "TCP port (0: any free port; the URL is printed).", ge=0, le=65535)
    model_name: str = opt("", "Model id clients send and /v1/models lists (default: the folder "
                          "name, or the run stage for .../final).")
    max_tokens_limit: int = opt(1024, "Largest max_tokens a request may ask for.", ge=1)
    default_max_tokens: int = opt(256, "max_tokens of a request that gives none.", ge=1)
    max_request_mb: float = opt(4.0, "Largest request body in MiB (413 past it; --rollout-engine "
                                "hf: vLLM's server keeps its own limits).", gt=0)
    max_queue: int = opt(32, "Chat answers queued or running at once; more get 429 with "
                         "Retry-After (--rollout-engine hf).", ge=1)
    request_timeout: float = opt(30.0, "Seconds a client has to send a request's headers (the "
                                 "connection is closed after), and again its body (408 after; "
                                 "--rollout-engine hf).", gt=0)
    api_key: str = opt("", "Require 'Authorization: Bearer KEY' on /v1 routes (401 otherwise). "
                       "Default: $ALIGNKIT_API_KEY if set, else no key (prefer the variable: a "
                       "flag shows in the process list).")
    device: str = opt("auto", "Device: auto, cpu, cuda.")
    feedback_db: str = opt("", "Annotation-store database (a SQLite path or sqlite:///..., or "
                           "postgresql://...): serves the chat page /chat where signed-in users "
                           "chat with the policy and rate its answers, which are stored there "
                           "(default: off, nothing is stored; --rollout-engine hf).")
    feedback_temperature: float = opt(0.8, "Sampling temperature of the chat page's answers.",
                                      ge=0, le=2)
    feedback_top_p: float = opt(0.95, "top_p of the chat page's answers.", gt=0, le=1)
    feedback_model_b: str = opt("", "A second policy for the chat page of --feedback-db: in "
                                "side-by-side turns one answer comes from each (sides drawn per "
                                "turn); default: two samples of --model with different seeds.")


@config
class CritiqueConfig(RolloutArgs):
    """Constitutional AI, supervised stage: the policy answers, critiques its answer against a
    sampled principle, revises it; the revisions become SFT data (Bai et al. 2022)."""

    RETIRED = RUNS_NO_STEPS

    model: Optional[str] = opt(None, "Policy that answers, critiques and revises (e.g. "
                               "runs/demo/sft/final).", required=True)
    data: Optional[str] = opt("demo-prompts", "Prompts ({prompt[, category]}); 'demo-prompts' "
                              "are the shipped ones.")
    output: str = opt("critique.jsonl", "SFT records {prompt, completion} with the principle, "
                      "original answer and critique (JSONL; alignkit sft reads it).")
    constitution: str = opt("default", "Constitution YAML (principles with a critique and a "
                            "revision request); 'default' is the shipped helpful / harmless / "
                            "honest one.")
    revisions: int = opt(1, "Critique -> revise rounds per answer (each with a fresh principle).",
                         ge=1)
    max_prompts: int = opt(0, "Use only the first N prompts (0: all).", ge=0)
    max_new_tokens: int = opt(64, "Length limit of answers, critiques and revisions.", ge=1)
    temperature: float = opt(1.0, "Sampling temperature (0: greedy).", ge=0)
    top_p: float = opt(1.0, "Nucleus sampling threshold.", gt=0, le=1)
    batch_size: int = opt(16, "Prompts per generate call.", ge=1)
    seed: int = opt(42, "Seed of the sampling and of the principle draws.", **SEED)
    device: str = opt("auto", "Device: auto, cpu, cuda.")


@config
class TinyModelConfig(Config):
    """Write a tiny random Llama-style model + tokenizer folder (for tests, benchmarks, trials)."""

    output: str = opt("tiny-model", "Folder to write.")
    seed: int = opt(0, "Initialisation seed.", **SEED)
    hidden_size: int = opt(64, "Hidden size.", ge=1)
    num_layers: int = opt(2, "Decoder layers.", ge=1)
    num_heads: int = opt(4, "Attention heads.", ge=1)
    intermediate_size: int = opt(128, "MLP width.", ge=1)


@config
class EvalConfig(RolloutArgs):
    """Compare policies on held-out prompts: gold score, reward-model score (ensemble mean and
    std), KL to a reference, win rate against a baseline by a judge (bootstrap interval),
    response length, and the adversarial suite (refusal, over-refusal, uncertainty)."""

    RETIRED = RUNS_NO_STEPS

    policies: Optional[str] = opt(None, "Policies to evaluate: NAME=DIR,NAME=DIR ... (model "
                                  "folders; 'default' is the packaged model).")
    baseline: Optional[str] = opt(None, "NAME of the policy every other one is judged against "
                                  "(default: the first).")
    prompts: str = opt("demo", "Held-out prompts ({prompt[, category]}); 'demo' means the "
                       "held-out prompts alignkit ships.")
    adversarial: str = opt("shipped", "Adversarial suite: 'shipped', a JSONL file of {prompt, "
                           "category, expect}, or 'none'.")
    reward_model: Optional[str] = opt(None, "Reward model (or ensemble) folder to score answers "
                                      "with (omit: no reward-model scores).")
    reference: Optional[str] = opt(None, "Reference policy folder for KL (default: the baseline "
                                   "policy).")
    judge: str = opt("gold", "Judge of the win rate: gold (the gold scorer), reward:PATH (a "
                     "reward model), local:PATH (a causal LM's verdict log-probs) or "
                     "http(s)://HOST:PORT/v1#MODEL (an OpenAI-compatible endpoint); asked in "
                     "both orders.")
    gold: bool = opt(True, "Report the gold score (the simulated-annotator stand-in for "
                     "people).")
    max_prompts: int = opt(0, "Use only the first N held-out prompts (0: all).", ge=0)
    max_adversarial: int = opt(0, "Use only the first N prompts of each suite category (0: all).",
                               ge=0)
    adversarial_answers: int = opt(
        1, "Answers to each suite prompt, sampled independently: the refusal rates pool them and "
           "their standard errors are over prompts. One answer at temperature 1 reads refusal "
           "with about 5 points of standard error on 80 prompts; 4 answers narrow what the "
           "sampling adds.", ge=1)
    bootstrap: int = opt(2000, "Bootstrap resamples of the win-rate interval.", ge=1)
    confidence: float = opt(0.95, "Coverage of the win-rate interval.", gt=0, lt=1)
    max_new_tokens: int = opt(48, "Longest sampled answer.", ge=1)
    max_prompt_length: int = opt(256, "Longest tokenised prompt (longer: an error unless "
                                 "--skip-invalid).", ge=1)
    temperature: float = opt(1.0, "Sampling temperature (0: greedy).", ge=0)
    top_p: float = opt(1.0, "Nucleus sampling (1: off).", gt=0, le=1)
    batch_size: int = opt(64, "Answers decoded at once (a wider batch decodes faster until "
                          "memory binds; log-probs and KL are computed 16 answers at a time).",
                          ge=1)
    chat: str = opt("auto", "Render prompts with the chat template.", ("auto", "always", "never"))
    skip_invalid: bool = opt(False, "Drop invalid prompts (counted) instead of stopping.")
    seed: int = opt(42, "Seed of the sampling (every policy draws with the same seed) and of "
                    "the bootstrap.", **SEED)
    output: str = opt("runs/eval", "Output folder (eval.json, eval.csv, samples.jsonl, "
                      "config.yaml).")
    overwrite: bool = opt(False, "Replace the outputs of an earlier evaluation in --output.")
    device: str = opt("auto", "Device: auto, cpu, cuda.")
    precision: str = opt("auto", "Numerics: auto, fp32, bf16.", ("auto", "fp32", "bf16"))


@config
class ReportConfig(Config):
    """One self-contained HTML page (plus PNGs) for a run folder: training curves of every stage,
    the reward-hacking monitor, the reward-vs-KL frontier, eval tables, samples side by side."""

    RETIRED = RUNS_NO_STEPS

    run_dir: Optional[str] = opt(None, "Run folder (runs/<name>, holding <stage>/metrics.jsonl "
                                 "...); also accepted as the first argument.")
    output: Optional[str] = opt(None, "Where to write report.html and the PNGs (default: "
                                "RUN_DIR/report).")
    frontier: Optional[str] = opt(None, "A frontier CSV to plot (default: RUN_DIR/frontier.csv "
                                  "or RUN_DIR/*/frontier.csv when present).")
    samples: int = opt(6, "Samples shown side by side per table.", ge=0)


# ---------------------------------------------------------------------------------------------
# alignkit annotate <verb>: the human-feedback annotation app (alignkit.recipes.annotate)


@config
class AnnotateDBArgs(Config):
    db: str = opt("sqlite:///annotate.db", "Database URL: sqlite:///path.db (embedded) or "
                  "postgresql://user@host:port/name. The schema is migrated to the newest "
                  "version on start.")


@config
class AnnotateServeConfig(AnnotateDBArgs):
    """Serve the annotation web app (FastAPI + uvicorn)."""

    host: str = opt("127.0.0.1", "Address to listen on (0.0.0.0: every interface).")
    port: int = opt(8765, "Port to listen on (0: a free one, printed on start).", ge=0, le=65535)
    admin_token_env: str = opt("ALIGNKIT_ADMIN_TOKEN", "Environment variable holding the "
                               "bootstrap admin's sign-in token (at least 16 characters); the "
                               "'admin' user gets it on start. Unset: no bootstrap.")
    lease_seconds: float = opt(600.0, "How long an item handed to an annotator is held for them "
                               "(others are handed other items meanwhile).", gt=0)
    request_timeout: float = opt(30.0, "Seconds a client has to send a request's headers; the "
                                 "connection is closed after (slow clients cannot hold it).",
                                 gt=0)


@config
class AnnotateProjectConfig(AnnotateDBArgs):
    """Create (or with --update change) an annotation project."""

    name: Optional[str] = opt(None, "Project name.")
    guidelines: Optional[str] = opt(None, "Markdown file of guidelines shown beside every task "
                                    "(examples of good and bad responses).")
    aspects: str = opt("overall", "Comma-separated aspects judged on pairwise tasks (e.g. "
                       "helpful,harmless,honest).")
    labels_per_item: int = opt(2, "R: distinct annotators who label each item.", ge=1)
    reward_model: Optional[str] = opt(None, "Reward-model folder (alignkit reward) for active "
                                      "learning: the queue serves first what it is unsure of.")
    al_strategy: str = opt("std", "Active-learning score: std (ensemble members' disagreement "
                           "on the margin) or margin (smallest predicted margin).",
                           ("std", "margin"))
    calibration_items: int = opt(0, "N: gold items every annotator answers first; their labels "
                                 "count only once they pass (0: no calibration; fixed at "
                                 "creation).", ge=0)
    calibration_accuracy: Optional[float] = opt(None, "Gold accuracy on the calibration items "
                                                "that passes (below it: failed_calibration, "
                                                "labels excluded; unset: 0.8, or unchanged "
                                                "with --update).", ge=0, le=1)
    attention_rate: Optional[float] = opt(None, "Share of a calibrated annotator's queue that is "
                                          "hidden gold items (attention checks; unset: 0, none, "
                                          "or unchanged with --update).", ge=0, lt=1)
    assist: Optional[str] = opt(None, "AI suggestions on the annotation page: off (not shown), "
                                "after (revealed once the annotator has answered) or before "
                                "(shown up-front on a seeded half of each annotator's items, the "
                                "other half being the control that measures anchoring); unset: "
                                "off, or unchanged with --update.")
    judge: Optional[str] = opt(None, "Judge whose suggestion is stored for every (non-gold) task "
                               "of the project, replacing earlier ones: http(s)://HOST:PORT/v1"
                               "#MODEL, local:PATH, reward:PATH (a reward model or ensemble) or "
                               "gold. Run again after add-tasks to cover new tasks.")
    judge_device: str = opt("cpu", "Device of a local: or reward: judge.")
    update: bool = opt(False, "Change an existing project (guidelines, R, reward model, "
                       "calibration accuracy, attention rate, assist; --judge: suggestions).")


@config
class AnnotateUserConfig(AnnotateDBArgs):
    """Add a person (or give them a new token) and put them on projects; prints their token."""

    name: Optional[str] = opt(None, "User name.")
    role: str = opt("annotator", "Role.", ("annotator", "admin"))
    projects: str = opt("", "Comma-separated project names to put the user on.")
    password_env: Optional[str] = opt(None, "Environment variable holding a password for "
                                      "name+password sign-in (never pass secrets as flags).")
    new_token: bool = opt(False, "The user exists: replace their token (and add projects).")


@config
class AnnotateTasksConfig(RolloutArgs, AnnotateDBArgs):
    """Add tasks to a project: prompts plus K responses sampled from a policy, or uploaded
    pairs ({prompt, chosen, rejected}) and rankings ({prompt, responses[, ranking]});
    "gold": true marks a hidden gold item whose known answer is the record's own order."""

    project: Optional[str] = opt(None, "Project name.")
    data: Optional[str] = opt(None, "JSONL/Parquet/CSV of prompts, pairs or rankings; "
                              "'demo-prompts' are the shipped prompts.")
    model: Optional[str] = opt(None, "Policy folder that writes K candidates for records that "
                               "have only a prompt (see sft --model).")
    num_responses: int = opt(2, "K: responses sampled per prompt (2: a pairwise task, more: a "
                             "ranking).", ge=2)
    max_prompts: int = opt(0, "Use only the first N records (0: all).", ge=0)
    shuffle_pairs: bool = opt(True, "Show the two responses of a pair in a random (seeded) order "
                              "so that position does not give the answer away.")
    max_new_tokens: int = opt(48, "Length limit of sampled responses.", ge=1)
    temperature: float = opt(1.0, "Sampling temperature.", ge=0)
    top_p: float = opt(1.0, "Nucleus sampling threshold.", gt=0, le=1)
    batch_size: int = opt(16, "Sequences per generate call.", ge=1)
    seed: int = opt(42, "Seed of sampling and of the pair order.", **SEED)
    device: str = opt("auto", "Device: auto, cpu, cuda.")


@config
class AnnotateBackupConfig(AnnotateDBArgs):
    """Back up one project whole (users, tasks, labels, resolutions, audit log) to a JSON file
    that restores into any database."""

    project: str = opt(None, "Project name.", required=True)
    output: Optional[str] = opt(None, "The backup file to write (default: <project>-backup.json;"
                                " JSON holding the users' hashed secrets: keep it as private as "
                                "the database).")


@config
class AnnotateRestoreConfig(AnnotateDBArgs):
    """Restore a project from an ``alignkit annotate backup`` file (all of it, or nothing)."""

    input: str = opt(None, "The backup file.", required=True)
    project: Optional[str] = opt(None, "Restore under this name (default: the backed-up "
                                 "project's own name, which must be free).")


@config
class AnnotateExportConfig(AnnotateDBArgs):
    """Export a project's labels as preference pairs and rankings (README.md, "Data")."""

    project: Optional[str] = opt(None, "Project name.")
    output: str = opt("annotations", "Output folder: pairs.jsonl, rankings.jsonl, "
                      "agreement.json.")
    mode: str = opt("aggregated", "aggregated: one record per item with the aggregated label "
                    "(or an admin's resolution), annotator ids and agreement; labels: one record "
                    "per annotator label.", ("aggregated", "labels"))
    include_gold: bool = opt(False, "Also export the hidden gold items.")
    source: str = opt("labels", "labels: a project's labels (--project); feedback: the chat "
                      "feedback of 'alignkit serve --feedback-db' (picks and thumbs as pairs in "
                      "pairs.jsonl, unpaired thumbs in ratings.jsonl; every project).",
                      ("labels", "feedback"))
    format: str = opt("jsonl", "jsonl: pairs.jsonl, rankings.jsonl; parquet: pairs.parquet, "
                      "rankings.parquet; datasets: Hugging Face datasets folders pairs/ and "
                      "rankings/ (Dataset.save_to_disk). alignkit reward / dpo --data read all "
                      "three.", ("jsonl", "parquet", "datasets"))
