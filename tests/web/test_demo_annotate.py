"""``alignkit demo --annotate`` (on a tiny policy, so no packaged model is needed): the app
starts filled with the demo's prompts and sampled answers plus hidden gold pairs, and prints the
URL and a token that signs an annotator in."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import pytest
import requests

pytestmark = pytest.mark.web


def test_demo_annotate_serves_demo_prompts_with_a_printed_token(tiny_model_dir, tmp_path):
    env = {**os.environ}
    env.pop("ALIGNKIT_ADMIN_TOKEN", None)
    log = tmp_path / "demo.log"
    with log.open("w") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "alignkit", "demo", "--annotate",
                                 "--quick", "--model", str(tiny_model_dir), "--output",
                                 str(tmp_path / "demo")], stdout=fh, stderr=subprocess.STDOUT,
                                env=env)
    try:
        deadline = time.time() + 240
        while "Ctrl-C stops the app" not in log.read_text():
            assert proc.poll() is None, log.read_text()
            assert time.time() < deadline, log.read_text()
            time.sleep(0.2)
        text = log.read_text()
        url = re.search(r"Open (http://127\.0\.0\.1:\d+/)", text).group(1)
        token = re.search(r"annotator 'annotator1': (\S+)", text).group(1)
        admin = re.search(r"admin 'admin': (\S+)", text).group(1)
        h = {"Authorization": f"Bearer {token}"}
        projects = requests.get(url + "api/projects", headers=h, timeout=30).json()
        assert [p["name"] for p in projects] == ["demo"]
        nxt = requests.get(url + "api/projects/1/next", headers=h, timeout=30).json()
        # 6 demo prompts (3 pairwise, 3 rankings of 4 sampled answers) + 3 hidden gold pairs
        assert nxt["progress"] == {"done": 0, "left": 9, "total": 9}
        from alignkit.data.readers import read_records
        shipped = {r.fields["prompt"] for r in read_records("demo-prompts")}
        assert nxt["task"]["prompt"] in shipped
        page = requests.get(url + "projects/1", headers=h, timeout=30)
        assert page.status_code == 200 and "How to judge" in page.text
        rep = requests.get(url + "api/admin/projects/1/report",
                           headers={"Authorization": f"Bearer {admin}"}, timeout=30)
        assert rep.status_code == 200 and rep.json()["items"] == 9
    finally:
        proc.terminate()
        proc.wait(timeout=30)
