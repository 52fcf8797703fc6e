"""Sampler tokens/s: alignkit's shared sampler against ``transformers``' ``generate`` on the same
model, prompts, batch and length (issue 4: target >= 2x for SmolLM2 at batch 16).

    python bench/sampler_throughput.py                  # SmolLM2 (the demo's SFT model if present)
    python bench/sampler_throughput.py --model tiny --batches 3

Both sides decode the same left-padded batch of held-out demo prompts (chat-rendered) with a KV
cache, up to --max-new-tokens, stopping each sequence at EOS. Interleaved repeats, one process,
nothing else running. Two modes:

- ``greedy``: both must produce identical tokens (checked) - the cleanest like-for-like timing;
- ``sampled`` (temperature 1): same seeds, different draws (the two consume the RNG differently),
  so tokens/s counts each side's own real tokens (up to and including EOS).

alignkit's time is ``decode`` alone (``sample`` minus the log-prob pass PPO needs and
``generate`` does not give); the log-prob pass is timed and reported separately.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="auto",
                    help="auto (runs/demo/sft/final if present, else default), default, tiny, "
                         "or a folder")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--batches", type=int, default=3, help="interleaved repeats per mode")
    ap.add_argument("--json", default=str(HERE / "results" / "sampler_throughput.json"))
    args = ap.parse_args(argv)

    import torch

    from alignkit.data.readers import read_records
    from alignkit.data.tokenize import render_prompt
    from alignkit.generation.sampler import SamplingConfig, decode, left_pad, response_logprobs
    from alignkit.models.loading import load_model_and_tokenizer

    spec = args.model
    if spec == "auto":
        spec = "runs/demo/sft/final" if Path("runs/demo/sft/final/config.json").is_file() \
            else "default"
    if spec == "tiny":
        from alignkit.models.tiny import save_tiny_model
        spec = str(save_tiny_model(Path.home() / ".cache/alignkit/bench/sampler-tiny"))
    model, tok = load_model_and_tokenizer(spec, "cpu")
    model.eval()
    prompts = [r.fields["prompt"] for r in read_records("demo-prompts-heldout")]
    eos, pad = tok.eos_token_id, tok.pad_token_id
    bos = not getattr(tok, "chat_template", None)

    def batch(i):
        chunk = [prompts[(i * args.batch_size + j) % len(prompts)] for j in range(args.batch_size)]
        ids = [tok(render_prompt(tok, p), add_special_tokens=bos)["input_ids"] for p in chunk]
        return left_pad(ids, pad)

    def real_tokens(resp):
        n = 0
        for row in resp.tolist():
            n += (row.index(eos) + 1) if eos in row else len(row)
        return n

    results = {"greedy": {"alignkit": [], "transformers": []},
               "sampled": {"alignkit": [], "transformers": []}}
    logprob_s, identical = [], True
    with torch.no_grad():
        for i in range(args.batches):
            query, mask = batch(i)
            for mode in ("greedy", "sampled"):
                cfg = SamplingConfig(args.max_new_tokens, 0.0 if mode == "greedy" else 1.0)
                torch.manual_seed(i)
                t0 = time.perf_counter()
                ours = decode(model, query, mask, cfg, pad, eos)
                t_ours = time.perf_counter() - t0
                kwargs = dict(max_new_tokens=args.max_new_tokens, eos_token_id=eos,
                              pad_token_id=pad)
                kwargs.update(dict(do_sample=False, temperature=None, top_p=None, top_k=None)
                              if mode == "greedy" else dict(do_sample=True, temperature=1.0,
                                                           top_p=1.0, top_k=0))
                torch.manual_seed(i)
                t0 = time.perf_counter()
                theirs = model.generate(input_ids=query, attention_mask=mask, **kwargs)
                t_theirs = time.perf_counter() - t0
                theirs = theirs[:, query.shape[1]:]
                n_ours, n_theirs = real_tokens(ours), real_tokens(theirs)
                results[mode]["alignkit"].append({"s": t_ours, "tokens": n_ours})
                results[mode]["transformers"].append({"s": t_theirs, "tokens": n_theirs})
                if mode == "greedy":
                    width = theirs.shape[1]
                    same = all(a[:a.index(eos) + 1 if eos in a else width] ==
                               b[:b.index(eos) + 1 if eos in b else width]
                               for a, b in zip(ours.tolist(), theirs.tolist()))
                    identical &= same
                    # the log-prob pass PPO adds on top of decoding
                    resp_mask = torch.ones_like(ours)
                    t0 = time.perf_counter()
                    response_logprobs(model, query, mask, ours, resp_mask)
                    logprob_s.append(time.perf_counter() - t0)
    summary = {}
    for mode, sides in results.items():
        row = {}
        for side, runs in sides.items():
            row[side] = {"tokens_per_s": sum(r["tokens"] for r in runs) / sum(r["s"] for r in runs),
                         "s_per_batch_median": statistics.median(r["s"] for r in runs),
                         "tokens": sum(r["tokens"] for r in runs)}
        row["speedup"] = row["alignkit"]["tokens_per_s"] / row["transformers"]["tokens_per_s"]
        summary[mode] = row
    import transformers

    out = {"benchmark": "sampler_throughput", "command": " ".join(sys.argv),
           "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "model": spec,
           "batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens,
           "batches": args.batches, "greedy_tokens_identical": identical,
           "logprob_pass_s_median": statistics.median(logprob_s), "summary": summary,
           "runs": results, "torch": torch.__version__, "transformers": transformers.__version__,
           "threads": torch.get_num_threads(), "machine": platform.platform()}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=1))
    print(f"model {spec}, batch {args.batch_size}, max new tokens {args.max_new_tokens}, "
          f"{args.batches} batches per mode")
    print(f"{'mode':<8} {'alignkit tok/s':>14} {'transformers tok/s':>18} {'speedup':>8}")
    for mode, row in summary.items():
        print(f"{mode:<8} {row['alignkit']['tokens_per_s']:>14.1f} "
              f"{row['transformers']['tokens_per_s']:>18.1f} {row['speedup']:>7.2f}x")
    print(f"greedy outputs identical: {identical}; log-prob pass (PPO only) "
          f"{out['logprob_pass_s_median']:.2f} s per batch")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
