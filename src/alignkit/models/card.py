"""Model cards: the README.md a saved ``final/`` (or ``best/``) folder explains itself with, in
the Hugging Face hub's format (YAML metadata, then Markdown)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

# the settings a reader needs to know what was trained, in this order, where a stage has them
KEY_SETTINGS = (
    "model", "data", "eval_data", "lora", "lora_r", "lora_alpha", "lora_targets", "lr",
    "schedule", "warmup_steps", "batch_size", "grad_accum", "max_steps", "epochs", "max_length",
    "precision", "seed", "loss", "beta", "label_smoothing", "reference_free", "advantage",
    "samples_per_prompt", "kl_coef", "adaptive_kl", "reward_model", "max_new_tokens",
    "temperature", "rounds", "labeler", "rollout_engine",
)


def model_card(stage: str, base: str, settings: dict[str, Any], heldout: dict[str, Any],
               adapter: bool, base_folder: str = "") -> str:
    """``stage``: the alignkit stage that trained the model; ``base``: the model it started from
    as given (``--model``), ``base_folder`` where it was loaded from; ``settings``: the run's
    resolved options (``KEY_SETTINGS`` of them are shown); ``heldout``: the last held-out
    evaluation's metrics; ``adapter``: an ``adapter/`` folder is beside."""
    base_folder = base_folder or base
    # hub metadata names a hub id; a local folder or the packaged default is named in the text
    hub_id = (base.count("/") == 1 and not base.startswith((".", "/", "~"))
              and not Path(base).exists())
    shown = "default (SmolLM2-135M-Instruct, packaged with alignkit)" if base == "default" \
        else base
    rows = "\n".join(f"| `{k}` | `{settings[k]}` |" for k in KEY_SETTINGS
                     if settings.get(k) not in (None, ""))
    numbers = "\n".join(f"| {k} | {v:.4g} |" for k, v in heldout.items()
                        if isinstance(v, (int, float)) and not isinstance(v, bool)
                        and k not in ("step", "time"))
    adapter_text = (
        "\nThe LoRA adapter alone is in `adapter/` (`adapter_config.json` names the base):\n\n"
        "```python\nfrom peft import PeftModel\nfrom transformers import AutoModelForCausalLM\n"
        f"base = AutoModelForCausalLM.from_pretrained(\"{base_folder}\")\n"
        "model = PeftModel.from_pretrained(base, \"adapter\")\n```\n\n"
        "`alignkit <stage> --model <this folder>/adapter` starts from it (merged into the base "
        "once).\n" if adapter else "")
    return f"""---
library_name: transformers
{f"base_model: {base}" + chr(10) if hub_id else ""}tags: [alignkit, {stage}]
---
# {stage} model trained with alignkit

Started from `{shown}` and trained by `alignkit {stage}`; the weights here are a plain
causal LM{" (LoRA merged in)" if adapter else ""}:

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained("<this folder>")
tokenizer = AutoTokenizer.from_pretrained("<this folder>")
```
{adapter_text}
## Settings

| option | value |
|---|---|
{rows}

The run's whole resolved configuration is `config.yaml` beside this folder
(`alignkit {stage} --config config.yaml` runs it again).

## Held-out evaluation

{"| metric | value |" + chr(10) + "|---|---|" + chr(10) + numbers if numbers else
 "No held-out evaluation ran (no --eval-data and --eval-fraction 0, or a stage without one)."}
"""
