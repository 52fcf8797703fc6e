"""RLAIF labelling (``alignkit label --judge SPEC``): an AI judge (``judges.spec``) labels the
responses to each prompt. Every pair is judged (both orders by default), K-way rankings are
ordered by each response's summed win probability, and each record keeps the judge's confidence.

Labels are appended to the output one fsync'ed JSON line at a time as they complete, so a killed
run loses at most the line being written; a resumed run reads the finished record ids back
(``read_done``), drops a torn last line and judges only the rest. When every unit is done the
file is rewritten (temp + rename) in input order (``write_in_order``), so an interrupted-and-
resumed run and an uninterrupted one write the same file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from alignkit.config import LabelConfig
from alignkit.data.prompts import read_prompts
from alignkit.data.readers import read_records
from alignkit.data.schemas import RecordProblem, _optional_str, distinct_indices
from alignkit.errors import DataError, UserError
from alignkit.utils.files import write_jsonl_atomic
from alignkit.utils.logs import log


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
    every unit's id; ``fmt`` is kept in each unit (a two-response unit of ``pairs`` becomes a
    pair record, of ``rankings`` a ranking)."""
    units, skipped = [], 0
    for index, item in enumerate(items):
        responses = [item["responses"][j] for j in distinct_indices(item["responses"])]
        if fmt == "pairs":
            responses = responses[:2]
        if len(responses) < 2:
            skipped += 1
            continue
        units.append({"id": unit_id(index, item["prompt"], responses, settings),
                      "prompt": item["prompt"],
                      "responses": responses, "category": item.get("category"),
                      "human": item.get("human") if len(responses) == 2 else None,
                      "format": fmt})
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
    from alignkit.judges.accuracy import judge_report
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
        from alignkit.judges.gold import GoldScoreJudge

        labels = GoldScoreJudge(scorer, categories_of).judge_many(prompts, ra, rb)
    elif reference == "human":
        keep = [i for i, h in enumerate(human) if h is not None]
        if not keep:
            raise UserError("--agreement human needs labelled pairs in --data "
                            "({prompt, chosen, rejected})")
        verdicts, labels = [verdicts[i] for i in keep], [human[i] for i in keep]
    return judge_report(name, verdicts, labels, tally if tally.pairs else None,
                        reference_name=reference)


def check_output(out: Path, resume: bool, overwrite: bool) -> None:
    """An existing label file (or the part files of a several-process run) is continued with
    ``resume``, replaced with ``overwrite`` (removed here), and otherwise refused."""
    earlier = out.exists() or bool(part_files(out))
    if earlier and not (resume or overwrite):
        raise UserError(f"{out}: exists; pass --resume to continue labelling it or --overwrite "
                        "to replace it")
    if earlier and overwrite and not resume:
        for path in [out, *part_files(out)]:
            path.unlink(missing_ok=True)


def pending_units(units: list[dict], done: dict[str, dict], out: Path) -> list[dict]:
    """The units an earlier run (``done``, from ``read_done``) has not labelled. A record that
    no current unit produces means the file was labelled from other data or settings."""
    stray = sorted(set(done) - {u["id"] for u in units})
    if stray:
        raise UserError(f"{out}: holds {len(stray)} record(s) (e.g. id {stray[0]}) that the "
                        f"current --data does not produce; it was labelled from other data or "
                        "settings (use another --output, or --overwrite)")
    return [u for u in units if u["id"] not in done]


def make_label_judge(cfg: LabelConfig, out: Path, categories: dict, token_counter=None,
                     device: str | None = None):
    """The judge of ``--judge`` with the labelling options (a model judge on ``device``,
    default ``cfg.device``); an HTTP judge caches its answers in ``--judge-cache`` (default:
    ``<output>.judge-cache`` beside the output)."""
    from alignkit.judges.spec import JudgeOptions, make_judge
    from alignkit.models.loading import pick_device

    cache = cfg.judge_cache or str(out.with_name(out.name + ".judge-cache"))
    return make_judge(cfg.judge, JudgeOptions(
        cache_dir=cache, both_orders=cfg.judge_both_orders, max_tokens=cfg.judge_max_tokens,
        retries=cfg.judge_retries, rate=cfg.judge_rate, timeout=cfg.judge_timeout,
        device=device or pick_device(cfg.device), batch_size=cfg.batch_size,
        logprobs=cfg.judge_logprobs),
        categories=categories, token_counter=token_counter)


def append_labels(judge, todo: list[dict], out: Path, constitution, seed: int, name: str,
                  workers: int, batch_size: int, total: int, show: bool = True) -> None:
    """Judge ``todo`` (``run_units``), appending each record to ``out`` as it completes, with a
    progress bar over all ``total`` units (``show``)."""
    from alignkit.utils.logs import progress_bar

    appender = AppendLog(out)
    progress = progress_bar(total, total - len(todo), show, "judging")
    try:
        run_units(judge, todo, appender, constitution, seed, name, workers, batch_size, progress)
    finally:
        appender.close()
        progress.close()


def part_file(out: Path, rank: int) -> Path:
    """Where process ``rank`` (not the first) of a torchrun launch appends its records; the
    first process appends to ``out`` itself."""
    return out.with_name(f"{out.name}.rank{rank}.part")


def part_files(out: Path) -> list[Path]:
    """The part files beside ``out`` (of any earlier launch, whatever its number of
    processes)."""
    return sorted(out.parent.glob(f"{out.name}.rank*.part"))


def fold_parts(out: Path) -> None:
    """Move the records of the part files into ``out`` (appended, fsync'ed) and remove them: a
    killed several-process run resumes from one file, at any number of processes. A torn last
    line of a part file is dropped, as ``read_done`` drops one of ``out``."""
    parts = part_files(out)
    if not parts:
        return
    done = read_done(out)
    appender = AppendLog(out)
    try:
        for part in parts:
            for rid, rec in read_done(part).items():
                if rid not in done:
                    appender.write(rec)
                    done[rid] = rec
    finally:
        appender.close()
    for part in parts:
        part.unlink()


def write_in_order(out: Path, units: list[dict]) -> list[dict]:
    """Rewrite the finished file with one record per unit in input order (atomically); returns
    the records."""
    records = read_done(out)
    ordered = [records[u["id"]] for u in units]
    write_jsonl_atomic(ordered, out)
    return ordered
