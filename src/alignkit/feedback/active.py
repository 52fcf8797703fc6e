"""Active learning: with a reward-model ensemble attached to a project, serve first the items on
which the members disagree most.

For a task with responses r_1..r_K, each member m gives rewards s_m(r_i); for every pair i < j
the member's predicted margin is d_m(i, j) = s_m(r_i) - s_m(r_j). Strategies:
- ``std`` (default, needs an ensemble of M >= 2): mean over pairs of the std over members of
  d_m(i, j) -- the members disagree about which response is better;
- ``margin``: minus the smallest |mean_m d_m(i, j)| over pairs -- the ensemble finds two
  responses nearly equally good (works with one member too).
Higher score = served earlier. The queue without active learning is the order tasks were added
(by id); ``queue_change`` lists both positions for the admin page.
"""

from __future__ import annotations

import itertools

from alignkit.errors import UserError


def uncertainty_scores(model, tasks: list[dict], strategy: str = "std",
                       batch_size: int = 32) -> dict[int, float]:
    """Task id -> uncertainty score (higher = more informative to label)."""
    from alignkit.feedback.store import text_of

    prompts, responses, owner = [], [], []
    for t in tasks:
        for r in t["responses"]:
            prompts.append(t["prompt"] if isinstance(t["prompt"], str) else text_of(t["prompt"]))
            responses.append(r if isinstance(r, str) else text_of(r))
            owner.append(t["id"])
    if not prompts:
        return {}
    per_member = model.score(prompts, responses, batch_size).per_member  # (M, N)
    if strategy == "std" and per_member.shape[0] < 2:
        raise UserError("active-learning strategy 'std' needs a reward-model ensemble "
                        "(alignkit reward --ensemble 2 or more); use 'margin' with one model")
    scores, at = {}, 0
    for t in tasks:
        k = len(t["responses"])
        block = per_member[:, at:at + k]
        at += k
        values = []
        for i, j in itertools.combinations(range(k), 2):
            d = block[:, i] - block[:, j]
            if strategy == "std":
                values.append(float(d.std(unbiased=False)))
            else:
                values.append(-abs(float(d.mean())))
        scores[t["id"]] = (sum(values) / len(values)) if strategy == "std" else max(values)
    return scores


def queue_change(tasks: list[dict]) -> list[dict]:
    """Each task's queue position without active learning (by id) and with it (by score,
    unscored last), in the new order."""
    by_id = sorted(tasks, key=lambda t: t["id"])
    old = {t["id"]: n for n, t in enumerate(by_id, 1)}
    new_order = sorted(tasks, key=lambda t: (t["al_score"] is None, -(t["al_score"] or 0.0),
                                             t["id"]))
    return [{"id": t["id"], "old": old[t["id"]], "new": n, "score": t["al_score"],
             "moved": old[t["id"]] - n} for n, t in enumerate(new_order, 1)]


def refresh_priorities(store, project_id: int, model=None) -> int:
    """Score the project's tasks with its attached reward model and store the scores; returns
    how many were scored (0 without a model)."""
    project = store.project(project_id)
    if model is None:
        if not project["reward_model"]:
            raise UserError(f"project {project['name']!r} has no reward model attached "
                            "(alignkit annotate create-project --reward-model DIR --update)")
        from alignkit.models.reward import RewardModel

        model = RewardModel.load(project["reward_model"], "cpu")
    from alignkit.feedback.store import unrenderable

    tasks = [t for t in store.tasks_of(project_id)
             if not t["is_gold"] and unrenderable(t, project["aspects"]) is None]
    scores = uncertainty_scores(model, tasks, project["al_strategy"])
    store.set_al_scores(project_id, scores)
    return len(scores)
