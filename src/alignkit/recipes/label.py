"""``alignkit label``: preference labels for prompts.

1. read prompts (or samples that already carry ``responses``);
2. sample K responses per prompt from the policy with the shared sampler;
3. score them with the hidden gold scorer and let a panel of simulated annotators rank them
   through Bradley-Terry / Plackett-Luce noise (the Gao et al. 2022 protocol);
4. write rankings or pairs with annotator ids, plus a report of how often the labels agree
   with gold and the Bayes-optimal accuracy any reward model could reach on them.

With ``--judge SPEC`` an AI judge labels instead of the panel (RLAIF; ``judges.labelling``):
every pair is judged (both orders by default), K-way rankings are ordered by each response's
summed win probability, and each record keeps the judge's confidence. Labels are appended to
--output as they complete, so a killed run continues with ``--resume``; the finished file is
the same as that of an uninterrupted run.
"""

from __future__ import annotations

import json
from pathlib import Path

from alignkit.config import LabelConfig
from alignkit.data.prompts import read_prompts
from alignkit.errors import UserError
from alignkit.feedback.labelling import label_items, load_panel, print_report, write_labels
from alignkit.generation.responses import sample_missing
from alignkit.judges.labelling import (append_labels, check_output, fold_parts, judge_table,
                                       labelling_settings, make_label_judge, part_file,
                                       pending_units, plan_units, read_done, read_judge_items,
                                       write_in_order)
from alignkit.models.loading import pick_device
from alignkit.training.distributed import init_world
from alignkit.utils.distributed import barrier, gather_objects, share
from alignkit.utils.logs import log


def check_flags(cfg: LabelConfig) -> None:
    if not cfg.data:
        raise UserError("--data is required")
    if cfg.num_responses < 2:
        raise UserError(f"--num-responses must be >= 2, got {cfg.num_responses}")
    if cfg.judge and cfg.judge_workers < 1:
        raise UserError(f"--judge-workers must be >= 1, got {cfg.judge_workers}")


def main(cfg: LabelConfig) -> dict:
    from alignkit.judges.gold import GoldScorer

    if cfg.judge:
        return main_judge(cfg)
    if cfg.resume:  # a flag that would do nothing is refused
        raise UserError("--resume continues a labelling run of --judge; the simulated panel's "
                        "run is one deterministic pass: run it again (with --overwrite)")
    check_flags(cfg)
    # 1. Prompts (and any responses they carry); the panel is checked before any sampling.
    items = read_prompts(cfg.data, cfg.max_prompts)
    panel = load_panel(cfg.panel, cfg.gold_scale, cfg.seed)
    # 2. Sample K responses per prompt that has none (under torchrun each process its share).
    world, device = init_world(pick_device(cfg.device))
    tokenizer = sample_missing(items, cfg, world, device)
    if not world.is_main:  # the panel's draws run in order over all prompts, in one process
        return {"output": Path(cfg.output), "report": None}
    # 3. Gold scores and the simulated panel (R annotators per prompt).
    scorer = GoldScorer(token_counter=tokenizer)
    panel.scorer = scorer
    records = label_items(items, scorer, panel, cfg.labels_per_prompt, cfg.format,
                          cfg.aspect_list())
    # 4. Labels and the agreement report.
    report = write_labels(records, cfg.output, panel)
    print_report(report, len(records), cfg.output)
    return {"output": Path(cfg.output), "report": report}


def main_judge(cfg: LabelConfig) -> dict:
    """``--judge SPEC``: an AI judge labels, resumably (``alignkit.judges.labelling``)."""
    from alignkit.judges.accuracy import format_table

    # 1. Flags and the output: an earlier file may be continued (--resume) or replaced
    #    (--overwrite, once the data is accepted: step 2).
    check_flags(cfg)
    out = Path(cfg.output)
    world, device = init_world(pick_device(cfg.device))
    check_output(out, cfg.resume or cfg.overwrite, False)
    constitution = None
    if cfg.principles:
        from alignkit.judges.constitution import load_constitution

        constitution = load_constitution(cfg.principles)
    # 2. Prompts and their responses (sampled, seeded, when the data has none); one unit each.
    items = read_judge_items(cfg.data, cfg.max_prompts, cfg.seed)
    if cfg.agreement == "human" and not any(i.get("human") for i in items):
        raise UserError(f"--agreement human: {cfg.data} holds no labelled pairs "
                        "({prompt, chosen, rejected})")
    tokenizer = sample_missing(items, cfg, world, device)
    units, skipped = plan_units(items, cfg.format, labelling_settings(cfg))
    # the data was accepted: --overwrite replaces the earlier file now (the first process)
    check_output(out, cfg.resume or not world.is_main, cfg.overwrite and world.is_main)
    barrier(world)
    # 3. What an earlier run already labelled (the part files of an earlier several-process
    #    run folded in first), read by the first process and shared.
    done = {}
    if cfg.resume and world.is_main:
        fold_parts(out)
        done = read_done(out)
    done = gather_objects(done, world)[0]
    todo = pending_units(units, done, out)
    # 4. The judge labels the rest, each record appended as it completes; under torchrun each
    #    process judges its share, appending to its own part file (the first: to the output).
    categories = {i["prompt"]: i.get("category") for i in items if isinstance(i["prompt"], str)}
    judge = make_label_judge(cfg, out, categories, tokenizer, device)
    name = f"judge:{getattr(judge, 'name', cfg.judge)}"
    log.info("labelling %d unit(s) with %s (%d already done, %d skipped: fewer than two distinct "
             "responses)", len(todo), name, len(done), skipped)
    append_labels(judge, share(todo, world), out if world.is_main else part_file(out, world.rank),
                  constitution, cfg.seed, name, cfg.judge_workers, cfg.batch_size, len(units),
                  show=world.is_main)
    stats = dict(getattr(getattr(judge, "inner", judge), "stats", {}) or {})
    every_stats = gather_objects(stats, world)
    stats = {k: sum(s.get(k, 0) for s in every_stats) for k in stats}
    barrier(world)
    if not world.is_main:
        return {"output": out, "report": None}
    # 5. Every unit is done: the file in input order, then the judge's agreement report.
    fold_parts(out)
    ordered = write_in_order(out, units)
    scorer = None
    if cfg.agreement == "gold":
        from alignkit.judges.gold import GoldScorer

        scorer = GoldScorer(token_counter=tokenizer)
    row = judge_table(ordered, scorer, categories, name, cfg.agreement)
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
