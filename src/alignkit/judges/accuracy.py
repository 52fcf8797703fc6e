"""How far to trust a judge: its accuracy against reference labels (the gold scorer's or
people's) and its position bias, one row per judge of the table ``alignkit label --judge``
prints.

Agreement with the reference is counted over the pairs the reference decided (a reference tie
carries no direction): 1 when the judge picked the same response, 1/2 when the judge said tie, 0
when it picked the other -- so a judge that always says tie scores 1/2, like a coin.

Annotators are measured in ``feedback.agreement`` instead: against each other (Krippendorff's
alpha, Cohen's kappa) and against hidden gold items whose answer is known.
"""

from __future__ import annotations

from typing import Sequence

from alignkit.judges.base import Verdict


def agreement(verdicts: Sequence[Verdict], reference: Sequence[Verdict]) -> dict:
    """Agreement of ``verdicts`` with ``reference`` (gold or human) on the same pairs, in the
    same order."""
    if len(verdicts) != len(reference):
        raise ValueError(f"{len(verdicts)} verdicts but {len(reference)} reference labels")
    decided = [(v, r) for v, r in zip(verdicts, reference) if r.winner != "tie"]
    score = sum(1.0 if v.winner == r.winner else 0.5 if v.winner == "tie" else 0.0
                for v, r in decided)
    return {"pairs": len(decided), "reference_ties": len(verdicts) - len(decided),
            "agreement": score / len(decided) if decided else float("nan"),
            "judge_ties": sum(v.winner == "tie" for v, _ in decided),
            "mean_confidence": (sum(v.confidence for v in verdicts) / len(verdicts)
                                if verdicts else float("nan"))}


def judge_report(name: str, verdicts: Sequence[Verdict], reference: Sequence[Verdict] | None,
                 tally=None, reference_name: str = "gold") -> dict:
    """One row of the judge table: agreement with the reference (when given) and the position
    bias measured by a ``BothOrders`` tally (when given)."""
    row = {"judge": name, "reference": reference_name if reference is not None else None,
           "judged": len(verdicts)}
    if reference is not None:
        row.update(agreement(verdicts, reference))
    if tally is not None:
        row["position_bias_rate"] = tally.position_bias_rate
        row["first_position_share"] = tally.first_position_share
    return row


def format_table(rows: Sequence[dict]) -> str:
    """A fixed-width text table of judge rows (printed by ``alignkit label --judge``)."""
    def cell(row, key, fmt="{:.3f}"):
        value = row.get(key)
        return "-" if value is None or value != value else fmt.format(value)

    lines = [f"{'judge':<36} {'vs':<6} {'pairs':>6} {'agree':>6} {'ties':>5} "
             f"{'conf':>6} {'pos-bias':>8} {'1st-slot':>8}"]
    for r in rows:
        lines.append(f"{r['judge'][:36]:<36} {str(r.get('reference') or '-'):<6} "
                     f"{cell(r, 'pairs', '{:d}'):>6} {cell(r, 'agreement'):>6} "
                     f"{cell(r, 'judge_ties', '{:d}'):>5} {cell(r, 'mean_confidence'):>6} "
                     f"{cell(r, 'position_bias_rate'):>8} {cell(r, 'first_position_share'):>8}")
    return "\n".join(lines)
