"""Checkpoint selection without gold: among a run's held-out readings, keep the checkpoint a
real user would pick, by a criterion a real user has.

``lcb``, the reward ensemble's lower confidence bound (its members' mean less their spread,
averaged over held-out prompts), prefers policies the members agree are good, so it does not
follow a policy out to where one member's mistakes pay; ``proxy`` is the optimised reward's
mean; ``gold`` is the simulation's hidden scorer, an oracle no user has. With gold measured, the
choice is scored by its regret: the gold of the gold-best reading minus the gold of the chosen
one.
"""

from __future__ import annotations

from typing import Callable

SELECT_BY = ("lcb", "proxy", "gold")


def selection_value(row: dict, key: str) -> float:
    """A held-out reading's score under ``key`` (``row``: ``proxy`` and, from an ensemble,
    ``proxy_mean`` / ``proxy_std``; ``gold``)."""
    if key == "lcb":
        return row.get("proxy_mean", row["proxy"]) - row.get("proxy_std", 0.0)
    return row[key]


def selection_summary(readings: list[dict], key: str) -> dict:
    """The reading ``key`` chooses among ``readings`` (each with its ``step``) and, when every
    reading has gold, its regret against the gold-best one (0: the choice gold would make)."""
    usable = [r for r in readings if key in ("lcb", "proxy") or "gold" in r]
    if not usable:
        return {}
    chosen = max(usable, key=lambda r: selection_value(r, key))
    out = {"selected_step": chosen.get("step")}
    if all("gold" in r for r in usable):
        best = max(usable, key=lambda r: r["gold"])
        out.update(gold_best_step=best.get("step"), selected_gold=chosen["gold"],
                   selection_regret=best["gold"] - chosen["gold"])
    return out


class BestCheckpoint:
    """``--select-by`` of a trainer that samples held-out answers at each evaluation (DPO,
    online DPO): each reading (the ``sample_*`` keys of an evaluation row) is weighed; when it
    beats every earlier one, ``save()`` writes ``best/`` and ``log(row)`` records the choice so
    far (the ``best`` rows of metrics.jsonl). Resumable (``state_dict``)."""

    def __init__(self, key: str, save: Callable[[], object], log: Callable[[int, dict], None],
                 prefix: str = "sample_"):
        if key not in SELECT_BY:
            raise ValueError(f"select_by must be one of {SELECT_BY}, got {key!r}")
        self.key, self.save, self.log, self.prefix = key, save, log, prefix
        self.readings: list[dict] = []
        self.best: float | None = None

    def reading(self, step: int, row: dict) -> dict | None:
        """The evaluation ``row`` of ``step`` as a reading (None when it sampled nothing)."""
        reading = {k[len(self.prefix):]: v for k, v in row.items() if k.startswith(self.prefix)}
        wanted = "gold" if self.key == "gold" else "proxy"
        return {"step": step, **reading} if wanted in reading else None

    def __call__(self, step: int, row: dict) -> bool:
        """Weigh the evaluation of ``step``; True when it became the best (and was saved)."""
        reading = self.reading(step, row)
        if reading is None:
            return False
        self.readings.append(reading)
        value = selection_value(reading, self.key)
        if self.best is not None and value <= self.best:
            return False
        self.best = value
        self.save()
        self.log(step, self.best_row())
        return True

    def best_row(self) -> dict:
        return {"best_by": self.key, "best_value": self.best,
                **selection_summary(self.readings, self.key)}

    def state_dict(self) -> dict:
        return {"readings": self.readings, "best": self.best}

    def load_state_dict(self, state: dict) -> None:
        self.readings, self.best = state.get("readings", []), state.get("best")


def check_selection(cfg, scored: bool) -> None:
    """The flags ``--select-by`` needs: held-out prompts to answer, and a reward model to score
    the answers (``scored``) or the gold scorer; likewise ``--eval-adversarial``, answered at
    each held-out evaluation."""
    from alignkit.errors import UserError

    if cfg.eval_adversarial.lower() != "none" and not cfg.sample_prompts:
        raise UserError("--eval-adversarial is answered at each held-out evaluation: set "
                        "--sample-prompts")
    if cfg.select_by == "none":
        return
    if not cfg.sample_prompts:
        raise UserError(f"--select-by {cfg.select_by} weighs the policy's held-out answers: set "
                        "--sample-prompts")
    if cfg.select_by == "gold" and not cfg.gold:
        raise UserError("--select-by gold needs the gold scorer (--gold)")
    if cfg.select_by in ("lcb", "proxy") and not scored:
        raise UserError(f"--select-by {cfg.select_by} needs --select-reward-model (the reward "
                        "model or ensemble that scores the held-out answers)")


def best_checkpoint(cfg, trainer, tokenizer) -> BestCheckpoint | None:
    """``--select-by`` of a preference trainer: a ``BestCheckpoint`` that writes
    ``<output>/best`` with the trainer and keeps its choice in the trainer's checkpoints (call
    before ``trainer.resume()``); None without ``--select-by``."""
    if cfg.select_by == "none":
        return None
    chooser = BestCheckpoint(
        cfg.select_by, lambda: trainer.save_final(tokenizer, "best", keep_training=True),
        lambda step, row: trainer.log(step, row, split="best"))
    trainer.extra_state["selection"] = chooser
    return chooser
