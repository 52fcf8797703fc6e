#!/usr/bin/env bash
# On a machine with CUDA GPUs: SFT, a reward ensemble, DPO and a short GRPO on the packaged
# SmolLM2 with DistributedDataParallel over every visible GPU (and SFT once more with FSDP2), bf16
# autocast and gradient checkpointing; prints each run's throughput and peak GPU memory from its
# metrics.jsonl. Usage: bash scripts/gpu_check.sh [OUT]
set -euo pipefail
out=${1:-runs/gpu-check}
gpus=$(python -c "import torch; print(torch.cuda.device_count())")
if [ "$gpus" -lt 1 ]; then echo "no CUDA GPU visible" >&2; exit 2; fi
launch=(python -m torch.distributed.run --standalone --nproc_per_node "$gpus" -m alignkit)
common=(--precision bf16 --gradient-checkpointing --max-steps 20 --save-every 0 --eval-every 0
        --eval-fraction 0 --overwrite --no-progress)
"${launch[@]}" sft --model default --data demo --lora --batch-size 8 --grad-accum "$gpus" \
    "${common[@]}" --output "$out/sft"
python -m alignkit label --model "$out/sft/final" --data demo-prompts --max-prompts 64 \
    --num-responses 4 --output "$out/prefs.jsonl"
"${launch[@]}" reward --model minilm --data "$out/prefs.jsonl" --ensemble 2 --batch-size 8 \
    --grad-accum "$gpus" "${common[@]}" --output "$out/reward"
"${launch[@]}" dpo --model "$out/sft/final" --data "$out/prefs.jsonl" --lora --batch-size 8 \
    --grad-accum "$gpus" --sample-prompts "" "${common[@]}" --output "$out/dpo"
"${launch[@]}" sft --model default --data demo --lora --batch-size 8 --grad-accum "$gpus" \
    --distributed fsdp "${common[@]}" --output "$out/sft-fsdp"
"${launch[@]}" ppo --model "$out/sft/final" --reward-model "$out/reward/final" --data demo-prompts \
    --advantage grpo --samples-per-prompt 4 --batch-size $((4 * gpus)) --minibatch-size 16 \
    --grad-accum 2 --max-new-tokens 64 --lora --precision bf16 --gradient-checkpointing \
    --max-steps 10 --save-every 0 --eval-data "" --overwrite --no-progress --output "$out/grpo"
python - "$out" "$gpus" <<'PY'
import json, sys
from pathlib import Path
out, gpus = Path(sys.argv[1]), int(sys.argv[2])
for stage, unit in (("sft", "tokens"), ("sft-fsdp", "tokens"), ("reward", "pairs"),
                    ("dpo", "pairs"), ("grpo", "rollouts")):
    rows = [json.loads(l) for l in (out / stage / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["split"] == "train"][2:]  # the first two steps warm up
    summary = next(r for r in rows if r["split"] == "summary")
    rate = sum(r[unit] for r in train) / sum(r["step_time_s"] for r in train)
    print(f"{stage:8s} {gpus} GPU(s): {rate:9.1f} {unit}/s ({rate / gpus:.1f} per GPU), "
          f"peak {summary.get('cuda_peak_mib', float('nan')):.0f} MiB on rank 0")
PY
