"""Checkpoints that resume a run exactly, and the final plain Hugging Face model folder.

Layout of ``<output>/checkpoints/step-N/``: ``trainable.safetensors`` (every parameter that
trains: LoRA adapters, or all weights), ``optimizer.pt``, ``scheduler.pt``, ``rng.pt`` and
``state.json`` (step, counters, anything the recipe adds). A run whose model is sharded (FSDP)
writes ``sharded/`` (``torch.distributed.checkpoint``: each process its shards of the trainable
parameters and of the optimiser state) in place of ``trainable.safetensors`` and
``optimizer.pt``. A checkpoint is written into a temporary folder and renamed into place, so a
killed run never leaves a half-written one.

Either layout resumes into either kind of model, at any number of processes: whole tensors are
sharded when loaded into a sharded model, and shards are read into whole tensors when loaded
into a plain one (one process, or DDP).
"""

from __future__ import annotations

import contextlib
import errno
import json
import random
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from alignkit.errors import UserError

STEP_DIR = re.compile(r"^step-(\d+)$")
SHARDED = "sharded"


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), *rest))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


@contextlib.contextmanager
def writing(tmp: Path, what: str):
    """Around the writes of ``tmp`` (the temporary folder of ``what``): a write that fails --
    the disk full, a quota, a vanished mount -- removes the partial folder and is a
    ``UserError`` that says so (what was written before stays as it was)."""
    try:
        yield
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        why = ("the disk is full" if e.errno in (errno.ENOSPC, errno.EDQUOT)
               else e.strerror or str(e))
        raise UserError(f"{what}: cannot write it ({why}); the partial copy was removed and "
                        "earlier checkpoints are untouched. Free some space (or point --output "
                        "elsewhere) and resume with --resume") from None


def save_checkpoint(output: str | Path, step: int, model, optimizer, scheduler,
                    state: dict[str, Any], keep: int = 2) -> Path:
    from safetensors.torch import save_file

    tmp = _start(output, step)
    with writing(tmp, f"checkpoint of step {step} in {Path(output) / 'checkpoints'}"):
        save_file(trainable_state(model), str(tmp / "trainable.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        return _finish(output, step, tmp, scheduler, state, keep)


def _start(output: str | Path, step: int) -> Path:
    root = Path(output) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".step-{step}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    return tmp


def _finish(output: str | Path, step: int, tmp: Path, scheduler, state: dict[str, Any],
            keep: int) -> Path:
    """The schedule, RNG and state beside the weights, the rename into place, and the pruning of
    all but the newest ``keep`` checkpoints."""
    final = Path(output) / "checkpoints" / f"step-{step}"
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    torch.save(rng_state(), tmp / "rng.pt")
    (tmp / "state.json").write_text(json.dumps({"step": step, **state}, indent=1))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    if keep > 0:
        for old in list_checkpoints(output)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def _trainable_names(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def save_sharded_checkpoint(output: str | Path, step: int, model, optimizer, scheduler,
                            state: dict[str, Any], keep: int = 2, is_main: bool = True) -> Path:
    """The checkpoint of a sharded (FSDP) model, called by every process: each writes its shards
    of the trainable parameters and the optimiser state into ``sharded/`` of the temporary
    folder, then the first process writes the rest, renames it into place and prunes. The
    processes share the output folder (one machine, or a shared file system)."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    tmp = Path(output) / "checkpoints" / f".step-{step}.tmp"
    if is_main:
        _start(output, step)
    dist.barrier()
    weights, optim = get_state_dict(model, optimizer)
    trainable = _trainable_names(model)
    dcp.save({"model": {k: v for k, v in weights.items() if k in trainable}, "optimizer": optim},
             checkpoint_id=str(tmp / SHARDED))
    final = Path(output) / "checkpoints" / f"step-{step}"
    if is_main:
        _finish(output, step, tmp, scheduler, state, keep)
    dist.barrier()
    return final


def list_checkpoints(output: str | Path) -> list[Path]:
    root = Path(output) / "checkpoints"
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := STEP_DIR.match(p.name))
             and (p / "state.json").is_file()]
    return [p for _, p in sorted(found)]


def is_sharded_model(model) -> bool:
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def load_checkpoint(path: str | Path, model, optimizer, scheduler) -> dict[str, Any]:
    """Restore parameters, optimiser, scheduler and RNG; return the saved ``state.json``. Under
    several processes every one of them calls it."""
    from safetensors.torch import load_file

    path = Path(path)
    if (path / SHARDED).is_dir():
        _load_sharded(path / SHARDED, model, optimizer)
    else:
        saved = load_file(str(path / "trainable.safetensors"))
        params = dict(model.named_parameters())
        unknown = [n for n in saved if n not in params]
        if unknown:
            raise ValueError(f"{path}: checkpoint has parameters this model lacks: {unknown[:3]}")
        optim = torch.load(path / "optimizer.pt", weights_only=True)
        if is_sharded_model(model):
            _load_whole_into_sharded(saved, optim, model, optimizer)
        else:
            with torch.no_grad():
                for name, value in saved.items():
                    params[name].copy_(value.to(params[name].device))
            optimizer.load_state_dict(optim)
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    set_rng_state(torch.load(path / "rng.pt", weights_only=False))
    return json.loads((path / "state.json").read_text())


def _load_sharded(folder: Path, model, optimizer) -> None:
    """Read a sharded checkpoint into ``model`` and ``optimizer``, sharded or not: each process
    reads the parts of the saved shards that its own tensors cover (the whole tensors in a plain
    model; one process needs no process group)."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_state_dict,
                                                         set_state_dict)

    weights, optim = get_state_dict(model, optimizer)
    trainable = _trainable_names(model)
    target = {"model": {k: v for k, v in weights.items() if k in trainable}, "optimizer": optim}
    single = not (dist.is_available() and dist.is_initialized())
    with warnings.catch_warnings():
        # one process reading every shard is the intent here, not a missing process group
        warnings.filterwarnings("ignore", message=".*assuming the intent is to load in a single")
        dcp.load(target, checkpoint_id=str(folder), no_dist=single)
    set_state_dict(model, optimizer, model_state_dict=target["model"],
                   optim_state_dict=target["optimizer"], options=StateDictOptions(strict=False))


def _load_whole_into_sharded(saved: dict[str, torch.Tensor], optim: dict, model,
                             optimizer) -> None:
    """A checkpoint of whole tensors (one process, or DDP) into a sharded model: each process
    keeps its shards. ``optim`` numbers the parameters in the order the optimiser was given them
    (the trainable parameters in model order); the sharded API names them."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    names = [n for n, p in model.named_parameters() if p.requires_grad]
    named = {"state": {names[i]: v for i, v in optim["state"].items()},
             "param_groups": [{**g, "params": [names[i] for i in g["params"]]}
                              for g in optim["param_groups"]]}
    set_state_dict(model, optimizer, model_state_dict=saved, optim_state_dict=named,
                   options=StateDictOptions(full_state_dict=True, strict=False))


def save_final(output: str | Path, model, tokenizer, name: str = "final",
               card: str | None = None):
    """Save a plain HF model folder (safetensors; LoRA merged in) atomically; a LoRA model's
    peft adapter goes in its ``adapter/`` too (``PeftModel.from_pretrained`` on the base, vLLM
    LoRA requests, ``--model <folder>/adapter``); ``card``: its README.md. Returns (folder, the
    plain model): LoRA adapters are folded into the weights in place."""
    from alignkit.models.lora import is_lora, merged_copy_for_saving

    root = Path(output)
    final = root / name
    tmp = root / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    with writing(tmp, f"{final}"):
        if is_lora(model):
            model.save_pretrained(str(tmp / "adapter"), safe_serialization=True)
            tokenizer.save_pretrained(str(tmp / "adapter"))
        plain = merged_copy_for_saving(model)
        plain.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        if card is not None:
            (tmp / "README.md").write_text(card, encoding="utf-8")
    old = root / f".{name}.old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final, plain
