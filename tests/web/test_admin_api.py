"""The admin side over real HTTP (uvicorn subprocess) on SQLite and on PostgreSQL: projects,
users and task uploads from the JSON API and the forms (admins only, same-origin only), every
bad record of an upload named by file and line with nothing imported, and exports in JSONL,
Parquet and a ``datasets`` folder that alignkit's preference readers load."""

from __future__ import annotations

import base64
import io
import json
import zipfile

import pytest
import requests

from alignkit.feedback.store import Store
from tests.web.conftest import ADMIN_TOKEN

pytestmark = pytest.mark.web

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def test_admin_api_creates_projects_and_users_and_uploads_tasks(server):
    url, store = server.url, Store(server.db_url)
    r = requests.post(f"{url}/api/admin/projects", headers=ADMIN, json={
        "name": "api", "aspects": ["helpful", "harmless"], "labels_per_item": 2,
        "guidelines": "# Rules"}, timeout=30)
    assert r.status_code == 201, r.text
    pid = r.json()["id"]
    assert store.project(pid)["guidelines"] == "# Rules"
    r = requests.post(f"{url}/api/admin/projects", headers=ADMIN, json={"name": "api"},
                      timeout=30)
    assert r.status_code == 409
    r = requests.post(f"{url}/api/admin/projects", headers=ADMIN,
                      json={"name": "x", "labels_per_item": "many"}, timeout=30)
    assert r.status_code == 422 and "labels_per_item" in r.json()["error"]

    r = requests.post(f"{url}/api/admin/users", headers=ADMIN,
                      json={"name": "ann", "projects": [pid], "password": "long enough pw"},
                      timeout=30)
    assert r.status_code == 201, r.text
    token = r.json()["token"]
    for projects in ([2**40], ["x"], [0]):
        r = requests.post(f"{url}/api/admin/users", headers=ADMIN,
                          json={"name": "nobody", "projects": projects}, timeout=30)
        assert r.status_code in (404, 422), r.text
    annotator = {"Authorization": f"Bearer {token}"}
    assert requests.get(f"{url}/api/projects", headers=annotator, timeout=30).json()[0][
        "id"] == pid
    # annotators are not admins
    for path, body in (("/api/admin/projects", {"name": "mine"}),
                       ("/api/admin/users", {"name": "friend", "role": "admin"}),
                       (f"/api/admin/projects/{pid}/tasks", {"filename": "a.jsonl",
                                                            "content": "{}"})):
        assert requests.post(url + path, headers=annotator, json=body,
                             timeout=30).status_code == 403

    # an upload with bad records: every one named by file:line, nothing imported
    bad = "\n".join([json.dumps({"prompt": "ok", "chosen": "a", "rejected": "b"}),
                     json.dumps({"prompt": "p", "chosen": 3, "rejected": "b"}),
                     "not json",
                     json.dumps({"prompt": "only a prompt"}),
                     json.dumps({"prompt": "r", "responses": ["a", "b", "c"]})]) + "\n"
    r = requests.post(f"{url}/api/admin/projects/{pid}/tasks", headers=ADMIN,
                      json={"filename": "batch.jsonl", "content": bad}, timeout=30)
    assert r.status_code == 400
    problems = r.json()["problems"]
    assert [q.split(": ")[0] for q in problems] == ["batch.jsonl:2", "batch.jsonl:3"]
    assert store.tasks_of(pid) == []
    # prompt-only records need the CLI's sampler
    r = requests.post(f"{url}/api/admin/projects/{pid}/tasks", headers=ADMIN, json={
        "filename": "p.jsonl", "content": json.dumps({"prompt": "only"}) + "\n"}, timeout=30)
    assert r.status_code == 400 and r.json()["problems"][0].startswith("p.jsonl:1: responses:")
    # CSV and Parquet (base64) that are good
    r = requests.post(f"{url}/api/admin/projects/{pid}/tasks", headers=ADMIN, json={
        "filename": "pairs.csv", "content": "prompt,chosen,rejected\nHi,Hello,No\n"}, timeout=30)
    assert r.status_code == 201 and r.json()["added"] == 1, r.text
    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist([
        {"prompt": "Rank", "responses": ["x", "y", "z"]},
        {"prompt": "", "responses": ["x", "y"]}]), buf)
    r = requests.post(f"{url}/api/admin/projects/{pid}/tasks", headers=ADMIN, json={
        "filename": "r.parquet", "content_base64": base64.b64encode(buf.getvalue()).decode()},
        timeout=30)
    assert r.status_code == 400 and r.json()["problems"][0].startswith("r.parquet:2: ")
    assert len(store.tasks_of(pid)) == 1
    r = requests.post(f"{url}/api/admin/projects/{pid}/tasks", headers=ADMIN,
                      json={"filename": "x.exe", "content": "x"}, timeout=30)
    assert r.status_code == 422 and ".parquet" in r.json()["error"]
    store.dispose()


def test_admin_forms_and_json_writes_are_same_origin_only(server):
    url = server.url
    s = requests.Session()
    s.post(f"{url}/login", data={"token": ADMIN_TOKEN}, timeout=30)
    assert s.get(f"{url}/admin", timeout=30).status_code == 200
    other = f"http://127.0.0.1:{server.port + 1}"
    r = s.post(f"{url}/admin/projects", data={"name": "csrf"}, headers={"Origin": other},
               timeout=30)
    assert r.status_code == 403
    r = s.post(f"{url}/admin/users", data={"name": "csrf", "role": "admin"},
               headers={"Origin": other}, timeout=30)
    assert r.status_code == 403
    # a cookie-signed API write must be JSON (no cross-site form can send that)
    r = s.post(f"{url}/api/admin/projects", data={"name": "csrf"}, timeout=30)
    assert r.status_code == 415
    # same-origin form: created, then the dashboard
    r = s.post(f"{url}/admin/projects", data={"name": "form", "aspects": "a, b"},
               headers={"Origin": url}, timeout=30)
    assert r.status_code == 200 and r.url.endswith("/admin/projects/1")
    r = s.post(f"{url}/admin/users", data={"name": "u1", "role": "annotator",
                                           "projects": ["1"]}, headers={"Origin": url},
               timeout=30)
    assert r.status_code == 200 and 'id="new-token"' in r.text
    assert r.headers["cache-control"] == "no-store"
    # the annotator may not use the admin pages
    token = r.text.split('id="new-token">')[1].split("<")[0]
    a = requests.Session()
    a.post(f"{url}/login", data={"token": token}, timeout=30)
    assert a.get(f"{url}/admin", timeout=30).status_code == 403
    assert a.post(f"{url}/admin/projects", data={"name": "x"}, timeout=30).status_code == 403
    files = {"file": ("t.jsonl", b'{"prompt": "p", "chosen": "a", "rejected": "b"}\n')}
    assert a.post(f"{url}/admin/projects/1/tasks", files=files, timeout=30).status_code == 403
    r = s.post(f"{url}/admin/projects/1/tasks", files=files, timeout=30)
    assert r.status_code == 200 and 'id="upload-result"' in r.text


def test_export_formats_are_read_by_the_preference_readers(server, tmp_path):
    from alignkit.data.preferences import parse_comparison
    from alignkit.data.readers import read_records

    url, store = server.url, Store(server.db_url)
    pid = store.create_project("exp", "", ["helpful"], 1)
    pair, rank = store.add_tasks(pid, [
        {"kind": "pairwise", "prompt": "P", "responses": ["a", "b"]},
        {"kind": "ranking", "prompt": "R", "responses": ["x", "y", "z"]}])
    user, token = store.create_user("e")
    store.add_member(pid, user.id)
    for tid, value in ((pair, {"choices": {"helpful": "B"}}), (rank, {"ranking": [2, 0, 1]})):
        assert requests.post(f"{url}/api/projects/{pid}/labels",
                             headers={"Authorization": f"Bearer {token}"},
                             json={"task_id": tid, "value": value}, timeout=30).ok
    for kind, want in (("pairs", [("b", "a")]), ("rankings", [[2, 0, 1]])):
        for fmt in ("jsonl", "parquet", "datasets"):
            r = requests.get(f"{url}/api/admin/projects/{pid}/export",
                             params={"kind": kind, "format": fmt}, headers=ADMIN, timeout=60)
            assert r.status_code == 200, r.text
            if fmt == "datasets":
                zipfile.ZipFile(io.BytesIO(r.content)).extractall(tmp_path / fmt)
                path = tmp_path / fmt / kind
            else:
                path = tmp_path / f"{kind}.{fmt}"
                path.write_bytes(r.content)
            records = read_records(str(path))
            parsed = [parse_comparison(rec) for rec in records]
            assert len(parsed) == 1
            got = ([(x["chosen"], x["rejected"]) for x in (rec.fields for rec in records)]
                   if kind == "pairs" else [rec.fields["ranking"] for rec in records])
            assert got == want, (kind, fmt)
    r = requests.get(f"{url}/api/admin/projects/{pid}/export", params={"format": "xml"},
                     headers=ADMIN, timeout=30)
    assert r.status_code == 422
    store.dispose()
