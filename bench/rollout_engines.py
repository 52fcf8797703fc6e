"""Rollout tokens/s: alignkit's own sampler, ``transformers``' ``generate`` and the vLLM rollout
engine (fp32 and bf16) on the same model, prompts and settings; plus a greedy agreement check
and the gap between vLLM's log-probs and the trainer's (issue target: vLLM >= 3x HF generate).

    python bench/rollout_engines.py --quick        # harness check: small batches, 1 repeat
    python bench/rollout_engines.py                # 16x4 and 64x4 sequences, 48 tokens, 2 repeats

Run it with the interpreter that has vLLM (``.venv-vllm/bin/python``, which
``scripts/test_vllm.sh`` builds). Everything runs in this one process, as the trainers use the
engine (colocated, ``VLLM_ENABLE_V1_MULTIPROCESSING=0``).

- Workloads: P held-out demo prompts (``demo-prompts-heldout``, chat-rendered) x S samples each,
  temperature 1, up to --max-new-tokens, each answer stopping at EOS, each answer with its own
  seed (``row_seed(seed, repeat, prompt, sample)``; HF ``generate`` draws from the global RNG,
  seeded per chunk). Every side draws its own tokens, so tokens/s counts each side's own real
  tokens (up to and including EOS).
- Sides: ``own`` = ``sampler.sample(..., with_logprobs=False, batch_size=--chunk)``; ``hf`` =
  ``model.generate(do_sample=True)`` on the same left-padded chunks of --chunk sequences;
  ``vllm-fp32`` / ``vllm-bf16`` = ``sample(..., with_logprobs=False, engine=VLLMEngine(...))``
  handed --vllm-chunk sequences per call (default 64, as the others; the engine schedules its
  own batch within a call; 0: the whole workload in one call).
  The timed call includes turning the answers into a ``Rollout``.
- Repeats are interleaved (every repeat runs every workload on every side in turn) after one
  small untimed warm-up call per side. tokens/s = a side's real tokens over its seconds, summed
  over the repeats during which other processes used at most 10% of the CPUs (all repeats when
  none was that quiet; ``runs_used`` / ``runs_busy`` in the JSON). vLLM's import and each
  engine's start-up (building ``vllm.LLM``: weights, KV cache, warm-up) are timed apart and are
  not in tokens/s.
- Greedy check: --greedy-prompts prompts, temperature 0, each vLLM engine against the own
  sampler: identical sequences (tokens up to and including EOS).
- Log-prob gap: ``sample(..., with_logprobs=True, engine=...)`` on the first workload gives
  vLLM's log-probs of its sampled tokens (``engine_logprobs``) and the trainer's fp32 forward's
  (``logprobs``) on the same tokens: max and mean absolute gap per real response token, and the
  mean absolute gap of the per-sequence sums.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
from pathlib import Path

STARTED = time.time()

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from harness import (  # noqa: E402
    BUSY_SHARE,
    children_cpu_s,
    cpu_busy_s,
    idle_check,
    machine_facts,
    others_share,
    peak_rss_mib,
    versions,
    write_json,
)

RESULTS = HERE / "results"
SIDES = ("own", "hf", "vllm-fp32", "vllm-bf16")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="default", help="model spec (default: SmolLM2-135M)")
    ap.add_argument("--prompts", default="16,64",
                    help="prompt counts of the workloads, comma-separated")
    ap.add_argument("--samples", type=int, default=4, help="answers per prompt")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=2, help="interleaved repeats")
    ap.add_argument("--chunk", type=int, default=64,
                    help="sequences per batch for the own sampler and HF generate")
    ap.add_argument("--vllm-chunk", type=int, default=64,
                    help="sequences handed to a vLLM engine per call (0: the whole workload in "
                         "one call; see the README: vLLM 0.32 on a CPU fails on seeded requests "
                         "whose prompts do not fit one scheduler step)")
    ap.add_argument("--greedy-prompts", type=int, default=16)
    ap.add_argument("--dtypes", default="fp32,bf16", help="vLLM engine dtypes")
    ap.add_argument("--kv-cache-gb", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true",
                    help="harness check: 4 and 8 prompts x 2 samples, 16 new tokens, 1 repeat")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if args.quick:
        args.prompts, args.samples, args.max_new_tokens = "4,8", 2, 16
        args.repeats, args.greedy_prompts = 1, 4
    sizes = [int(x) for x in args.prompts.split(",") if x]
    dtypes = [d for d in args.dtypes.split(",") if d]
    for d in dtypes:
        if d not in ("fp32", "bf16", "fp16"):
            raise SystemExit(f"--dtypes: unknown {d!r}")
    json_path = Path(args.json) if args.json else RESULTS / (
        "rollout_engines_quick.json" if args.quick else "rollout_engines.json")

    idle_before = idle_check()
    import torch

    from alignkit.data.readers import read_records
    from alignkit.data.tokenize import render_prompt
    from alignkit.generation.sampler import SamplingConfig, left_pad, row_seed, sample
    from alignkit.models.loading import load_model_and_tokenizer, resolve_model

    rss = {"after_import": peak_rss_mib()}
    model, tok = load_model_and_tokenizer(args.model, "cpu")
    model.eval()
    rss["after_model"] = peak_rss_mib()
    threads = torch.get_num_threads()
    eos, pad = tok.eos_token_id, tok.pad_token_id
    bos = not getattr(tok, "chat_template", None)
    texts = [r.fields["prompt"] for r in read_records("demo-prompts-heldout")]
    if max(sizes + [args.greedy_prompts]) > len(texts):
        raise SystemExit(f"at most {len(texts)} held-out prompts")
    encoded = [tok(render_prompt(tok, p), add_special_tokens=bos)["input_ids"] for p in texts]

    def workload(n_prompts: int, repeat: int):
        ids, seeds = [], []
        for i in range(n_prompts):
            for k in range(args.samples):
                ids.append(encoded[i])
                seeds.append(row_seed(args.seed, repeat, i, k))
        return ids, seeds

    cfg = SamplingConfig(args.max_new_tokens, 1.0)

    def real_tokens(resp: torch.Tensor) -> int:
        n = 0
        for row in resp.tolist():
            n += (row.index(eos) + 1) if eos in row else len(row)
        return n

    def run_hf(ids: list[list[int]], seed: int, max_new: int, greedy: bool = False):
        """model.generate over chunks of --chunk left-padded sequences -> (tokens, ended)."""
        n, ended = 0, 0
        kwargs = dict(max_new_tokens=max_new, eos_token_id=eos, pad_token_id=pad)
        kwargs.update(dict(do_sample=False, temperature=None, top_p=None, top_k=None) if greedy
                      else dict(do_sample=True, temperature=1.0, top_p=1.0, top_k=0))
        for c, start in enumerate(range(0, len(ids), args.chunk)):
            query, mask = left_pad(ids[start:start + args.chunk], pad)
            torch.manual_seed(seed * 1000 + c)
            with torch.no_grad():
                out = model.generate(input_ids=query, attention_mask=mask, **kwargs)
            resp = out[:, query.shape[1]:]
            n += real_tokens(resp)
            ended += sum(eos in row for row in resp.tolist())
        return n, ended

    def run_side(side: str, ids, seeds, repeat: int, max_new: int | None = None):
        """One timed rollout of ``ids`` on ``side`` -> its record."""
        c = cfg if max_new is None else SamplingConfig(max_new, 1.0)
        busy0, own0, child0 = cpu_busy_s(), time.process_time(), children_cpu_s()
        t0 = time.perf_counter()
        if side == "hf":
            n, ended = run_hf(ids, repeat, c.max_new_tokens)
        elif side == "own":
            roll = sample(model, ids, pad, eos, c, with_logprobs=False, batch_size=args.chunk,
                          row_seeds=seeds)
            n, ended = int(roll.response_mask.sum()), int(roll.ended.sum())
        else:  # the engine path of ``sample`` takes everything at once: chunk here
            step = args.vllm_chunk or len(ids)
            n = ended = 0
            for start in range(0, len(ids), step):
                roll = sample(model, ids[start:start + step], pad, eos, c, with_logprobs=False,
                              row_seeds=seeds[start:start + step], engine=engines[side])
                n, ended = n + int(roll.response_mask.sum()), ended + int(roll.ended.sum())
        wall = time.perf_counter() - t0
        spent = time.process_time() - own0 + children_cpu_s() - child0
        return {"s": wall, "tokens": n, "sequences": len(ids), "ended": ended,
                "tokens_per_s": n / max(wall, 1e-9),
                "others_cpu_share": others_share(busy0, cpu_busy_s(), spent, wall)}

    # ---------------------------------------------------------------- engines (start-up apart)
    from alignkit.generation.vllm_engine import VLLMEngine, import_vllm

    t0 = time.perf_counter()
    import_vllm(args.kv_cache_gb)  # sets the engine's environment, then imports vLLM
    engines, startup = {}, {"vllm_import_s": time.perf_counter() - t0}
    path = str(resolve_model(args.model))
    for d in dtypes:
        t0 = time.perf_counter()
        engine = VLLMEngine(path, dtype=d, seed=args.seed, kv_cache_gb=args.kv_cache_gb)
        startup[f"vllm-{d}"] = {"wall_s": time.perf_counter() - t0,
                                "llm_build_s": engine.stats.get("start_s")}
        engines[f"vllm-{d}"] = engine
        rss[f"after_engine_{d}"] = peak_rss_mib()
        print(f"vllm-{d}: engine ready in {startup[f'vllm-{d}']['wall_s']:.1f} s", flush=True)
    budget = {side: e._llm.llm_engine.vllm_config.scheduler_config.max_num_batched_tokens
              for side, e in engines.items()}
    global_state = {"max_num_batched_tokens": budget,
                    "torch_threads_before_engines": threads,
                    "torch_threads_after_engines": torch.get_num_threads(),
                    "default_dtype_after_engines": str(torch.get_default_dtype())}
    if torch.get_num_threads() != threads:  # keep every side on the same thread count
        torch.set_num_threads(threads)
    sides = ["own", "hf"] + [f"vllm-{d}" for d in dtypes]

    # ---------------------------------------------------------------- warm-up, then timing
    warm_ids, warm_seeds = workload(2, -1)
    for side in sides:
        run_side(side, warm_ids, warm_seeds, -1, max_new=8)
    runs = {f"{p}x{args.samples}": {s: [] for s in sides} for p in sizes}
    for repeat in range(args.repeats):
        for p in sizes:
            name = f"{p}x{args.samples}"
            ids, seeds = workload(p, repeat)
            for side in sides:
                r = run_side(side, ids, seeds, repeat)
                runs[name][side].append(r)
                print(f"repeat {repeat + 1}/{args.repeats} {name:>6} {side:<10} "
                      f"{r['tokens']:>6} tokens {r['s']:>7.1f} s {r['tokens_per_s']:>8.1f} tok/s"
                      f" (others used {r['others_cpu_share'] or 0:.0%} of the CPUs)", flush=True)

    summary = {}
    for name, by_side in runs.items():
        row = {}
        for side, every in by_side.items():
            # runs during which other work used the CPUs are left out when a quiet one exists
            quiet = [r for r in every if (r["others_cpu_share"] or 0) <= BUSY_SHARE]
            rs = quiet or every
            tokens, secs = sum(r["tokens"] for r in rs), sum(r["s"] for r in rs)
            seqs = sum(r["sequences"] for r in rs)
            row[side] = {"tokens_per_s": tokens / secs,
                         "tokens_per_s_median": statistics.median(r["tokens_per_s"] for r in rs),
                         "s_median": statistics.median(r["s"] for r in rs),
                         "mean_tokens_per_sequence": tokens / seqs,
                         "ended_share": sum(r["ended"] for r in rs) / seqs,
                         "runs_used": len(rs), "runs_busy": len(every) - len(quiet),
                         "tokens_per_s_all_runs": (sum(r["tokens"] for r in every)
                                                   / sum(r["s"] for r in every))}
        for side in sides:
            row[side]["vs_hf"] = row[side]["tokens_per_s"] / row["hf"]["tokens_per_s"]
        summary[name] = row

    # ---------------------------------------------------------------- greedy agreement
    greedy_ids = encoded[:args.greedy_prompts]
    gcfg = SamplingConfig(args.max_new_tokens, 0.0)

    def sequences(roll):
        return [row[:int(m)] for row, m in zip(roll.response.tolist(),
                                               roll.response_mask.sum(1).tolist())]

    own_greedy = sequences(sample(model, greedy_ids, pad, eos, gcfg, with_logprobs=False,
                                  batch_size=args.chunk))
    greedy = {}
    for d in dtypes:
        theirs = sequences(sample(model, greedy_ids, pad, eos, gcfg, with_logprobs=False,
                                  engine=engines[f"vllm-{d}"]))
        same = [a == b for a, b in zip(own_greedy, theirs)]
        first_diff = [next((t for t, (x, y) in enumerate(zip(a, b)) if x != y),
                           min(len(a), len(b))) for a, b in zip(own_greedy, theirs)]
        greedy[f"vllm-{d}"] = {"identical": sum(same), "of": len(same),
                               "first_difference_at": [f for f, s in zip(first_diff, same)
                                                       if not s]}

    # ---------------------------------------------------------------- log-prob gap
    gap = {}
    ids, seeds = workload(sizes[0], 10_000)
    for d in dtypes:
        roll = sample(model, ids, pad, eos, cfg, with_logprobs=True, row_seeds=seeds,
                      engine=engines[f"vllm-{d}"])
        mask = roll.response_mask.bool()
        diff = (roll.engine_logprobs - roll.logprobs).double()
        per_token = diff[mask].abs()
        seq_gap = (diff * mask).sum(1)
        gap[f"vllm-{d}"] = {"sequences": int(mask.shape[0]), "tokens": int(mask.sum()),
                            "max_abs": float(per_token.max()),
                            "mean_abs": float(per_token.mean()),
                            "mean_signed": float(diff[mask].mean()),
                            "share_over_0.01": float((per_token > 0.01).double().mean()),
                            "seq_sum_mean_abs": float(seq_gap.abs().mean()),
                            "seq_sum_max_abs": float(seq_gap.abs().max()),
                            "seq_sum_trainer_mean": float((roll.logprobs * mask).sum(1).mean())}
    rss["peak"] = peak_rss_mib()
    for engine in engines.values():
        engine.close()
    engines.clear()
    gc.collect()

    # ---------------------------------------------------------------- report
    busy = [f"{name} {side} #{k + 1}" for name, by_side in runs.items()
            for side, rs in by_side.items() for k, r in enumerate(rs)
            if (r["others_cpu_share"] or 0) > BUSY_SHARE]
    print(f"\nmodel {args.model}, {args.max_new_tokens} new tokens max, temperature 1, "
          f"{args.repeats} interleaved repeat(s); own/hf in chunks of {args.chunk}, vLLM "
          + (f"{args.vllm_chunk} sequences per call" if args.vllm_chunk else "all at once"))
    head = f"{'workload':>8} " + "".join(f"{s + ' tok/s':>16}" for s in sides)
    print(head + "".join(f"{s + '/hf':>14}" for s in sides if s != "hf"))
    for name, row in summary.items():
        print(f"{name:>8} " + "".join(f"{row[s]['tokens_per_s']:>16.1f}" for s in sides)
              + "".join(f"{row[s]['vs_hf']:>13.2f}x" for s in sides if s != "hf"))
    print(f"vLLM import {startup['vllm_import_s']:.1f} s; engine start-up (after it): "
          + ", ".join(f"{side} {s['wall_s']:.1f} s" for side, s in startup.items()
                      if side != "vllm_import_s"))
    for side, g in greedy.items():
        print(f"greedy, {side} vs own: {g['identical']}/{g['of']} identical")
    for side, g in gap.items():
        print(f"log-prob gap {side} vs trainer fp32 ({g['tokens']} tokens): max {g['max_abs']:.2e}"
              f", mean {g['mean_abs']:.2e}; per-sequence sum mean {g['seq_sum_mean_abs']:.2e}")
    print(f"peak RSS {rss['peak']:.0f} MiB; machine idle before: others used "
          f"{idle_before or 0:.0%} of the CPUs")
    if busy:
        print(f"WARNING: other work used over {BUSY_SHARE:.0%} of the CPUs during "
              f"{', '.join(busy)}: left out of the table where a quiet repeat of the same "
              f"workload and side exists; rerun on a quiet machine", file=sys.stderr)
    ver = versions()
    write_json(json_path, {
        "benchmark": "rollout_engines", "command": " ".join(["python"] + sys.argv),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "wall_s": time.time() - STARTED,
        "machine": machine_facts(omp_num_threads=os.environ.get("OMP_NUM_THREADS")),
        "versions": ver, "torch_threads": threads, "global_state": global_state,
        "settings": {"model": args.model, "model_path": path, "prompts": sizes,
                     "samples": args.samples, "max_new_tokens": args.max_new_tokens,
                     "temperature": 1.0, "repeats": args.repeats, "chunk": args.chunk,
                     "vllm_chunk": args.vllm_chunk, "greedy_prompts": args.greedy_prompts,
                     "dtypes": dtypes,
                     "kv_cache_gb": args.kv_cache_gb, "seed": args.seed},
        "summary": summary, "startup": startup, "greedy": greedy, "logprob_gap": gap,
        "rss_mib": rss, "others_cpu_share_before": idle_before, "busy_runs": busy,
        "runs": runs})
    print(f"wrote {json_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
