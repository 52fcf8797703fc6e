"""A real ``alignkit serve`` subprocess on loopback (shared by the serve, judge and label tests)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def serve_process(model_dir: Path, *extra: str, timeout: float = 120):
    """Start ``alignkit serve --port 0``, wait until it answers, yield its base URL (``.../v1``),
    stop it afterwards."""
    proc = subprocess.Popen([sys.executable, "-m", "alignkit", "serve", "--model", str(model_dir),
                             "--port", "0", *extra], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ})
    try:
        url = None
        deadline = time.time() + timeout
        while url is None:
            line = proc.stdout.readline()
            assert line or proc.poll() is None, "alignkit serve exited before listening"
            found = re.search(r"listening on (http://\S+/v1)", line)
            url = found.group(1) if found else None
            assert time.time() < deadline, "alignkit serve did not start"
        while True:  # until the model is loaded
            try:
                with urllib.request.urlopen(url.removesuffix("/v1") + "/health", timeout=5):
                    break
            except OSError:
                assert proc.poll() is None, "alignkit serve exited while loading"
                assert time.time() < deadline, "alignkit serve did not load its model"
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as resp:
        return json.loads(resp.read())


def post_json(url: str, body) -> tuple[int, dict | str]:
    """POST JSON; returns (status, parsed body) for 2xx and 4xx/5xx alike."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            raw = resp.read().decode()
            status = resp.status
    except urllib.error.HTTPError as e:
        raw, status = e.read().decode(), e.code
    try:
        return status, json.loads(raw)
    except json.JSONDecodeError:
        return status, raw


_SHARED: dict = {}


def shared_server(model_dir: Path) -> str:
    """One ``alignkit serve`` (model name ``tiny-policy``) for every test module of the session:
    starting Python, torch and a model costs seconds each time. Stopped at interpreter exit.
    Tests that count requests compare the server's counter before and after their own calls."""
    import atexit

    key = str(model_dir)
    if key not in _SHARED:
        ctx = serve_process(model_dir, "--model-name", "tiny-policy")
        _SHARED[key] = (ctx, ctx.__enter__())
        atexit.register(ctx.__exit__, None, None, None)
    return _SHARED[key][1]
