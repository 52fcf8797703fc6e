"""fp32 against bf16 on the CPU: SmolLM2 decoding and scoring (a full forward), as plain fp32,
under bf16 autocast (what ``--precision bf16`` runs) and with the weights cast to bf16, at
batch 16 (a PPO rollout of the demo) and 64 (evaluation). Greedy, 48 new tokens, the held-out
demo prompts, one process, nothing else running.

    python bench/precision_cpu.py --model runs/demo/sft/final
    # the demo's PPO step in both numerics (metrics.jsonl: step_time_s, gen_tokens_per_s):
    alignkit ppo --config runs/demo/ppo/config.yaml --max-steps 4 --eval-every 0 \\
        --precision fp32 --output /tmp/ppo_fp32      # and --precision bf16

Whether bf16 pays depends on the CPU: with AMX (Intel Xeon from Sapphire Rapids on) its
matmuls are fast; without it they may be slower than fp32. ``--repeats N`` runs the three sides
in turn N times and keeps each one's fastest time (a shared VM's noise only ever slows a run).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from harness import machine_facts  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--batch-sizes", default="16,64")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if args.repeats < 1:
        ap.error("--repeats must be 1 or more")

    import torch

    from alignkit.data.prompts import load_prompts
    from alignkit.generation.sampler import SamplingConfig, decode, left_pad, response_logprobs
    from alignkit.models.loading import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(args.model, "cpu")
    model.eval()
    bf16_weights = copy.deepcopy(model).to(torch.bfloat16)
    prompts = load_prompts("demo-prompts-heldout", tok)
    sampling = SamplingConfig(args.max_new_tokens, 0.0)
    sides = {"fp32": (model, contextlib.nullcontext),
             "bf16 autocast": (model, lambda: torch.autocast("cpu", dtype=torch.bfloat16)),
             "bf16 weights": (bf16_weights, contextlib.nullcontext)}
    results = {}
    with torch.no_grad():
        for size in [int(b) for b in args.batch_sizes.split(",")]:
            query, mask = left_pad(prompts.ids[:size], tok.pad_token_id)
            for repeat in range(args.repeats):
                for name, (net, context) in sides.items():
                    with context():
                        t0 = time.perf_counter()
                        out = decode(net, query, mask, sampling, tok.pad_token_id,
                                     tok.eos_token_id)
                        decode_s = time.perf_counter() - t0
                        t0 = time.perf_counter()
                        response_logprobs(net, query, mask, out, torch.ones_like(out))
                        forward_s = time.perf_counter() - t0
                    print(f"batch {size:3d}  {name:14s} decode {decode_s:6.2f} s  "
                          f"forward {forward_s:5.2f} s  (repeat {repeat + 1})", flush=True)
                    best = results.setdefault(f"batch {size}, {name}", {
                        "decode_s": float("inf"), "forward_s": float("inf")})
                    best["decode_s"] = round(min(best["decode_s"], decode_s), 2)
                    best["forward_s"] = round(min(best["forward_s"], forward_s), 2)
                    best["decode_tokens_per_s"] = round(out.numel() / best["decode_s"], 1)
    report = {"benchmark": "precision_cpu", "model": args.model, "repeats": args.repeats,
              "results": results, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
              "amx": bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()),
              "machine": machine_facts(), "torch": torch.__version__}
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
