"""Shared fixtures: a tiny random Llama-style model folder, built once per test session."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

# keep tests on the CPU numerics they were written for, and off any network
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def worker_threads(cores: int, workers: int) -> int:
    """CPU threads for each of ``workers`` parallel test processes on ``cores`` cores: their
    share, at least one (OpenMP threads beyond the cores spin against each other and slow every
    process down manyfold)."""
    return max(1, cores // max(1, workers))


def usable_cores() -> int:
    """The cores this process may run on (the count torch takes; a container's host may have
    many more)."""
    return len(os.sched_getaffinity(0))


def pytest_xdist_auto_num_workers(config) -> int:
    """``-n auto`` (pyproject's addopts): one worker per core this process may run on, at most
    4."""
    return min(4, usable_cores())


# under pytest-xdist (addopts: -n), this worker and the CLI subprocesses it starts use its share
# of the cores; set before anything imports torch, which reads it once
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    os.environ.setdefault("OMP_NUM_THREADS", str(worker_threads(
        usable_cores(), int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))))

# tests/vllm run where vLLM's CPU build is installed, an environment of their own
# (scripts/test_vllm.sh, which README's test command runs after this suite)
collect_ignore = [] if importlib.util.find_spec("vllm") else ["vllm"]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    from alignkit.models.tiny import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def run_cli(*args: str, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``alignkit`` as a real subprocess (the way users run it)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "alignkit", *args], capture_output=True,
                          text=True, timeout=timeout, env=full_env)


# One interpreter runs many CLI cases through the real entry point (a subprocess per case would
# take minutes): each case's stderr (log lines included) is captured on its own. A case with
# "config_only" must be refused while its config is built: the stage itself is never run.
CLI_BATCH = r"""
import contextlib, io, json, logging, sys, traceback
import alignkit.cli as cli


class ToCurrentStderr(logging.Handler):
    # each case captures sys.stderr; a log line belongs to the case that writes it
    def emit(self, record):
        sys.stderr.write(self.format(record) + "\n")


logging.getLogger().addHandler(ToCurrentStderr())
logging.getLogger().setLevel(logging.INFO)
run_stage = cli.run_stage


def ran(name, cfg):
    raise RuntimeError(f"stage {name} ran: its --config was accepted")


cases, results = json.load(open(sys.argv[1])), []
for case in cases:
    cli.run_stage = ran if case.get("config_only") else run_stage
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            rc = cli.main(case["argv"])
        except SystemExit as e:
            rc = e.code
        except BaseException:
            traceback.print_exc()
            rc = None
    results.append({"rc": rc, "err": err.getvalue()})
json.dump(results, open(sys.argv[2], "w"))
"""


def run_cli_batch(cases: list[dict], cwd: Path, timeout: float = 600) -> list[dict]:
    """``cases``: ``{"argv": [...], "config_only": bool}`` -> per case ``{"rc", "err"}``."""
    import json

    (cwd / "cases.json").write_text(json.dumps(cases))
    proc = subprocess.run([sys.executable, "-c", CLI_BATCH, "cases.json", "results.json"],
                          cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-5000:]
    return json.loads((cwd / "results.json").read_text())
