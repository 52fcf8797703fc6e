"""``--report-to``: a real tiny SFT run reports to TensorBoard, Weights & Biases (offline), MLflow
(its SQLite store in the run folder) and Trackio (a local store), each read back through the
library's own reader and equal to ``metrics.jsonl``; ``--resume`` continues the same runs; a
wrong tracker name is one line and exit status 2; ``none`` writes no tracker records; a tracker
whose library is missing is named with what to install. Nothing here touches the network."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from alignkit.errors import UserError
from alignkit.utils import trackers
from alignkit.utils.metrics import MetricsLog
from tests.conftest import run_cli, run_cli_batch

ALL = "tensorboard,mlflow,wandb,trackio"


# ---------------------------------------------------------------------------------------------
# the names


@pytest.mark.unit
@pytest.mark.parametrize("value,names", [
    ("tensorboard", ("tensorboard",)),
    (ALL, ("tensorboard", "mlflow", "wandb", "trackio")),
    (" MLflow , wandb,wandb", ("mlflow", "wandb")),
    ("none", ()),
    ("none,none", ()),
])
def test_report_to_names(value, names):
    assert trackers.parse_report_to(value) == names


@pytest.mark.unit
@pytest.mark.parametrize("value,message", [
    ("tensorbord", "--report-to: unknown tracker 'tensorbord'; choose from tensorboard, wandb, "
                   "mlflow, trackio (a comma-separated list), or none"),
    ("none,wandb", "--report-to: none turns every tracker off; it cannot be combined with "
                   "others"),
    ("wandb,", "--report-to: 'wandb,' is not a list of trackers: give a comma-separated list "
               "of tensorboard, wandb, mlflow, trackio, or none"),
])
def test_a_wrong_report_to_is_refused_when_the_config_is_built(value, message):
    from alignkit.config import PPOConfig, SFTConfig

    for cls in (SFTConfig, PPOConfig):
        with pytest.raises(UserError) as info:
            cls(report_to=value)
        assert str(info.value) == message


@pytest.mark.unit
@pytest.mark.parametrize("name,install", [
    ("wandb", "wandb"), ("trackio", "trackio"), ("mlflow", "mlflow-skinny"),
])
def test_a_missing_tracker_library_is_named_before_anything_is_written(
        name, install, tmp_path, monkeypatch):
    import importlib.util

    module = {"mlflow-skinny": "mlflow"}.get(install, install)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda m, *a: None if m == module else real(m, *a))
    with pytest.raises(trackers.TrackerError) as info:
        MetricsLog(tmp_path, report_to=f"tensorboard,{name}", config={"lr": 0.1})
    assert str(info.value) == (f"--report-to {name} needs {install}: pip install -e "
                               f"'.[trackers]' (or pip install {install})")
    assert list(tmp_path.iterdir()) == []  # not even metrics.jsonl or tensorboard/


@pytest.mark.unit
def test_mlflow_on_its_default_sqlite_store_also_needs_sqlalchemy(tmp_path, monkeypatch):
    import importlib.util

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda m, *a: None if m == "alembic" else real(m, *a))
    if real("mlflow") is None:
        pytest.skip("mlflow is not installed")
    with pytest.raises(trackers.TrackerError, match=r"needs sqlalchemy alembic: pip install -e"):
        trackers.check_installed(("mlflow",), tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # a server needs neither
    trackers.check_installed(("mlflow",), tmp_path)


@pytest.mark.unit
def test_a_failing_tracker_never_stops_the_run(tmp_path, caplog):
    class Broken:
        name = "broken"

        def log(self, step, values):
            raise ConnectionError("server went away")

        def close(self):
            pass

    metrics = MetricsLog(tmp_path, report_to="none")
    metrics._trackers.append(Broken())
    metrics.log(1, {"loss": 1.5})
    metrics.log(2, {"loss": 1.25, "note": "text", "nan": float("nan")})
    metrics.close()
    rows = [json.loads(ln) for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in rows] == [1.5, 1.25]
    assert "broken failed (server went away); the run goes on without it" in caplog.text
    assert caplog.text.count("broken failed") == 1


@pytest.mark.unit
def test_importing_alignkit_imports_no_tracker_library():
    code = ("import sys, alignkit.cli, alignkit.config, alignkit.utils.metrics, "
            "alignkit.training.engine; print(sorted(m for m in ('wandb', 'mlflow', 'trackio') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------------------------------------
# the command line


@pytest.mark.smoke
def test_a_wrong_tracker_name_is_one_line_and_exit_2(tmp_path):
    given = {"sft": [], "dpo": ["--model", "m", "--data", "d.jsonl"]}  # dpo's required ones
    cases = [{"argv": [stage, "--report-to", value, "--output", str(tmp_path / "out"),
                       *given[stage]], "config_only": True}
             for stage in given for value in ("tensorbord", "none,mlflow")]
    got = run_cli_batch(cases, tmp_path)
    for case, result in zip(cases, got):
        stage, value = case["argv"][0], case["argv"][2]
        assert result["rc"] == 2, result
        assert result["err"].count("\n") == 1 and "Traceback" not in result["err"]
        assert result["err"].startswith(f"alignkit {stage}: error: --report-to: ")
        assert ("unknown tracker 'tensorbord'" if value == "tensorbord"
                else "cannot be combined") in result["err"]
    assert not (tmp_path / "out").exists()
    proc = run_cli("sft", "--report-to", "wandb,mlfow", "--output", str(tmp_path / "out"),
                   timeout=300)
    assert proc.returncode == 2
    assert proc.stderr == ("alignkit sft: error: --report-to: unknown tracker 'mlfow'; choose "
                           "from tensorboard, wandb, mlflow, trackio (a comma-separated list), "
                           "or none\n")


# the real entry point in a process where wandb cannot be found (as if not installed)
WITHOUT_WANDB = """
import importlib.util, sys
found = importlib.util.find_spec
importlib.util.find_spec = lambda name, *a: None if name == "wandb" else found(name, *a)
from alignkit.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.smoke
def test_a_tracker_that_is_not_installed_is_one_line_and_exit_2(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-c", WITHOUT_WANDB, "sft", "--model", str(tiny_model_dir), "--data",
         "demo", "--output", str(out), "--max-steps", "1", "--no-progress",
         "--report-to", "tensorboard,wandb"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines()[-1] == (
        "alignkit sft: error: --report-to wandb needs wandb: pip install -e '.[trackers]' (or "
        "pip install wandb)")
    assert "Traceback" not in proc.stderr
    assert not out.exists()  # refused before the output folder, let alone a model


def read_metrics(out: Path) -> list[dict]:
    return [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines() if ln]


def values(out: Path, split: str, key: str) -> dict[int, float]:
    return {r["step"]: r[key] for r in read_metrics(out) if r["split"] == split and key in r}


@pytest.mark.smoke
def test_report_to_none_writes_no_tracker_records(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    proc = run_cli("sft", "--model", str(tiny_model_dir), "--data", "demo", "--output", str(out),
                   "--max-steps", "1", "--eval-fraction", "0", "--no-progress",
                   "--report-to", "none")
    assert proc.returncode == 0, proc.stderr
    assert sorted(values(out, "train", "loss")) == [1]
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "final", "metrics.jsonl"]


# ---------------------------------------------------------------------------------------------
# every tracker, read back


@pytest.fixture
def offline_trackers(tmp_path, monkeypatch):
    """W&B offline, MLflow on its default store in the run folder, Trackio local, all of their
    settings, caches and telemetry kept off the network and out of $HOME."""
    for module in ("wandb", "mlflow", "trackio"):
        pytest.importorskip(module)
    home = tmp_path / "home"
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "WANDB_PROJECT",
                 "WANDB_API_KEY", "WANDB_DIR", "TRACKIO_SPACE_ID", "TRACKIO_SERVER_URL",
                 "TRACKIO_BUCKET_ID", "TRACKIO_DATASET_ID"):
        monkeypatch.delenv(name, raising=False)
    env = {"WANDB_MODE": "offline", "WANDB_CONFIG_DIR": home / "wandb-config",
           "WANDB_CACHE_DIR": home / "wandb-cache", "WANDB_DATA_DIR": home / "wandb-data",
           "WANDB_ERROR_REPORTING": "false", "WANDB_SILENT": "true",
           "TRACKIO_DIR": home / "trackio", "MLFLOW_DISABLE_TELEMETRY": "true",
           "DO_NOT_TRACK": "true", "HF_HUB_OFFLINE": "1"}
    for name, value in env.items():
        monkeypatch.setenv(name, str(value))
    return home


def wandb_records(path: Path):
    """The records of a ``.wandb`` file: W&B's header, then the LevelDB log format (32 KiB
    blocks of chunks, each with a 7-byte header), each record a ``wandb_internal_pb2.Record``."""
    from wandb.proto import wandb_internal_pb2

    data, block, pos, chunks = path.read_bytes(), 32768, 7, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:
            break
        chunks += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a whole record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunks)
            chunks = b""
            yield record


def wandb_run(files: list[Path]) -> tuple[dict, dict, list[dict]]:
    """(the run record, the config, the history rows) of a run's ``.wandb`` files in order."""
    run, config, history = {}, {}, []
    for path in files:
        for record in wandb_records(path):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                run = {"id": record.run.run_id, "name": record.run.display_name,
                       "project": record.run.project}
                config.update({i.key: json.loads(i.value_json) for i in record.run.config.update})
            elif kind == "config":
                config.update({i.key: json.loads(i.value_json) for i in record.config.update})
            elif kind == "history":
                history.append({i.key or "/".join(i.nested_key): json.loads(i.value_json)
                                for i in record.history.item})
    return run, config, history


TRACKIO_READ = """
import json, sys, trackio
from trackio.sqlite_storage import SQLiteStorage
runs = [{"name": r.name, "config": r.config} for r in trackio.Api().runs("alignkit")]
print(json.dumps({"runs": runs, "logs": SQLiteStorage.get_logs("alignkit", sys.argv[1])}))
"""


def trackio_run(name: str) -> dict:
    """Trackio's runs of the project and the logs of run ``name``, read in a process of its own
    (Trackio finds its store from TRACKIO_DIR when it is first imported)."""
    proc = subprocess.run([sys.executable, "-c", TRACKIO_READ, name], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])


def by_step(rows: list[tuple[int, float]]) -> dict[int, list[float]]:
    out: dict[int, list[float]] = {}
    for step, value in rows:
        out.setdefault(step, []).append(value)
    return out


@pytest.mark.smoke
def test_every_tracker_writes_its_local_records_and_resume_continues_them(
        tiny_model_dir, tmp_path, offline_trackers):
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    out = tmp_path / "run"
    argv = ["sft", "--model", str(tiny_model_dir), "--data", "demo", "--output", str(out),
            "--max-steps", "4", "--save-every", "2", "--lr", "0.003", "--seed", "5",
            "--no-progress", "--report-to", ALL]
    proc = run_cli(*argv)
    assert proc.returncode == 0, proc.stderr
    name = f"{tmp_path.name}/run"
    first = values(out, "train", "loss")
    assert sorted(first) == [1, 2, 3, 4]
    ids = json.loads((out / "trackers.json").read_text())
    assert set(ids) == {"wandb", "mlflow", "trackio"}

    # MLflow: its SQLite store in the run folder, one run with the config as params and every
    # loss of metrics.jsonl at its step
    uri = "sqlite:///" + (out / "mlflow.db").as_posix()
    assert ids["mlflow"] == {"run_id": ids["mlflow"]["run_id"], "tracking_uri": uri}
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("alignkit")
    [run] = client.search_runs([experiment.experiment_id])
    assert run.info.run_id == ids["mlflow"]["run_id"] and run.info.run_name == name
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert (params["lr"], params["max_steps"], params["seed"], params["data"]) == (
        "0.003", "4", "5", "demo")
    assert params["report_to"] == ALL and params["eval_data"] == "None"
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert {m.step: m.value for m in history} == first
    assert len(history) == 4
    assert client.get_metric_history(run.info.run_id, "eval/loss")[0].value == \
        values(out, "eval", "loss")[0]
    assert run.data.metrics["setup/total_params"] == values(out, "setup", "total_params")[0]

    # W&B, offline: a run folder under <output>/wandb/ whose transaction log holds the config
    # and every train loss at its step
    [folder] = (out / "wandb").glob(f"offline-run-*-{ids['wandb']['id']}")
    run_info, config, rows = wandb_run([folder / f"run-{ids['wandb']['id']}.wandb"])
    assert run_info == {"id": ids["wandb"]["id"], "name": name, "project": "alignkit"}
    assert (config["lr"], config["max_steps"], config["report_to"]) == (0.003, 4, ALL)
    assert {r["step"]: r["train/loss"] for r in rows if "train/loss" in r} == first
    assert [r["eval/loss"] for r in rows if "eval/loss" in r][0] == values(out, "eval", "loss")[0]

    # Trackio: its local store under TRACKIO_DIR
    assert (offline_trackers / "trackio" / "alignkit.db").is_file()
    record = trackio_run(name)
    [trackio] = record["runs"]
    assert trackio["name"] == name == ids["trackio"]["name"]
    assert (trackio["config"]["lr"], trackio["config"]["report_to"]) == (0.003, ALL)
    assert {r["step"]: r["train/loss"] for r in record["logs"] if "train/loss" in r} == first

    # TensorBoard: the scalars (float32) and the hyperparameters in the run's own folder
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert [(e.step, pytest.approx(e.value, rel=1e-6)) for e in events.Scalars("train/loss")] \
        == sorted(first.items())
    content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = HParamsPluginData.FromString(content).session_start_info.hparams
    assert hparams["lr"].number_value == 0.003 and hparams["report_to"].string_value == ALL

    # --resume from the checkpoint at step 2: the same runs go on with steps 3 and 4 again (the
    # losses equal the first time's: resume is exact)
    proc = run_cli(*argv, "--resume")
    assert proc.returncode == 0, proc.stderr
    assert values(out, "train", "loss") == first
    assert json.loads((out / "trackers.json").read_text()) == ids
    [run] = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and run.data.params["resume"] == "False"
    assert by_step([(m.step, m.value) for m in client.get_metric_history(
        run.info.run_id, "train/loss")]) == {1: [first[1]], 2: [first[2]],
                                             3: [first[3]] * 2, 4: [first[4]] * 2}
    fragments = sorted((out / "wandb").glob(f"offline-run-*-{ids['wandb']['id']}"))
    assert len(fragments) == 2
    _, config, rows = wandb_run([fragments[1] / f"run-{ids['wandb']['id']}.wandb"])
    assert config["resume"] is True
    assert {r["step"]: r["train/loss"] for r in rows if "train/loss" in r} == {
        3: first[3], 4: first[4]}
    record = trackio_run(name)
    assert [r["name"] for r in record["runs"]] == [name]
    assert by_step([(r["step"], r["train/loss"]) for r in record["logs"]
                    if "train/loss" in r]) == by_step([(1, first[1]), (2, first[2]),
                                                       (3, first[3]), (4, first[4]),
                                                       (3, first[3]), (4, first[4])])
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()  # what the first run wrote after step 2 is purged
    assert [(e.step, pytest.approx(e.value, rel=1e-6)) for e in events.Scalars("train/loss")] \
        == sorted(first.items())
