"""``alignkit label``: preference labels for prompts.

1. read prompts (or samples that already carry ``responses``);
2. sample K responses per prompt from the policy with the shared sampler;
3. score them with the hidden gold scorer and let a panel of simulated annotators rank them
   through Bradley-Terry / Plackett-Luce noise (the Gao et al. 2022 protocol);
4. write rankings or pairs with annotator ids, plus a report of how often the labels agree
   with gold and the Bayes-optimal accuracy any reward model could reach on them.

With ``--judge SPEC`` an AI judge labels instead of the panel (RLAIF; ``judges.spec``): every
pair is judged (both orders by default), K-way rankings are ordered by each response's summed
win probability, and each record keeps the judge's confidence. Labels are appended to --output
one fsync'ed JSON line at a time as they complete, so a killed run loses at most the line being
written; ``--resume`` reads the finished record ids back, drops a torn last line and judges only
the rest. When every unit is done the file is rewritten (temp + rename) in input order, so an
interrupted-and-resumed run and an uninterrupted one write the same file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from alignkit.config import LabelConfig
from alignkit.data.readers import read_records
from alignkit.data.schemas import RecordProblem, _optional_str, _text, check_responses
from alignkit.data.tokenize import use_chat_template
from alignkit.errors import DataError, UserError
from alignkit.recipes.common import log


def read_prompts(spec: str, limit: int) -> list[dict]:
    problems: list[str] = []
    records, out = read_records(spec, problems), []
    for rec in records:
        try:
            prompt = _text(rec.fields, "prompt")
            responses = rec.fields.get("responses")
            if responses is not None:
                check_responses(responses)
            out.append({"prompt": prompt, "category": _optional_str(rec.fields, "category"),
                        "responses": responses, "where": rec.where})
        except RecordProblem as p:
            problems.append(f"{rec.where}: {p}")
    if problems:
        raise DataError(problems)
    if not out:
        raise UserError(f"{spec}: no prompts")
    return out[:limit] if limit > 0 else out


def load_panel(cfg: LabelConfig, scorer):
    from alignkit.config import read_yaml_file
    from alignkit.feedback.simulated import PanelConfig, PanelError, SimulatedPanel

    values, lines = {}, {}
    if cfg.panel:
        values, lines = read_yaml_file(cfg.panel, "panel file")
        values = {} if values is None else values  # an empty file: the default panel
        if not isinstance(values, dict):
            raise UserError(f"{cfg.panel}: expected a mapping of annotators, gold_scale, "
                            "assignment")
    in_file = {str(k) for k in values}
    values = {"gold_scale": cfg.gold_scale, **values}
    try:
        return SimulatedPanel.from_config(PanelConfig.from_dict(values), seed=cfg.seed,
                                          scorer=scorer)
    except PanelError as e:
        if e.key[0] not in in_file:  # from --gold-scale, not the file
            raise
        line = lines.get(e.key) or lines.get(e.key[:1])
        raise UserError(f"{cfg.panel}{f':{line}' if line else ''}: {e}") from None


def sample_responses(model, tokenizer, items: list[dict], num_responses: int,
                     max_new_tokens: int, temperature: float, top_p: float, batch_size: int,
                     seed: int) -> None:
    """Fill ``responses`` (and ``ended``) of the items that have none with K policy samples."""
    from alignkit.generation.simple import generate

    need = [i for i in items if i.get("responses") is None]
    if not need:
        return
    for item in need:  # a chat-message prompt on a model without a chat template: name its line
        use_chat_template(tokenizer, "auto", isinstance(item["prompt"], list), item.get("where", ""))
    flat = [i["prompt"] for i in need for _ in range(num_responses)]
    gens = generate(model, tokenizer, flat, max_new_tokens, do_sample=True,
                    temperature=temperature, top_p=top_p, batch_size=batch_size, seed=seed)
    for n, item in enumerate(need):
        chunk = gens[n * num_responses:(n + 1) * num_responses]
        item["responses"] = [g.text for g in chunk]
        item["ended"] = [g.ended for g in chunk]
    log.info("sampled %d responses for %d prompts", len(gens), len(need))


def label_items(items: list[dict], scorer, panel, labels_per_prompt: int = 1,
                fmt: str = "rankings") -> list[dict]:
    """Gold-score every response, then let ``labels_per_prompt`` panel members label each
    prompt. Returns ranking or pair records (README.md, "Data") with annotator ids and gold."""
    prompts = [i["prompt"] for i in items]
    responses = [i["responses"] for i in items]
    categories = [i.get("category") for i in items]
    flags = [i.get("ended") or [None] * len(i["responses"]) for i in items]
    flat_p = [p for p, rs in zip(prompts, responses) for _ in rs]
    flat_c = [c for c, rs in zip(categories, responses) for _ in rs]
    flat_g = scorer.score(flat_p, [r for rs in responses for r in rs], flat_c,
                          [e for fs in flags for e in fs])
    golds, at = [], 0
    for rs in responses:
        golds.append(flat_g[at:at + len(rs)])
        at += len(rs)
    records = []
    for _ in range(labels_per_prompt):
        if fmt == "rankings":
            labelled = panel.label_rankings(prompts, responses, golds=golds)
        else:
            labelled = panel.label_pairs(prompts, [rs[0] for rs in responses],
                                         [rs[1] for rs in responses],
                                         gold_a=[g[0] for g in golds], gold_b=[g[1] for g in golds])
        for rec, cat in zip(labelled, categories):
            if cat is not None:
                rec["category"] = cat
        records.extend(labelled)
    return records


def write_labels(records: list[dict], output: str | Path, panel) -> dict:
    """Write the labels atomically and the agreement report beside them; return the report."""
    from alignkit.feedback.simulated import agreement_report

    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    with tmp.open("w", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(rec) + "\n")
    tmp.replace(out)
    report = agreement_report(records, panel.annotators, panel.gold_scale)
    out.with_name(out.stem + ".report.json").write_text(json.dumps(report, indent=1))
    return report


def main(cfg: LabelConfig) -> dict:
    from alignkit.judges.gold import GoldScorer

    if cfg.judge:
        return main_judge(cfg)
    if not cfg.data:
        raise UserError("--data is required")
    if cfg.num_responses < 2:
        raise UserError(f"--num-responses must be >= 2, got {cfg.num_responses}")
    # 1. Prompts (and any responses they carry); the panel is checked before any sampling.
    items = read_prompts(cfg.data, cfg.max_prompts)
    panel = load_panel(cfg, None)
    # 2. Sample K responses per prompt that has none.
    tokenizer = None
    if any(i["responses"] is None for i in items):
        from alignkit.models.loading import load_model_and_tokenizer, pick_device

        model, tokenizer = load_model_and_tokenizer(cfg.model, pick_device(cfg.device))
        sample_responses(model, tokenizer, items, cfg.num_responses, cfg.max_new_tokens,
                         cfg.temperature, cfg.top_p, cfg.batch_size, cfg.seed)
    # 3. Gold scores and the simulated panel (R annotators per prompt).
    scorer = GoldScorer(token_counter=tokenizer)
    panel.scorer = scorer
    records = label_items(items, scorer, panel, cfg.labels_per_prompt, cfg.format)
    # 4. Labels and the agreement report.
    report = write_labels(records, cfg.output, panel)
    print(f"labelled {len(records)} record(s) -> {cfg.output}")
    print(f"pairs {report['pairs']}: labels agree with gold {report['gold_agreement']:.3f}; "
          f"Bayes-optimal accuracy (the ceiling for any reward model) "
          f"{report['bayes_optimal']:.3f}")
    for ann, r in report["per_annotator"].items():
        print(f"  {ann:<16} pairs {r['pairs']:>5}  gold agreement {r['gold_agreement']:.3f}  "
              f"bayes-optimal {r['bayes_optimal']:.3f}")
    return {"output": Path(cfg.output), "report": report}


# ---------------------------------------------------------------------------------------------
# RLAIF: an AI judge labels (``--judge SPEC``)


def read_judge_items(spec: str, limit: int, seed: int) -> list[dict]:
    """Prompts (optionally with ``responses``) as for the panel, and also labelled pairs
    ``{prompt, chosen, rejected[, tie]}`` -- human (or any) labels to measure the judge against.
    A pair is shown in a seeded random order (chosen first or second), so that a judge asked one
    order only cannot score by position; ``human`` says which slot the label preferred."""
    import random

    problems: list[str] = []
    records = read_records(spec, problems)
    if not any("chosen" in r.fields for r in records):
        return read_prompts(spec, limit)
    from alignkit.data.preferences import parse_pair

    out = []
    for index, rec in enumerate(records):
        try:
            if "chosen" not in rec.fields:
                raise RecordProblem("chosen", 'field "chosen" is missing (a file with labelled '
                                    "pairs must label every record)")
            pair = parse_pair(rec)
            category = _optional_str(rec.fields, "category")
        except RecordProblem as p:
            problems.append(f"{rec.where}: {p}")
            continue
        chosen_first = random.Random(f"{seed}:{index}").random() < 0.5
        responses = [pair.chosen, pair.rejected] if chosen_first else [pair.rejected,
                                                                        pair.chosen]
        human = "tie" if pair.tie else ("a" if chosen_first else "b")
        out.append({"prompt": pair.prompt, "category": category,
                    "responses": responses, "human": human, "where": rec.where})
    if problems:
        raise DataError(problems)
    return out[:limit] if limit > 0 else out


def unit_id(index: int, prompt, responses: list, settings: dict | None = None) -> str:
    """A record id that names the input position, its content and the labelling settings that
    decide its label (a resume against different data, another judge or other judging options is
    caught, not silently mixed)."""
    import hashlib

    digest = hashlib.sha256(json.dumps([prompt, responses, settings or {}],
                                       sort_keys=True).encode()).hexdigest()[:10]
    return f"{index:06d}-{digest}"


def labelling_settings(cfg: LabelConfig) -> dict:
    """The options of ``alignkit label --judge`` that change what a record says (not how fast
    or where it is cached)."""
    return {"judge": cfg.judge, "format": cfg.format, "principles": cfg.principles,
            "both_orders": cfg.judge_both_orders, "logprobs": cfg.judge_logprobs,
            "max_tokens": cfg.judge_max_tokens, "seed": cfg.seed}


def plan_units(items: list[dict], fmt: str,
               settings: dict | None = None) -> tuple[list[dict], int]:
    """One labelling unit per prompt: a pair (the first two responses) or a K-way ranking of its
    distinct responses. Prompts with fewer than two distinct responses are skipped (counted):
    a comparison needs two different responses. ``settings`` (``labelling_settings``) enter
    every unit's id."""
    units, skipped = [], 0
    for index, item in enumerate(items):
        distinct = list(dict.fromkeys(json.dumps(r) for r in item["responses"]))
        responses = [json.loads(r) for r in distinct]
        if fmt == "pairs":
            responses = responses[:2]
        if len(responses) < 2:
            skipped += 1
            continue
        units.append({"id": unit_id(index, item["prompt"], responses, settings),
                      "prompt": item["prompt"],
                      "responses": responses, "category": item.get("category"),
                      "human": item.get("human") if len(responses) == 2 else None})
    return units, skipped


def read_done(path: Path) -> dict[str, dict]:
    """Finished records of an earlier (possibly killed) run, by id. A torn last line -- the one
    being written at the kill -- is cut off the file so appending continues cleanly."""
    done: dict[str, dict] = {}
    if not path.exists():
        return done
    raw = path.read_bytes()
    good = 0
    for line in raw.splitlines(keepends=True):
        if not line.endswith(b"\n"):
            break
        try:
            rec = json.loads(line)
        except (ValueError, RecursionError):  # bad JSON, or bytes that are not UTF-8
            rec = None
        if not isinstance(rec, dict) or "id" not in rec:
            # only an unfinished last line (no newline) can be a torn write: anything else is a
            # file this stage did not write, and is left as it is
            line_no = raw[:good].count(b"\n") + 1
            why = "no id" if isinstance(rec, dict) else "not a JSON object"
            raise UserError(f"{path}:{line_no}: not a labelling record ({why}); was it written "
                            "by alignkit label --judge?")
        done.setdefault(rec["id"], rec)
        good += len(line)
    if good < len(raw):
        with path.open("r+b") as fh:
            fh.truncate(good)
            fh.flush()
            os.fsync(fh.fileno())
        log.info("%s: dropped a torn last line (%d bytes)", path, len(raw) - good)
    return done


def judge_unit(judge, unit: dict, constitution, seed: int, name: str) -> dict:
    """Judge every pair of one unit; returns its preference or ranking record."""
    from alignkit.judges.spec import with_principle
    from alignkit.judges.swap import BothOrders

    principle = constitution.draw(seed, unit["id"]) if constitution is not None else None
    j = with_principle(judge, principle.criterion) if principle is not None else judge
    responses, prompt = unit["responses"], unit["prompt"]
    pairs = [(a, b) for a in range(len(responses)) for b in range(a + 1, len(responses))]
    verdicts = []
    for a, b in pairs:
        if isinstance(j, BothOrders):
            combined, fwd, bwd = j.judge_both(prompt, responses[a], responses[b])
            orders = [fwd.winner, bwd.winner]
        else:
            combined, orders = j.judge(prompt, responses[a], responses[b]), None
        verdicts.append((a, b, combined, orders))
    return make_record(unit, verdicts, name, principle)


def make_record(unit: dict, verdicts: list, name: str, principle) -> dict:
    """A pair record ({prompt, chosen, rejected} or a tie) for one pair, else a K-way ranking
    ordered by summed win probability (ties keep input order)."""
    rec: dict = {"id": unit["id"], "prompt": unit["prompt"]}
    responses = unit["responses"]
    if len(responses) == 2 and len(verdicts) == 1 and unit.get("format") == "pairs":
        _, _, v, orders = verdicts[0]
        first, second = (responses[1], responses[0]) if v.winner == "b" else tuple(responses)
        rec.update({"chosen": first, "rejected": second})
        if v.winner == "tie":
            rec["tie"] = True
    else:
        wins = [0.0] * len(responses)
        for a, b, v, _ in verdicts:
            wins[a] += v.prob_a
            wins[b] += 1.0 - v.prob_a
        rec.update({"responses": responses,
                    "ranking": sorted(range(len(responses)), key=lambda i: (-wins[i], i))})
    rec["annotator"] = name
    rec["confidence"] = round(sum(v.confidence for _, _, v, _ in verdicts) / len(verdicts), 6)
    rec["judgements"] = [{"a": a, "b": b, "winner": v.winner, "confidence": round(v.confidence, 6),
                          **({"orders": orders} if orders is not None else {})}
                         for a, b, v, orders in verdicts]
    if unit.get("human") is not None:
        rec["judgements"][0]["human"] = unit["human"]
    if principle is not None:
        rec["principle"] = principle.name
    if unit.get("category") is not None:
        rec["category"] = unit["category"]
    return rec


class AppendLog:
    """Append-only JSONL: one line per record, flushed and fsync'ed before the next."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.fh = path.open("ab")

    def write(self, rec: dict) -> None:
        self.fh.write((json.dumps(rec) + "\n").encode())
        self.fh.flush()
        os.fsync(self.fh.fileno())

    def close(self) -> None:
        self.fh.close()


def run_units(judge, units: list[dict], out: AppendLog, constitution, seed: int, name: str,
              workers: int, batch_size: int, progress) -> None:
    """Judge the units; concurrent judges (HTTP) from a thread pool, others in batches. Each
    record is appended as soon as it is complete."""
    from concurrent.futures import ThreadPoolExecutor, as_completed

    if getattr(judge, "concurrent", False) and workers > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(judge_unit, judge, u, constitution, seed, name)
                       for u in units]
            try:
                for fut in as_completed(futures):
                    out.write(fut.result())
                    progress.update(1)
            except BaseException:
                for fut in futures:
                    fut.cancel()
                raise
        return
    from alignkit.judges.swap import BothOrders

    for start in range(0, len(units), max(1, batch_size)):
        chunk = units[start:start + max(1, batch_size)]
        if constitution is None and all(len(u["responses"]) == 2 for u in chunk):
            # one batched call for the whole chunk (local / reward / gold judges batch)
            prompts = [u["prompt"] for u in chunk]
            a = [u["responses"][0] for u in chunk]
            b = [u["responses"][1] for u in chunk]
            if isinstance(judge, BothOrders):
                results = [(v, [f.winner, w.winner]) for v, f, w in
                           judge.judge_many_both(prompts, a, b)]
            else:
                from alignkit.judges.base import judge_many

                results = [(v, None) for v in judge_many(judge, prompts, a, b)]
            for u, (v, orders) in zip(chunk, results):
                out.write(make_record(u, [(0, 1, v, orders)], name, None))
                progress.update(1)
        else:
            for u in chunk:
                out.write(judge_unit(judge, u, constitution, seed, name))
                progress.update(1)


def judge_table(records: list[dict], scorer, categories_of: dict, name: str,
                reference: str) -> dict:
    """Agreement of the judge's pair verdicts with the gold scorer and its position-bias rate,
    over every judged pair of ``records`` (resumed runs included)."""
    from alignkit.judges.agreement import judge_report
    from alignkit.judges.base import Verdict
    from alignkit.judges.swap import PositionTally

    tally = PositionTally()
    prompts, ra, rb, verdicts, human = [], [], [], [], []
    for rec in records:
        for j in rec["judgements"]:
            if "responses" in rec:
                responses_ab = (rec["responses"][j["a"]], rec["responses"][j["b"]])
            elif j["winner"] == "b":  # a pair record: the judged order was (rejected, chosen)
                responses_ab = (rec["rejected"], rec["chosen"])
            else:
                responses_ab = (rec["chosen"], rec["rejected"])
            prompts.append(rec["prompt"])
            ra.append(responses_ab[0])
            rb.append(responses_ab[1])
            verdicts.append(Verdict(j["winner"], j["confidence"]))
            human.append(Verdict(j["human"]) if j.get("human") else None)
            if "orders" in j:
                tally.add(Verdict(j["orders"][0]), Verdict(j["orders"][1]))
    labels = None
    if reference == "gold" and verdicts:
        from alignkit.evaluation.winrate import GoldScoreJudge

        labels = GoldScoreJudge(scorer, categories_of).judge_many(prompts, ra, rb)
    elif reference == "human":
        keep = [i for i, h in enumerate(human) if h is not None]
        if not keep:
            raise UserError("--agreement human needs labelled pairs in --data "
                            "({prompt, chosen, rejected})")
        verdicts, labels = [verdicts[i] for i in keep], [human[i] for i in keep]
    return judge_report(name, verdicts, labels, tally if tally.pairs else None,
                        reference_name=reference)


def main_judge(cfg: LabelConfig) -> dict:
    from alignkit.judges.agreement import format_table
    from alignkit.judges.spec import JudgeOptions, make_judge
    from alignkit.recipes.common import progress_bar

    if not cfg.data:
        raise UserError("--data is required")
    if cfg.num_responses < 2:
        raise UserError(f"--num-responses must be >= 2, got {cfg.num_responses}")
    if cfg.judge_workers < 1:
        raise UserError(f"--judge-workers must be >= 1, got {cfg.judge_workers}")
    out = Path(cfg.output)
    if out.exists() and not (cfg.resume or cfg.overwrite):
        raise UserError(f"{out}: exists; pass --resume to continue labelling it or --overwrite "
                        "to replace it")
    if out.exists() and cfg.overwrite and not cfg.resume:
        out.unlink()
    constitution = None
    if cfg.principles:
        from alignkit.judges.constitution import load_constitution

        constitution = load_constitution(cfg.principles)
    # 1. Prompts and their responses (sampled, seeded, when the data has none).
    items = read_judge_items(cfg.data, cfg.max_prompts, cfg.seed)
    if cfg.agreement == "human" and not any(i.get("human") for i in items):
        raise UserError(f"--agreement human: {cfg.data} holds no labelled pairs "
                        "({prompt, chosen, rejected})")
    tokenizer = None
    if any(i["responses"] is None for i in items):
        from alignkit.models.loading import load_model_and_tokenizer, pick_device

        model, tokenizer = load_model_and_tokenizer(cfg.model, pick_device(cfg.device))
        sample_responses(model, tokenizer, items, cfg.num_responses, cfg.max_new_tokens,
                         cfg.temperature, cfg.top_p, cfg.batch_size, cfg.seed)
        del model
    units, skipped = plan_units(items, cfg.format, labelling_settings(cfg))
    for u in units:
        u["format"] = cfg.format
    # 2. What an earlier run already labelled.
    done = read_done(out) if cfg.resume else {}
    known = {u["id"] for u in units}
    stray = sorted(set(done) - known)
    if stray:
        raise UserError(f"{out}: holds {len(stray)} record(s) (e.g. id {stray[0]}) that the "
                        f"current --data does not produce; it was labelled from other data or "
                        "settings (use another --output, or --overwrite)")
    todo = [u for u in units if u["id"] not in done]
    # 3. The judge, and the labels.
    categories = {i["prompt"]: i.get("category") for i in items if isinstance(i["prompt"], str)}
    cache = cfg.judge_cache or str(out.with_name(out.name + ".judge-cache"))
    from alignkit.models.loading import pick_device

    judge = make_judge(cfg.judge, JudgeOptions(
        cache_dir=cache, both_orders=cfg.judge_both_orders, max_tokens=cfg.judge_max_tokens,
        retries=cfg.judge_retries, rate=cfg.judge_rate, timeout=cfg.judge_timeout,
        device=pick_device(cfg.device), batch_size=cfg.batch_size,
        logprobs=cfg.judge_logprobs),
        categories=categories, token_counter=tokenizer)
    name = f"judge:{getattr(judge, 'name', cfg.judge)}"
    log.info("labelling %d unit(s) with %s (%d already done, %d skipped: fewer than two distinct "
             "responses)", len(todo), name, len(done), skipped)
    appender = AppendLog(out)
    progress = progress_bar(len(units), len(done), True, "judging")
    try:
        run_units(judge, todo, appender, constitution, cfg.seed, name, cfg.judge_workers,
                  cfg.batch_size, progress)
    finally:
        appender.close()
        progress.close()
    # 4. Every unit is done: rewrite in input order (atomically), then the report.
    records = read_done(out)
    ordered = [records[u["id"]] for u in units]
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    with tmp.open("w", encoding="utf-8") as fh:
        for rec in ordered:
            fh.write(json.dumps(rec) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(out)
    scorer = None
    if cfg.agreement == "gold":
        from alignkit.judges.gold import GoldScorer

        scorer = GoldScorer(token_counter=tokenizer)
    row = judge_table(ordered, scorer, categories, name, cfg.agreement)
    stats = dict(getattr(getattr(judge, "inner", judge), "stats", {}) or {})
    report = {"judge": cfg.judge, "records": len(ordered), "resumed_from": len(done),
              "skipped_prompts": skipped, "format": cfg.format,
              "principles": constitution.name if constitution else None,
              "table": [row], "requests": stats}
    out.with_name(out.stem + ".report.json").write_text(json.dumps(report, indent=1))
    print(f"labelled {len(ordered)} record(s) with {name} -> {out} "
          f"({len(done)} from an earlier run, {len(todo)} now; {skipped} prompt(s) skipped)")
    if stats:
        print("judge requests: " + ", ".join(f"{k} {v}" for k, v in stats.items()))
    print(format_table([row]))
    return {"output": out, "report": report}
