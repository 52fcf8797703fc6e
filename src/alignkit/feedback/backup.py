"""``alignkit annotate backup`` / ``restore``: one project whole, as JSON-ready data, by names
and positions rather than database ids, so that it restores into any database (SQLite or
PostgreSQL) in one transaction."""

from __future__ import annotations

from datetime import datetime, timezone

import sqlalchemy as sa

from alignkit.feedback.store import (Conflict, Invalid, NotFound, Store, audit, label_history,
                                     labels, members, now, projects, resolutions, suggestions,
                                     tasks, users)


def backup_project(store: Store, project_id: int) -> dict:
    """Everything of one project as JSON-ready data, by names and positions rather than
    database ids (so that it restores into any database): the project, the users it
    involves (role and hashed secrets), its tasks in order, labels (with the order a ranking
    was shown in), resolutions, its label history (a history entry names its label by position
    among the labels, or None for one no longer there) and its audit log."""
    iso = lambda t: None if t is None else (t if t.tzinfo else t.replace(  # noqa: E731
        tzinfo=timezone.utc)).isoformat()
    with store.rx() as c:
        project = c.execute(sa.select(projects).where(projects.c.id == project_id)).first()
        if project is None:
            raise NotFound(f"no project {project_id}")
        rows = lambda q: [r._mapping for r in c.execute(q)]  # noqa: E731
        task_rows = rows(sa.select(tasks).where(tasks.c.project_id == project_id)
                         .order_by(tasks.c.id))
        at = {t["id"]: n for n, t in enumerate(task_rows)}
        in_project = sa.select(tasks.c.id).where(tasks.c.project_id == project_id)
        label_rows = rows(sa.select(labels).where(labels.c.task_id.in_(in_project))
                          .order_by(labels.c.id))
        resolution_rows = rows(sa.select(resolutions).where(
            resolutions.c.task_id.in_(in_project)).order_by(resolutions.c.task_id))
        audit_rows = rows(sa.select(audit).where(audit.c.project_id == project_id)
                          .order_by(audit.c.id))
        suggestion_rows = rows(sa.select(suggestions).where(
            suggestions.c.task_id.in_(in_project)).order_by(suggestions.c.task_id))
        history_rows = rows(sa.select(label_history).where(
            label_history.c.task_id.in_(in_project)).order_by(label_history.c.id))
        member_ids = [r.user_id for r in c.execute(sa.select(members.c.user_id).where(
            members.c.project_id == project_id).order_by(members.c.user_id))]
        involved = set(member_ids) | {r["user_id"] for r in label_rows + resolution_rows
                                      + audit_rows + history_rows if r["user_id"] is not None}
        involved |= {r["by_user_id"] for r in history_rows if r["by_user_id"] is not None}
        involved |= {t["created_by"] for t in task_rows if t["created_by"] is not None}
        people = {r.id: r for r in c.execute(sa.select(users).where(
            users.c.id.in_(involved)))}
    name = {uid: r.name for uid, r in people.items()}
    label_at = {r["id"]: n for n, r in enumerate(label_rows)}
    return {
        "format": "alignkit-annotate-backup", "version": 1,
        "project": {k: project._mapping[k] for k in (
            "name", "guidelines", "aspects", "labels_per_item", "reward_model",
            "al_strategy", "calibration_items", "calibration_accuracy",
            "attention_rate", "assist")} | {"created_at": iso(project.created_at),
                               "created_by": name.get(project.created_by)},
        "users": [{"name": r.name, "role": r.role, "token_hash": r.token_hash,
                   "password_hash": r.password_hash, "created_at": iso(r.created_at)}
                  for r in sorted(people.values(), key=lambda r: r.name)],
        "members": sorted(name[u] for u in member_ids),
        "tasks": [{k: t[k] for k in ("kind", "prompt", "responses", "is_gold", "gold",
                                     "meta", "al_score", "unrenderable")}
                  | {"created_at": iso(t["created_at"]),
                     "created_by": name.get(t["created_by"])} for t in task_rows],
        "labels": [{"task": at[r["task_id"]], "user": name[r["user_id"]],
                    "value": r["value"], "reason": r["reason"],
                    "shown_order": r["shown_order"], "assisted": r["assisted"],
                    "created_at": iso(r["created_at"])} for r in label_rows],
        "suggestions": [{"task": at[r["task_id"]], "judge": r["judge"], "value": r["value"],
                         "confidence": r["confidence"], "created_at": iso(r["created_at"])}
                        for r in suggestion_rows],
        "resolutions": [{"task": at[r["task_id"]], "user": name[r["user_id"]],
                         "value": r["value"], "note": r["note"],
                         "created_at": iso(r["created_at"])} for r in resolution_rows],
        "label_history": [{"label": label_at.get(r["label_id"]), "task": at[r["task_id"]],
                           "user": name[r["user_id"]], "action": r["action"],
                           "value": r["value"], "reason": r["reason"],
                           "shown_order": r["shown_order"],
                           "labelled_at": iso(r["labelled_at"]),
                           "by": name.get(r["by_user_id"]), "at": iso(r["at"])}
                          for r in history_rows],
        "audit": [{"at": iso(r["at"]), "user": name.get(r["user_id"]),
                   "action": r["action"], "task": at.get(r["task_id"]),
                   "detail": r["detail"]} for r in audit_rows],
    }

def restore_project(store: Store, dump: dict, name: str | None = None) -> int:
    """A project from ``backup``'s data, in one transaction (nothing on any error): users
    missing here are created with their hashed secrets (existing ones are kept as they
    are); ``name`` restores it under another name. Returns the new project's id."""
    if not isinstance(dump, dict) or dump.get("format") != "alignkit-annotate-backup":
        raise Invalid("not an alignkit annotation backup")
    if dump.get("version") != 1:
        raise Invalid(f"backup version {dump.get('version')!r} is not one this alignkit "
                      "reads (1)")
    when = lambda text: datetime.fromisoformat(text) if text else now()  # noqa: E731
    try:
        with store.tx() as c:
            ids: dict[str, int] = {}
            for u in dump["users"]:
                row = c.execute(sa.select(users.c.id)
                                .where(users.c.name == u["name"])).first()
                ids[u["name"]] = row.id if row else c.execute(users.insert().values(
                    name=u["name"], role=u["role"], token_hash=u["token_hash"],
                    password_hash=u["password_hash"],
                    created_at=when(u["created_at"]))).inserted_primary_key[0]
            p = dump["project"]
            title = name or p["name"]
            if c.execute(sa.select(projects.c.id).where(projects.c.name == title)).first():
                raise Conflict(f"project {title!r} already exists (restore it under "
                               "another name)")
            pid = c.execute(projects.insert().values(
                name=title, guidelines=p["guidelines"], aspects=p["aspects"],
                labels_per_item=p["labels_per_item"], reward_model=p["reward_model"],
                al_strategy=p["al_strategy"], created_at=when(p["created_at"]),
                # backups written before quality control existed: no gate, as then
                calibration_items=p.get("calibration_items", 0),
                calibration_accuracy=p.get("calibration_accuracy", 0.8),
                attention_rate=p.get("attention_rate", 0.0),
                assist=p.get("assist", "off"),
                created_by=ids.get(p["created_by"]))).inserted_primary_key[0]
            for member in dump["members"]:
                c.execute(members.insert().values(project_id=pid, user_id=ids[member],
                                                  added_at=now()))
            task_ids = [c.execute(tasks.insert().values(
                project_id=pid, **{k: t[k] for k in ("kind", "prompt", "responses",
                                                     "is_gold", "gold", "meta", "al_score",
                                                     "unrenderable")},
                created_at=when(t["created_at"]), created_by=ids.get(t["created_by"]))
            ).inserted_primary_key[0] for t in dump["tasks"]]
            label_ids = [c.execute(labels.insert().values(
                task_id=task_ids[r["task"]], user_id=ids[r["user"]], value=r["value"],
                reason=r["reason"], shown_order=r.get("shown_order"),
                assisted=r.get("assisted"),
                created_at=when(r["created_at"]))).inserted_primary_key[0]
                for r in dump["labels"]]
            # backups written before AI assist existed have none
            for r in dump.get("suggestions", []):
                c.execute(suggestions.insert().values(
                    task_id=task_ids[r["task"]], judge=r["judge"], value=r["value"],
                    confidence=r["confidence"], created_at=when(r["created_at"])))
            # backups written before the label history existed have none
            for r in dump.get("label_history", []):
                c.execute(label_history.insert().values(
                    label_id=None if r["label"] is None else label_ids[r["label"]],
                    task_id=task_ids[r["task"]], user_id=ids[r["user"]], action=r["action"],
                    value=r["value"], reason=r["reason"], shown_order=r["shown_order"],
                    labelled_at=when(r["labelled_at"]), by_user_id=ids.get(r["by"]),
                    at=when(r["at"])))
            for r in dump["resolutions"]:
                c.execute(resolutions.insert().values(
                    task_id=task_ids[r["task"]], user_id=ids[r["user"]], value=r["value"],
                    note=r["note"], created_at=when(r["created_at"])))
            for r in dump["audit"]:
                c.execute(audit.insert().values(
                    at=when(r["at"]), user_id=ids.get(r["user"]), action=r["action"],
                    project_id=pid, detail=r["detail"],
                    task_id=None if r["task"] is None else task_ids[r["task"]]))
            store._audit(c, "restore", None, pid, source_project=p["name"],
                        tasks=len(task_ids), labels=len(dump["labels"]))
    except (KeyError, TypeError, IndexError, ValueError) as e:
        raise Invalid(f"the backup is damaged or incomplete ({type(e).__name__}: {e})") \
            from None
    return pid
