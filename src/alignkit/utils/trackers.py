"""Experiment trackers beside ``metrics.jsonl`` (``--report-to``): TensorBoard (the default),
Weights & Biases, MLflow and Trackio, each written through its own library. A tracker gets the
resolved config once when its run starts and every finite number the run logs, as
``<split>/<name>`` at the run's step. Each library is imported only when its tracker is asked
for, so ``import alignkit`` never pays for them.

Where the records go: TensorBoard ``<output>/tensorboard/``; W&B ``<output>/wandb/`` (synced to
the server unless ``WANDB_MODE=offline``); MLflow the server or database in
``MLFLOW_TRACKING_URI``, else the SQLite database ``<output>/mlflow.db``; Trackio its own local
store (``TRACKIO_DIR``, by default ``$HF_HOME/trackio``), or the Space/server named by
``TRACKIO_SPACE_ID``/``TRACKIO_SERVER_URL``. The run ids that ``--resume`` continues are kept
in ``<output>/trackers.json``."""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import io
import json
import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignkit.utils.files import write_text_atomic

log = logging.getLogger("alignkit.trackers")

TRACKERS = ("tensorboard", "wandb", "mlflow", "trackio")
# the W&B project, MLflow experiment and Trackio project a run joins unless the environment
# names another (WANDB_PROJECT, MLFLOW_EXPERIMENT_NAME)
PROJECT = "alignkit"
# the trackers' own ids of this run, kept so that --resume continues the same runs
IDS_FILE = "trackers.json"
EXTRA_HINT = "pip install -e '.[trackers]'"
# the packages a tracker imports, and what installs them
NEEDS = {"wandb": (("wandb",), "wandb"), "trackio": (("trackio",), "trackio"),
         "mlflow": (("mlflow",), "mlflow-skinny")}
# MLflow's database stores (its default, SQLite, included) also run on SQLAlchemy and Alembic,
# which mlflow-skinny leaves out
MLFLOW_DB = (("sqlalchemy", "alembic"), "sqlalchemy alembic")
DB_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")


class TrackerError(Exception):
    """A wrong ``--report-to``, a tracker whose library is missing, or one whose run cannot
    start: one line, which the layers above raise as a ``UserError`` (utils does not import
    ``alignkit.errors``)."""


def parse_report_to(value: str) -> tuple[str, ...]:
    """``--report-to`` as tracker names, in order, once each; ``none`` is the empty tuple."""
    names = [n.strip().lower() for n in str(value).split(",")]
    known = ", ".join(TRACKERS)
    if not all(names):
        raise TrackerError(f"--report-to: {value!r} is not a list of trackers: give a "
                           f"comma-separated list of {known}, or none")
    for name in names:
        if name not in (*TRACKERS, "none"):
            raise TrackerError(f"--report-to: unknown tracker {name!r}; choose from {known} (a "
                               "comma-separated list), or none")
    if "none" in names:
        if set(names) != {"none"}:
            raise TrackerError("--report-to: none turns every tracker off; it cannot be combined "
                               "with others")
        return ()
    return tuple(dict.fromkeys(names))


def mlflow_tracking_uri(output: Path) -> str:
    """``MLFLOW_TRACKING_URI``, else a SQLite database in the run's folder (MLflow 3 refuses
    its older file store, ``./mlruns``, unless told otherwise, and defaults to SQLite)."""
    return (os.environ.get("MLFLOW_TRACKING_URI")
            or "sqlite:///" + (output.resolve() / "mlflow.db").as_posix())


def check_installed(names: tuple[str, ...], output: Path) -> None:
    """A ``TrackerError`` naming what to install for the first tracker whose library is
    missing (checked before anything is written)."""
    for name in names:
        needs = [NEEDS[name]] if name in NEEDS else []
        scheme = mlflow_tracking_uri(output).split(":", 1)[0].split("+")[0]
        if name == "mlflow" and scheme in DB_SCHEMES:
            needs.append(MLFLOW_DB)
        for modules, packages in needs:
            if not all(importlib.util.find_spec(m) for m in modules):
                raise TrackerError(f"--report-to {name} needs {packages}: {EXTRA_HINT} (or pip "
                                   f"install {packages})")


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as dotted keys (``ppo.lr``)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


@dataclass
class RunInfo:
    """What every tracker starts from."""

    output: Path
    name: str                          # the run's name in each tracker's UI
    config: dict[str, Any] | None      # the resolved config, logged once
    resume_step: int | None            # None: a fresh run
    saved: dict[str, dict] = field(default_factory=dict)  # IDS_FILE of the run being resumed

    def resumed(self, tracker: str) -> dict:
        """What ``tracker`` stored for the run being resumed ({} for a fresh run)."""
        return self.saved.get(tracker, {}) if self.resume_step is not None else {}


class TensorBoardTracker:
    name = "tensorboard"

    def __init__(self, run: RunInfo):
        from torch.utils.tensorboard import SummaryWriter

        folder = run.output / "tensorboard"
        # purge_step: on resume, TensorBoard hides what the killed run wrote after the checkpoint
        self.writer = SummaryWriter(str(folder), purge_step=None if run.resume_step is None
                                    else run.resume_step + 1)
        if run.config is not None:
            hparams = {k: v if isinstance(v, (int, float, str, bool)) else str(v)
                       for k, v in flatten(run.config).items()}
            # run_name ".": the hyperparameters join this run's folder (add_hparams would
            # otherwise start a sub-run of their own)
            self.writer.add_hparams(hparams, {}, run_name=".")
        self.ids: dict = {}

    def log(self, step: int, values: dict[str, float]) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        self.writer.close()


class WandbTracker:
    name = "wandb"

    def __init__(self, run: RunInfo):
        import wandb

        run_id = run.resumed(self.name).get("id")
        # the mode (online, offline, disabled), entity and API key come from wandb's own
        # settings and environment (WANDB_MODE, WANDB_API_KEY, ...)
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT") or PROJECT,
                              name=run.name, dir=str(run.output), id=run_id,
                              resume="allow" if run_id else None)
        if run.config is not None:
            # a resumed run may have been given other values (--resume itself, for one)
            self.run.config.update(run.config, allow_val_change=True)
        # W&B drops a row whose step is below one it has seen, and a resumed run repeats the
        # steps the killed run logged after its checkpoint: the step is a metric of its own,
        # the x-axis of every chart, instead of W&B's internal one
        self.run.define_metric("step")
        self.run.define_metric("*", step_metric="step")
        self.ids = {"id": self.run.id}

    def log(self, step: int, values: dict[str, float]) -> None:
        self.run.log({"step": step, **values})

    def close(self) -> None:
        self.run.finish()


class MlflowTracker:
    name = "mlflow"
    BATCH = 100  # MLflow takes at most 100 params in one request

    def __init__(self, run: RunInfo):
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        uri = mlflow_tracking_uri(run.output)
        self.client = MlflowClient(tracking_uri=uri)
        saved = run.resumed(self.name)
        self.run_id, logged = None, {}
        if saved.get("run_id") and saved.get("tracking_uri") == uri:
            try:
                logged = self.client.get_run(saved["run_id"]).data.params
                self.run_id = saved["run_id"]
                self.client.update_run(self.run_id, status="RUNNING")
            except MlflowException:  # the run is gone from the store: start a new one
                logged = {}
        if self.run_id is None:
            name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or PROJECT
            experiment = self.client.get_experiment_by_name(name)
            if experiment is not None:
                experiment_id = experiment.experiment_id
            else:
                # the default store keeps artifacts beside its database, not in the working folder
                where = (None if os.environ.get("MLFLOW_TRACKING_URI")
                         else (run.output.resolve() / "mlartifacts").as_uri())
                experiment_id = self.client.create_experiment(name, artifact_location=where)
            self.run_id = self.client.create_run(experiment_id, run_name=run.name).info.run_id
        if run.config is not None:
            self._log_params(run.config, logged)
        self.ids = {"run_id": self.run_id, "tracking_uri": uri}
        # a run that dies before close() would otherwise stay RUNNING in MLflow for good
        atexit.register(self._end, "FAILED")

    def _log_params(self, config: dict[str, Any], logged: dict[str, str]) -> None:
        from mlflow.entities import Param

        try:
            from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH as limit
        except ImportError:
            limit = 6000
        # a param never changes once logged, so a resumed run logs only the ones it lacks
        params = [Param(key, str(value)[:limit]) for key, value in flatten(config).items()
                  if key not in logged]
        for i in range(0, len(params), self.BATCH):
            self.client.log_batch(self.run_id, params=params[i:i + self.BATCH])

    def log(self, step: int, values: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[
            Metric(re.sub(r"[^/\w.\- ]", "_", key), value, now, step)
            for key, value in values.items()])

    def _end(self, status: str) -> None:
        atexit.unregister(self._end)
        self.client.set_terminated(self.run_id, status)

    def close(self) -> None:
        self._end("FINISHED")


class TrackioTracker:
    name = "trackio"

    def __init__(self, run: RunInfo):
        import trackio

        saved = run.resumed(self.name)
        printed = io.StringIO()
        # Trackio prints to stdout, which alignkit keeps for results: its lines go to the log
        with contextlib.redirect_stdout(printed):
            self.run = trackio.init(project=saved.get("project", PROJECT),
                                    name=saved.get("name", run.name), config=run.config,
                                    resume="allow" if saved else "never", embed=False)
        _log_printed(printed)
        self.ids = {"project": self.run.project, "name": self.run.name}

    def log(self, step: int, values: dict[str, float]) -> None:
        self.run.log(values, step=step)

    def close(self) -> None:
        import trackio

        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            if trackio.context_vars.current_run.get() is self.run:
                # unlike Run.finish, this also forgets the run, which trackio would otherwise
                # finish (and announce on stdout) a second time when the process exits
                trackio.finish()
            else:
                self.run.finish()
        _log_printed(printed)


def _log_printed(printed: io.StringIO) -> None:
    for line in printed.getvalue().splitlines():
        line = re.sub(r"\x1b\[[0-9;]*m", "", line).strip()
        if line:
            log.info("trackio: %s", line)


ADAPTERS = {"tensorboard": TensorBoardTracker, "wandb": WandbTracker, "mlflow": MlflowTracker,
            "trackio": TrackioTracker}


def open_trackers(names: tuple[str, ...], output: str | Path, config: dict[str, Any] | None,
                  resume_step: int | None) -> list:
    """Start a run in each tracker of ``names`` (all of them or none: one that cannot start is a
    ``TrackerError`` after the others are closed again) and record their ids in ``IDS_FILE``.

    TensorBoard is a dependency of alignkit and the default: a broken install of it costs the
    run its TensorBoard logs, not the run; the others were asked for by name."""
    output = Path(output)
    check_installed(names, output)
    output.mkdir(parents=True, exist_ok=True)
    ids_path = output / IDS_FILE
    saved = json.loads(ids_path.read_text()) if ids_path.exists() else {}
    folder = output.resolve()
    name = "/".join(p for p in (folder.parent.name, folder.name) if p)  # runs/sft
    run = RunInfo(output, name, config, resume_step, saved)
    opened: list = []
    try:
        for name in names:
            try:
                opened.append(ADAPTERS[name](run))
            except ImportError as e:
                if name == "tensorboard":
                    log.warning("TensorBoard is not available (%s); logging without it", e)
                    continue
                raise TrackerError(f"--report-to {name}: {e}; {EXTRA_HINT}") from e
            except TrackerError:
                raise
            except Exception as e:  # the library's own reason (no API key, server unreachable)
                reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
                raise TrackerError(f"--report-to {name}: could not start the run: {reason}") from e
    except BaseException:
        for tracker in opened:
            with contextlib.suppress(Exception):
                tracker.close()
        raise
    ids = {t.name: t.ids for t in opened if t.ids}
    if ids:
        write_text_atomic(ids_path, json.dumps({**saved, **ids}, indent=1) + "\n")
    return opened
