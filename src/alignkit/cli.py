"""``alignkit <stage> [--config FILE.yaml] [--flag value ...]``.

Every stage's flags are generated from its config dataclass (``alignkit.config``); recipes are
imported only when their stage runs, so ``alignkit --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from alignkit import __version__
from alignkit.config import (AnnotateBackupConfig, AnnotateExportConfig, AnnotateProjectConfig,
                             AnnotateRestoreConfig, AnnotateServeConfig, AnnotateTasksConfig,
                             AnnotateUserConfig, BestOfNConfig,
                             CritiqueConfig, DemoConfig, DPOConfig, EvalConfig, LabelConfig,
                             OnlineDPOConfig, PPOConfig, ReportConfig, RewardConfig, ScoreConfig,
                             ServeConfig, SFTConfig, StudyConfig, TinyModelConfig, add_config_flags,
                             build_config, closest)
from alignkit.errors import UserError, disk_full

# stage name -> (config class, "module:function", one-line description)
STAGES = {
    "demo": (DemoConfig, "alignkit.recipes.demo:main",
             "The main job: the whole pipeline on the packaged model (SFT, simulated rankings, "
             "reward ensemble, PPO, DPO, best-of-n), compared on held-out prompts, then a report."),
    "sft": (SFTConfig, "alignkit.recipes.sft:main",
            "Stage 1: supervised fine-tuning on demonstrations."),
    "reward": (RewardConfig, "alignkit.recipes.reward:main",
               "Stage 2: a reward model (ensemble, aspects) from preference pairs or rankings."),
    "ppo": (PPOConfig, "alignkit.recipes.ppo:main",
            "Stage 3: PPO / RLOO / GRPO / REINFORCE++ against a reward model under a KL leash."),
    "dpo": (DPOConfig, "alignkit.recipes.dpo:main",
            "DPO / IPO / cDPO / hinge / robust DPO / RPO on preference pairs or rankings."),
    "online-dpo": (OnlineDPOConfig, "alignkit.recipes.online_dpo:main",
                   "Iterative DPO: the policy answers, a reward model or panel labels, DPO "
                   "learns; repeat."),
    "best-of-n": (BestOfNConfig, "alignkit.recipes.best_of_n:main",
                  "Best-of-n: sample n answers per prompt, keep the reward model's favourite."),
    "label": (LabelConfig, "alignkit.recipes.label:main",
              "Preference labels: sample K responses per prompt and have annotators rank them."),
    "score": (ScoreConfig, "alignkit.recipes.score:main",
              "Score records with a saved reward model (per member, per aspect, combined)."),
    "eval": (EvalConfig, "alignkit.recipes.eval:main",
             "Compare policies on held-out prompts (gold, reward model, KL, win rate with a "
             "bootstrap interval) and on the adversarial suite."),
    "report": (ReportConfig, "alignkit.recipes.report:main",
               "One self-contained HTML page (plus PNGs) for a run folder: curves, monitor, "
               "frontier, eval tables, samples."),
    "serve": (ServeConfig, "alignkit.recipes.serve:main",
              "An OpenAI-compatible chat endpoint (/v1/chat/completions) for a policy folder."),
    "critique": (CritiqueConfig, "alignkit.recipes.critique:main",
                 "Constitutional AI: answer, critique against a principle, revise; the "
                 "revisions become SFT data."),
    # `alignkit study <name>`, like annotate's verbs
    "study-overoptimisation": (
        StudyConfig, "alignkit.recipes.study:overoptimisation",
        "Study: reward over-optimisation on the demo task (Gao et al. 2022, Coste et al. 2023): "
        "single reward model vs ensembles (mean, WCO, UWO) at each label-noise level, "
        "best-of-n and PPO, gold and proxy against sqrt(KL), fitted forms, plots."),
    "tiny-model": (TinyModelConfig, "alignkit.recipes.tiny:main",
                   "Write a tiny random Llama-style model folder (tests, benchmarks)."),
    # `alignkit annotate <verb>` is spelled with a space; main() joins the two words
    "annotate-serve": (AnnotateServeConfig, "alignkit.recipes.annotate:serve",
                       "Annotation app: serve the web app where people rank responses."),
    "annotate-create-project": (AnnotateProjectConfig, "alignkit.recipes.annotate:create_project",
                                "Annotation app: create or change a project."),
    "annotate-add-user": (AnnotateUserConfig, "alignkit.recipes.annotate:add_user",
                          "Annotation app: add a person, put them on projects, print a token."),
    "annotate-add-tasks": (AnnotateTasksConfig, "alignkit.recipes.annotate:add_tasks",
                           "Annotation app: add prompts with sampled candidates, or pairs and "
                           "rankings, to a project."),
    "annotate-export": (AnnotateExportConfig, "alignkit.recipes.annotate:export",
                        "Annotation app: export labels as preference pairs and rankings."),
    "annotate-backup": (AnnotateBackupConfig, "alignkit.recipes.annotate:backup",
                        "Annotation app: back up a project whole (tasks, labels, users, audit "
                        "log) to a file."),
    "annotate-restore": (AnnotateRestoreConfig, "alignkit.recipes.annotate:restore",
                         "Annotation app: restore a project from a backup file."),
}


def join_verb(argv: list[str]) -> list[str]:
    """``annotate serve ...`` -> ``annotate-serve ...`` (stages with a verb)."""
    if len(argv) >= 2 and f"{argv[0]}-{argv[1]}" in STAGES:
        return [f"{argv[0]}-{argv[1]}", *argv[2:]]
    return argv


# stages that also take a field as their first positional argument (`alignkit report RUN_DIR`)
POSITIONAL = {"report": ("run_dir",)}


class AlignkitParser(argparse.ArgumentParser):
    """The top-level parser: an unrecognised flag is one line naming it and the stage's flag it
    most likely meant (``unrecognised --modle; did you mean --model?``)."""

    stages: dict[str, argparse.ArgumentParser] = {}

    def parse_args(self, args=None, namespace=None):
        parsed, unknown = self.parse_known_args(args, namespace)
        if unknown:
            stage = getattr(parsed, "stage", None)
            prog = f"alignkit {stage}" if stage else "alignkit"
            self.exit(2, f"{prog}: error: {self.unrecognised(prog, stage, unknown)}\n")
        return parsed

    def unrecognised(self, prog: str, stage: str | None, unknown: list[str]) -> str:
        shown = {s for a in (self.stages[stage] if stage else self)._actions
                 if a.help != argparse.SUPPRESS for s in a.option_strings}
        typed = [t.split("=", 1)[0] for t in unknown if t.startswith("-")]
        if not typed:
            return f"unrecognised arguments: {' '.join(unknown)}"
        problems = []
        for flag in typed:
            close = closest(flag, shown)
            problems.append(f"unrecognised {flag}; did you mean {close}?" if close
                            else f"unrecognised {flag} (see {prog} --help)")
        return "; ".join(problems)


def build_parser() -> argparse.ArgumentParser:
    parser = AlignkitParser(
        prog="alignkit",
        description="Align language models with human preferences. Each stage reads defaults, "
                    "then --config FILE.yaml, then flags; the resolved config is saved as "
                    "<output>/config.yaml.")
    parser.add_argument("--version", action="version", version=f"alignkit {__version__}")
    sub = parser.add_subparsers(dest="stage", metavar="<stage>")
    for name, (cls, _, description) in STAGES.items():
        p = sub.add_parser(name, help=description, description=description)
        p.add_argument("--config", metavar="FILE.yaml",
                       help="YAML file of option: value pairs (flags given here override it).")
        add_config_flags(p, cls)
        for field_name in POSITIONAL.get(name, ()):
            p.add_argument(field_name, nargs="?", default=argparse.SUPPRESS,
                           metavar=field_name.upper(),
                           help=f"same as --{field_name.replace('_', '-')}")
    parser.stages = dict(sub.choices)
    return parser


def run_stage(name: str, cfg, **kwargs):
    from alignkit.models.chat_templates import chat_template_for_run

    module, func = STAGES[name][1].split(":")
    with chat_template_for_run(getattr(cfg, "chat_template", None)):
        return getattr(importlib.import_module(module), func)(cfg, **kwargs)


# the stages that run data-parallel under torchrun (each rank trains on, samples or scores its
# share of the work)
DATA_PARALLEL = {"sft", "reward", "dpo", "ppo", "online-dpo", "label", "eval", "best-of-n"}


def leave_process_group(together: bool = False) -> bool:
    """Under torchrun: leave the process group when the stage is over (a plain run never
    imported torch.distributed); True when there was one to leave. ``together`` (the stage
    succeeded on this process): first wait for the others, so that no process tears its
    connections down while another still writes (the first process often has the files left
    to write)."""
    if "torch.distributed" in sys.modules:
        import torch.distributed as dist

        if dist.is_initialized():
            if together:
                dist.barrier()
            dist.destroy_process_group()
            return True
    return False


def end_process(code: int) -> None:
    """End a process that left a process group without the interpreter's teardown: a gloo
    thread still alive when the interpreter destroys its objects can abort a process whose
    work is done (SIGABRT, "terminate called without an active exception"), and torchrun then
    fails the whole run. Every file is written and closed by now; the streams and the log
    handlers are flushed first."""
    import logging

    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)


def run(cfg, **kwargs):
    """Run the stage ``cfg`` configures (the Python API: ``run(DPOConfig(...))``) and return
    what its recipe returns; ``kwargs`` go to the recipe (PPO's programmatic ``reward_fn``)."""
    names = [name for name, (cls, _, _) in STAGES.items() if type(cfg) is cls]
    if not names:
        raise TypeError(f"{type(cfg).__name__} is not a stage config")
    cfg.validate()
    return run_stage(names[0], cfg, **kwargs)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = join_verb(list(sys.argv[1:] if argv is None else argv))
    verbs = [n.split("-", 1)[1] for n in STAGES if argv and n.startswith(f"{argv[0]}-")]
    if argv and argv[0] not in STAGES and verbs:
        print(f"usage: alignkit {argv[0]} {{{','.join(verbs)}}} [--help]", file=sys.stderr)
        return 0 if argv[1:2] in (["--help"], ["-h"]) else 2
    args = parser.parse_args(argv)
    if not args.stage:
        parser.print_help()
        return 0
    from alignkit.utils.logs import configure_logging

    configure_logging()
    processes = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if processes > 1 and args.stage not in DATA_PARALLEL:
        print(f"alignkit {args.stage}: error: launched as {processes} processes, but this stage "
              f"runs in one process (under torchrun: {', '.join(sorted(DATA_PARALLEL))}); "
              "launch it without torchrun", file=sys.stderr)
        return 2
    succeeded, code = False, 0
    try:
        cfg = build_config(STAGES[args.stage][0], args)
        run_stage(args.stage, cfg)
        succeeded = True
    except UserError as e:
        print(f"alignkit {args.stage}: error: {e}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        print(f"alignkit {args.stage}: interrupted (checkpoints already written are intact; "
              "continue with --resume)", file=sys.stderr)
        code = 130
    except Exception as e:
        if not disk_full(e):
            raise
        # not the user's mistake, but nothing to debug either: one line, not a traceback
        print(f"alignkit {args.stage}: error: the disk is full ({e}); free some space and run "
              "the stage again (checkpoints already written are intact; continue with "
              "--resume)", file=sys.stderr)
        code = 1
    finally:
        left = leave_process_group(together=succeeded)
    if left:
        end_process(code)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
