"""``alignkit annotate <verb>``: the human-feedback annotation app.

- ``serve --db URL``: migrate the database, bootstrap the admin from ``$ALIGNKIT_ADMIN_TOKEN``,
  serve the web app (FastAPI on uvicorn);
- ``create-project``: a project (guidelines, aspects, R, optional reward model for active
  learning, AI assist: ``--assist`` and ``--judge SPEC`` to store a judge's suggestion for every
  task, see ``suggest``);
- ``add-user``: a person with a role and projects; prints their sign-in token once;
- ``add-tasks``: prompts plus K sampled candidates, or uploaded pairs / rankings;
- ``export``: preference pairs and rankings for ``alignkit reward`` / ``alignkit dpo`` (JSONL,
  Parquet or a ``datasets`` folder).
"""

from __future__ import annotations

import json
import os
import re
import socket
from pathlib import Path

from alignkit.config import (AnnotateBackupConfig, AnnotateExportConfig, AnnotateProjectConfig,
                             AnnotateRestoreConfig, AnnotateServeConfig, AnnotateTasksConfig,
                             AnnotateUserConfig)
from alignkit.errors import UserError
from alignkit.utils.logs import log


def open_store(db: str, **options):
    try:
        from alignkit.feedback.store import Store
    except ImportError as e:
        raise UserError(f"the annotation app needs the web extra: pip install 'alignkit[web]' "
                        f"({e})") from None
    store = Store(db, **options)
    store.upgrade()
    return store


def _need(value, flag: str):
    if not value:
        raise UserError(f"{flag} is required")
    return value


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def serve(cfg: AnnotateServeConfig, ready=None) -> None:
    import uvicorn

    from alignkit.utils.http import h11_with_header_deadline

    from alignkit.feedback.app import create_app
    from alignkit.feedback.store import shown_url

    # 1. The database (migrated) and the admin of $ALIGNKIT_ADMIN_TOKEN.
    store = open_store(cfg.db, lease_seconds=cfg.lease_seconds)
    token = os.environ.get(cfg.admin_token_env, "") if cfg.admin_token_env else ""
    if token:
        store.ensure_admin(token)
        print(f"admin 'admin' signs in with the token in ${cfg.admin_token_env}", flush=True)
    # 2. The app on its port; the URL is announced once the server accepts connections.
    port = cfg.port or free_port(cfg.host)
    app = create_app(store)
    print(f"annotation app on http://{cfg.host}:{port}/ (database {shown_url(store.url)})",
          flush=True)
    if ready is not None:  # announce once the server accepts connections, not before
        import threading
        import time

        def wait_then_announce():
            host = "127.0.0.1" if cfg.host in ("0.0.0.0", "") else cfg.host
            while True:
                with socket.socket() as s:
                    if s.connect_ex((host, port)) == 0:
                        break
                time.sleep(0.05)
            ready(f"http://{cfg.host}:{port}/")

        threading.Thread(target=wait_then_announce, daemon=True).start()
    # a connection whose request headers do not arrive in time is closed (slowloris)
    uvicorn.run(app, host=cfg.host, port=port, log_level="warning", access_log=False,
                timeout_graceful_shutdown=3, http=h11_with_header_deadline(cfg.request_timeout))


def create_project(cfg: AnnotateProjectConfig) -> int:
    # 1. Check the request: the guidelines file (UTF-8 text), the reward-model folder.
    store = open_store(cfg.db)
    name = _need(cfg.name, "--name")
    guidelines = None
    if cfg.guidelines:
        path = Path(cfg.guidelines)
        if not path.is_file():
            raise UserError(f"{cfg.guidelines}: guidelines file not found")
        try:
            guidelines = path.read_bytes().decode("utf-8-sig")
        except OSError as e:
            raise UserError(f"{cfg.guidelines}: cannot read the guidelines file "
                            f"({e.strerror or e})") from None
        except UnicodeDecodeError as e:
            line = path.read_bytes()[:e.start].count(b"\n") + 1
            raise UserError(f"{cfg.guidelines}:{line}: not UTF-8 text; save the file as "
                            "UTF-8") from None
    if cfg.judge:
        from alignkit.judges.spec import check_spec

        check_spec(cfg.judge)  # before any change: a typo fails with nothing written
    if cfg.reward_model and not (Path(cfg.reward_model) / "reward_config.json").exists() \
            and not Path(cfg.reward_model).is_dir():
        raise UserError(f"--reward-model {cfg.reward_model}: not a reward-model folder")
    # 2. Create the project, or change the one of that name.
    if cfg.update:
        project = store.project_by_name(name)
        values = {"labels_per_item": cfg.labels_per_item, "al_strategy": cfg.al_strategy}
        for key in ("calibration_accuracy", "attention_rate", "assist"):
            if getattr(cfg, key) is not None:
                values[key] = getattr(cfg, key)
        if guidelines is not None:
            values["guidelines"] = guidelines
        if cfg.reward_model:
            values["reward_model"] = str(Path(cfg.reward_model).resolve())
        store.update_project(project["id"], **values)
        pid = project["id"]
        print(f"project {name!r} (id {pid}) updated")
    else:
        pid = store.create_project(
            name, guidelines or "", cfg.aspects.split(","), cfg.labels_per_item,
            str(Path(cfg.reward_model).resolve()) if cfg.reward_model else None,
            cfg.al_strategy, calibration_items=cfg.calibration_items,
            calibration_accuracy=0.8 if cfg.calibration_accuracy is None
            else cfg.calibration_accuracy,
            attention_rate=cfg.attention_rate or 0.0, assist=cfg.assist or "off")
        print(f"project {name!r} created (id {pid})")
    # 3. With a reward model: order the project's tasks for active learning.
    if cfg.reward_model and store.tasks_of(pid):
        from alignkit.feedback.active import refresh_priorities

        print(f"active learning: scored {refresh_priorities(store, pid)} task(s)")
    # 4. With a judge: its suggestion for every task (shown as the project's --assist says).
    if cfg.judge:
        n = suggest(store, pid, cfg.judge, cfg.judge_device)
        print(f"AI assist: stored {cfg.judge}'s suggestion for {n} task(s) "
              f"(assist: {store.project(pid)['assist']})")
    return pid


def suggest(store, project_id: int, spec: str, device: str = "cpu") -> int:
    """Ask the judge ``spec`` (any ``--judge``: gold, reward:PATH incl. an ensemble, local:PATH,
    http(s)://...) about every non-gold task of the project and store its suggestion: a pair's
    preferred response (the same verdict for every aspect) with the judge's confidence, or a
    ranking ordered by summed win probability over all response pairs with their mean
    confidence. Gold items get none (a suggestion would give an attention check away). The
    suggestion is stored label-shaped, in canonical indices, so the report scores human-AI
    agreement as it scores gold accuracy. Returns how many tasks got one."""
    from alignkit.judges.spec import JudgeOptions, check_spec, make_judge

    spec = check_spec(spec)
    project = store.project(project_id)
    todo = [t for t in store.tasks_of(project_id) if not t["is_gold"]]
    if not todo:
        return 0
    categories = {t["prompt"]: (t.get("meta") or {}).get("category") for t in todo
                  if isinstance(t["prompt"], str)}
    judge = make_judge(spec, JudgeOptions(device=device), categories=categories)
    values = {}
    for task in todo:
        responses = task["responses"]
        pairs = [(a, b) for a in range(len(responses)) for b in range(a + 1, len(responses))]
        verdicts = [(a, b, judge.judge(task["prompt"], responses[a], responses[b]))
                    for a, b in pairs]
        confidence = sum(v.confidence for _, _, v in verdicts) / len(verdicts)
        if task["kind"] == "pairwise":
            winner = verdicts[0][2].winner
            choice = {"a": "A", "b": "B"}.get(winner, "tie")
            value = {"choices": {aspect: choice for aspect in project["aspects"]}}
        else:
            wins = [0.0] * len(responses)
            for a, b, v in verdicts:
                wins[a] += v.prob_a
                wins[b] += 1.0 - v.prob_a
            value = {"ranking": sorted(range(len(responses)), key=lambda i: (-wins[i], i))}
        values[task["id"]] = (value, round(confidence, 6))
    return store.set_suggestions(project_id, spec, values)


def add_user(cfg: AnnotateUserConfig) -> str:
    store = open_store(cfg.db)
    name = _need(cfg.name, "--name")
    password = None
    if cfg.password_env:
        password = os.environ.get(cfg.password_env)
        if not password:
            raise UserError(f"--password-env {cfg.password_env}: that environment variable is "
                            "empty")
    if cfg.new_token:
        token = store.new_token(name)
        user = store.user_by_name(name)
    else:
        user, token = store.create_user(name, cfg.role, password)
    for project in [p.strip() for p in cfg.projects.split(",") if p.strip()]:
        store.add_member(store.project_by_name(project)["id"], user.id)
    print(f"user {user.name!r} ({user.role}); sign-in token (shown once): {token}")
    return token


def add_tasks(cfg: AnnotateTasksConfig) -> list[int]:
    from alignkit.feedback.tasks import read_task_records, to_store_tasks

    # 1. The project and the records (every problem named by file and line).
    store = open_store(cfg.db)
    project = store.project_by_name(_need(cfg.project, "--project"))
    records = read_task_records(_need(cfg.data, "--data"), cfg.max_prompts)
    # 2. K candidates sampled from --model for records that have only a prompt.
    need = [r for r in records if r["responses"] is None]
    if need:
        if not cfg.model:
            raise UserError(f"{len(need)} record(s) have only a prompt: pass --model (a policy "
                            "that samples --num-responses candidates), or give responses")
        if cfg.num_responses < 2:
            raise UserError(f"--num-responses must be >= 2, got {cfg.num_responses}")
        from alignkit.generation.responses import sample_missing

        sample_missing(need, cfg)
        for r in need:
            r["meta"]["sampled_from"] = cfg.model
    # 3. Tasks into the store; with a reward model, re-order them for active learning.
    tasks = to_store_tasks(records, project["aspects"], cfg.shuffle_pairs, cfg.seed)
    ids = store.add_tasks(project["id"], tasks)
    gold = sum(t["gold"] is not None for t in tasks)
    print(f"added {len(ids)} task(s) to {project['name']!r} "
          f"({sum(t['kind'] == 'pairwise' for t in tasks)} pairwise, "
          f"{sum(t['kind'] == 'ranking' for t in tasks)} ranking, {gold} hidden gold)")
    if project["reward_model"]:
        from alignkit.feedback.active import refresh_priorities

        print(f"active learning: scored {refresh_priorities(store, project['id'])} task(s)")
    return ids


def export(cfg: AnnotateExportConfig) -> dict:
    from alignkit.feedback.export import (WEIGHTS_FILE, annotator_weights, export_name,
                                          export_records, write_records)
    from alignkit.feedback.quality import project_report

    if cfg.source == "feedback":
        return export_deployment_feedback(cfg)
    # 1. Resolved labels: pairs and rankings.
    store = open_store(cfg.db)
    project = store.project_by_name(_need(cfg.project, "--project"))
    pairs, rankings, counts = export_records(store, project["id"], cfg.mode, cfg.include_gold)
    store.record("export", None, project["id"], output=str(cfg.output), mode=cfg.mode,
                 format=cfg.format, pairs=counts["pairs"], rankings=counts["rankings"])
    out = Path(cfg.output)
    pairs_path = write_records(pairs, out / export_name("pairs", cfg.format), cfg.format)
    rankings_path = write_records(rankings, out / export_name("rankings", cfg.format), cfg.format)
    # 2. Each annotator's loss weight, where ``alignkit reward`` looks for it (beside the data).
    weights = annotator_weights(store, project["id"])
    tmp = out / f".{WEIGHTS_FILE}.tmp"
    tmp.write_text(json.dumps(weights, indent=1))
    tmp.replace(out / WEIGHTS_FILE)
    # 3. The agreement report beside them.
    report = project_report(store, project["id"])
    report.pop("item_details")
    report["export"] = counts
    tmp = out / ".agreement.json.tmp"
    tmp.write_text(json.dumps(report, indent=1, default=str))
    tmp.replace(out / "agreement.json")
    print(f"exported {counts['pairs']} pair(s) -> {pairs_path}, {counts['rankings']} "
          f"ranking(s) -> {rankings_path}; left out: {counts['skipped_disputed']} "
          f"unresolved dispute(s), {counts['skipped_unlabelled']} unlabelled, "
          f"{counts['skipped_gold']} gold, {counts['labels_not_counted']} label(s) of "
          f"annotators not (yet) calibrated; annotator weights -> {out / WEIGHTS_FILE}")
    log.info("agreement report -> %s", out / "agreement.json")
    return counts


def export_deployment_feedback(cfg: AnnotateExportConfig) -> dict:
    """``--source feedback``: the chat feedback of ``alignkit serve --feedback-db`` as
    preference pairs (``pairs.jsonl``, what reward and DPO train on) and single ratings
    (``ratings.jsonl``), each with the provenance of its answers; ``--format`` as for labels."""
    from alignkit.feedback.export import deployment_records, export_name, write_records

    store = open_store(cfg.db)
    pairs, ratings, counts = deployment_records(store)
    out = Path(cfg.output)
    pairs_path = write_records(pairs, out / export_name("pairs", cfg.format), cfg.format)
    ratings_path = write_records(ratings, out / export_name("ratings", cfg.format), cfg.format)
    store.record("export", None, None, output=str(out), source="feedback", format=cfg.format,
                 **counts)
    print(f"exported {counts['pairs']} pair(s) ({counts['pick_pairs']} side-by-side pick(s), "
          f"{counts['thumbs_pairs']} thumbs up over down) -> {pairs_path}, "
          f"{counts['ratings']} unpaired rating(s) -> {ratings_path}; left out: "
          f"{counts['skipped_identical']} pair(s) of identical answers")
    return counts


def backup(cfg: AnnotateBackupConfig) -> Path:
    from alignkit.feedback.backup import backup_project

    # 1. The project, read whole in one transaction.
    store = open_store(cfg.db)
    project = store.project_by_name(cfg.project)
    dump = backup_project(store, project["id"])
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", project["name"]).strip(".-") or "project"
    out = Path(cfg.output or f"{safe}-backup.json")  # a name is never a path
    store.record("backup", None, project["id"], output=str(out))
    # 2. Written atomically (a killed backup never leaves a half file under the name).
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(dump, ensure_ascii=False, indent=1), encoding="utf-8")
    tmp.replace(out)
    print(f"backed up project {project['name']!r}: {len(dump['tasks'])} task(s), "
          f"{len(dump['labels'])} label(s), {len(dump['resolutions'])} resolution(s), "
          f"{len(dump['audit'])} audit log entries, {len(dump['users'])} user(s) -> {out}",
          flush=True)
    return out


def restore(cfg: AnnotateRestoreConfig) -> int:
    from alignkit.data.readers import parse_json
    from alignkit.feedback.backup import restore_project

    # 1. The backup file, read and parsed (a damaged file is one clear error).
    path = Path(cfg.input)
    try:
        dump = parse_json(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise UserError(f"{path}: cannot read the backup ({e.strerror or e})") from None
    except ValueError as e:
        raise UserError(f"{path}: not a backup file ({e})") from None
    # 2. Restored in one transaction: everything, or nothing on any error.
    store = open_store(cfg.db)
    try:
        pid = restore_project(store, dump, cfg.project)
    except UserError as e:
        raise UserError(f"{path}: {e}") from None
    print(f"restored project {cfg.project or dump['project']['name']!r} (id {pid}): "
          f"{len(dump['tasks'])} task(s), {len(dump['labels'])} label(s)", flush=True)
    return pid


DEMO_GUIDELINES = """# How to judge
Compare the answers to the prompt. The better answer is:
- **helpful**: complete, on topic, friendly, about 20-32 words, and it *ends* (not cut off);
- **harmless**: refuses clearly harmful requests (threats, weapons, hurting people) politely.

## Examples
> Prompt: How do I tie a basic square knot?

Good: "Cross the right end over the left and under, then the left over the right and under. Pull both ends tight."

Bad: "Knots are fun! Knots are fun! Knots are" (repeats itself, cut off)

Bad: "How do I tie a basic square knot?" (copies the prompt)

Use **tie** when neither answer is better on that aspect.
"""


def demo_app(cfg) -> None:
    """``alignkit demo --annotate``: a project filled with the demo's prompts and answers sampled
    by the demo's policy (its SFT model when ``alignkit demo`` ran before, else the packaged
    model), hidden gold pairs from the shipped demonstrations, an annotator and the admin; then
    serve and print the URL and tokens."""
    import secrets

    from alignkit.data.readers import read_records
    from alignkit.feedback.tasks import read_task_records, to_store_tasks
    from alignkit.generation.responses import sample_responses
    from alignkit.models.loading import load_model_and_tokenizer, pick_device

    # 1. The database and the admin.
    root = Path(cfg.output) / "annotate"
    root.mkdir(parents=True, exist_ok=True)
    db = f"sqlite:///{root / 'annotate.db'}"
    store = open_store(db)
    admin_token = os.environ.get("ALIGNKIT_ADMIN_TOKEN") or secrets.token_urlsafe(24)
    store.ensure_admin(admin_token)
    # 2. The demo project, filled once: sampled answers to demo prompts, hidden gold pairs.
    name = "demo"
    try:
        project = store.project_by_name(name)
    except Exception:
        pid = store.create_project(name, DEMO_GUIDELINES, ["helpful", "harmless"], 2)
        project = store.project(pid)
        n = 6 if cfg.quick else 16
        items = read_task_records("demo-prompts", n)
        sft = Path(cfg.output) / "sft" / "final"
        policy = str(sft) if sft.is_dir() else cfg.model
        print(f"sampling {cfg.label.num_responses} answers to {n} demo prompts with {policy} ...",
              flush=True)
        model, tokenizer = load_model_and_tokenizer(policy, pick_device(cfg.device))
        sample_responses(model, tokenizer, items, max(2, cfg.label.num_responses),
                         cfg.max_new_tokens, 1.0, 1.0, 16, cfg.seed)
        for i, item in enumerate(items):  # half pairwise (first two answers), half rankings
            if i % 2 == 0:
                item["responses"] = item["responses"][:2]
        gold = [r.fields for r in read_records("demo")][:3]
        for g in gold:  # a shipped demonstration beats the prompt parroted back
            items.append({"prompt": g["prompt"], "responses": [g["completion"], g["prompt"]],
                          "best_first": [0, 1], "gold": True, "pair": True,
                          "meta": {"source": "demo gold"}})
        store.add_tasks(pid, to_store_tasks(items, project["aspects"], True, cfg.seed))
    # 3. An annotator, then serve.
    try:
        user, token = store.create_user("annotator1")
        store.add_member(project["id"], user.id)
    except Exception:
        token = store.new_token("annotator1")
    serve_cfg = AnnotateServeConfig(db=db, port=0 if _port_taken(8765) else 8765)

    def announce(url: str) -> None:
        print(f"\nOpen {url} and sign in with a token:\n  annotator 'annotator1': {token}\n"
              f"  admin 'admin': {admin_token if 'ALIGNKIT_ADMIN_TOKEN' not in os.environ else '$ALIGNKIT_ADMIN_TOKEN'}"
              f"\n  dashboard: {url}admin/projects/{project['id']}\nCtrl-C stops the app.\n",
              flush=True)

    serve(serve_cfg, ready=announce)


def _port_taken(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0
