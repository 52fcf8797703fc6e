"""How far can a judge be trusted? Agreement with known labels and position-bias rate of the
judges ``alignkit label --judge`` takes, on pairs whose better answer is known: a shipped
demonstration (chosen) against one of the standard hacks (docs/demo-task.md; rejected:
positive-word spam, a pleasantry, a copied prompt, keyword stuffing, one word, an insult), shown in a seeded
random order.

    python bench/judge_agreement.py [--pairs 32] [--judges gold,local:default]
        [--serve default]   # also SmolLM2 behind `alignkit serve`, judged over HTTP

Writes bench/results/judge_agreement.json and prints the table. Run it alone (2 cores).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HACKS = ["positive spam", "pleasantry", "prompt copied", "keyword stuffing", "one word", "insult"]


def build_pairs(n: int, path: Path) -> None:
    from alignkit.data.readers import read_records
    from alignkit.judges.gold import demo_hacks

    demos = [r.fields for r in read_records("demo") if r.fields.get("category") == "helpful"]
    with path.open("w") as fh:
        for i, d in enumerate(demos[:n]):
            hack = demo_hacks(d["prompt"])[HACKS[i % len(HACKS)]]
            fh.write(json.dumps({"prompt": d["prompt"], "chosen": d["completion"],
                                 "rejected": hack, "category": "helpful"}) + "\n")


def run_label(spec: str, data: Path, out: Path) -> dict:
    started = time.time()
    proc = subprocess.run([sys.executable, "-m", "alignkit", "label", "--data", str(data),
                           "--judge", spec, "--format", "pairs", "--output", str(out),
                           "--agreement", "human", "--overwrite", "--judge-workers", "1",
                           "--judge-max-tokens", "8"], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-3000:])
    print(proc.stdout)
    (row,) = json.loads(out.with_name(out.stem + ".report.json").read_text())["table"]
    row["seconds"] = round(time.time() - started, 1)
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=32)
    ap.add_argument("--judges", default="gold,local:default")
    ap.add_argument("--serve", default="", help="model to serve and judge with over HTTP")
    ap.add_argument("--output", default="bench/results/judge_agreement.json")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "pairs.jsonl"
        build_pairs(args.pairs, data)
        for spec in [s for s in args.judges.split(",") if s]:
            rows.append({"spec": spec, **run_label(spec, data, Path(tmp) / "out.jsonl")})
        if args.serve:
            server = subprocess.Popen([sys.executable, "-m", "alignkit", "serve", "--model",
                                       args.serve, "--port", "0", "--model-name", "judge"],
                                      stdout=subprocess.PIPE, text=True)
            try:
                line = server.stdout.readline()
                url = line.split("listening on ")[1].split()[0]
                spec = f"{url}#judge"
                rows.append({"spec": f"http (alignkit serve {args.serve})",
                             **run_label(spec, data, Path(tmp) / "http.jsonl")})
            finally:
                server.terminate()
                server.wait()
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps({"pairs": args.pairs, "rows": rows}, indent=1))
    for r in rows:
        print(f"{r['spec']:<40} agreement {r.get('agreement', float('nan')):.3f}  "
              f"position-bias {r.get('position_bias_rate', float('nan')):.3f}  "
              f"first-slot {r.get('first_position_share', float('nan')):.3f}  {r['seconds']}s")


if __name__ == "__main__":
    main()
