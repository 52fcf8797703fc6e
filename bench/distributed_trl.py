"""TRL's side of ``bench/distributed.py``: ``SFTTrainer`` or ``DPOTrainer`` with LoRA in fp32 on
the benchmark's workload, reading the examples in alignkit's batch order.

    python bench/distributed_trl.py SPEC.json                        # one process
    accelerate launch --multi_gpu --num_processes 2 --num_machines 1 \\
        --mixed_precision no --dynamo_backend no --num_cpu_threads_per_process 1 \\
        bench/distributed_trl.py SPEC.json                           # two processes (gloo on CPU)

``bench/distributed.py`` writes the spec and launches this script; it is not meant to be run by
hand. On a machine without GPUs ``--multi_gpu`` is what makes ``accelerate launch`` start the
processes (through torchrun); the Trainer (``use_cpu=True``) then joins them with gloo.
``--cpu --num_processes 2`` does not: without an MPI host file it starts one process.

Same step at every world size: each process reads ``batch_size`` examples per micro-batch and
accumulates ``grad_accum / world size`` of them, so an optimiser step is ``batch_size x
grad_accum`` examples. TRL reads the dataset sequentially (``train_sampling_strategy=
"sequential"``); accelerate hands micro-batch ``k`` of the order to process ``k mod world size``,
which is the micro-batch alignkit's rank ``k mod world size`` runs, so both frameworks train on
the same examples in every step. The first process writes the wall-clock end of every optimiser
step and the logged losses to the spec's ``result``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

STARTED = time.time()  # before the heavy imports

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from sft_throughput import LORA  # noqa: E402  (the same adapters as the other benchmarks)


def dataset(spec: dict):
    from datasets import Dataset

    records = [json.loads(line) for line in Path(spec["data_path"]).read_text().splitlines()
               if line.strip()]
    ordered = [records[i] for batch in spec["order"] for i in batch]
    if spec["trainer"] == "sft":
        rows = [{"prompt": [{"role": "user", "content": r["prompt"]}],
                 "completion": [{"role": "assistant", "content": r["completion"]}]}
                for r in ordered]
    else:
        rows = [{"prompt": [{"role": "user", "content": r["prompt"]}],
                 "chosen": [{"role": "assistant", "content": r["chosen"]}],
                 "rejected": [{"role": "assistant", "content": r["rejected"]}]} for r in ordered]
    return Dataset.from_list(rows)


def main(spec_path: str) -> None:
    import warnings

    warnings.filterwarnings("ignore")
    spec = json.loads(Path(spec_path).read_text())
    import torch
    from peft import LoraConfig
    from transformers import TrainerCallback

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if spec["grad_accum"] % world:
        raise SystemExit(f"grad_accum {spec['grad_accum']} is not a multiple of {world} processes")
    common = dict(
        output_dir=spec["output"], per_device_train_batch_size=spec["batch_size"],
        gradient_accumulation_steps=spec["grad_accum"] // world, max_steps=spec["steps"],
        max_length=spec["max_length"], learning_rate=spec["lr"], warmup_steps=0,
        seed=spec["seed"], report_to="none", save_strategy="no", eval_strategy="no",
        train_sampling_strategy="sequential", disable_tqdm=True, logging_steps=1,
        use_cpu=spec["device"] == "cpu", bf16=False, gradient_checkpointing=False,
        ddp_find_unused_parameters=spec.get("ddp_find_unused_parameters"))
    if spec["trainer"] == "sft":
        from trl import SFTConfig as Config, SFTTrainer as Trainer
    else:
        from trl import DPOConfig as Config, DPOTrainer as Trainer

        common.update(beta=0.1, lr_scheduler_type="constant")
    args = Config(**common)
    peft_config = LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=0.0,
                             target_modules=LORA["targets"], bias="none", task_type="CAUSAL_LM")
    step_ends: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            step_ends.append(time.time())

    trainer = Trainer(model=spec["model"], args=args, train_dataset=dataset(spec),
                      peft_config=peft_config, callbacks=[Clock()])
    trainer.train()
    if not trainer.is_world_process_zero():
        return
    losses = {int(h["step"]): float(h["loss"]) for h in trainer.state.log_history
              if "loss" in h and "step" in h}
    Path(spec["result"]).write_text(json.dumps({
        "step_ends": step_ends, "losses": [losses.get(k + 1) for k in range(len(step_ends))],
        "world_size": args.world_size, "grad_accum_per_process": args.gradient_accumulation_steps,
        "torch_threads": torch.get_num_threads(), "started": STARTED,
        "ddp_backend": str(getattr(args, "ddp_backend", None)),
        "ddp_find_unused_parameters": args.ddp_find_unused_parameters,  # None: transformers
        "distributed_type": str(trainer.accelerator.distributed_type)}))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    main(sys.argv[1])
