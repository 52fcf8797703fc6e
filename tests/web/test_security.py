"""The annotation app against the attacks a probe of it reproduced, over real HTTP on SQLite and
PostgreSQL: login CSRF from another site and label CSRF from another port of the same host are
refused; API writes must be JSON; sessions are server-side (sign-out revokes exactly one, a
password sign-in keeps the personal token and other sessions); cookies are Secure over HTTPS;
pages carry CSP and anti-framing headers; failed sign-ins are rate-limited per name and per
address with Retry-After; an unknown name costs the same password check as a known one."""

from __future__ import annotations

import pytest
import requests

from alignkit.feedback.store import Store

pytestmark = pytest.mark.web

PASSWORD = "long enough passphrase"


@pytest.fixture
def site(server):
    store = Store(server.db_url)
    project = store.create_project("alpha", "# Be kind", ["overall"], 2)
    (task,) = store.add_tasks(project, [{"kind": "pairwise", "prompt": "P",
                                         "responses": ["a", "b"]}])
    user, token = store.create_user("pat", password=PASSWORD)
    store.add_member(project, user.id)
    store.create_user("mallory", password="mallory's own passphrase")
    yield {"store": store, "url": server.url, "project": project, "task": task, "token": token}
    store.dispose()


def sign_in(url: str, name: str = "pat", password: str = PASSWORD, **headers) -> requests.Session:
    s = requests.Session()
    r = s.post(f"{url}/login", data={"name": name, "password": password}, headers=headers,
               timeout=30)
    assert r.status_code == 200 and "alignkit_token" in s.cookies, r.text[:300]
    return s


def test_login_csrf_from_another_site_is_refused(site):
    url = site["url"]
    s = requests.Session()
    r = s.post(f"{url}/login", data={"name": "mallory", "password": "mallory's own passphrase"},
               headers={"Origin": "http://evil.example"}, allow_redirects=False, timeout=30)
    assert r.status_code == 403 and "set-cookie" not in r.headers
    r = s.post(f"{url}/login", data={"name": "mallory", "password": "mallory's own passphrase"},
               headers={"Referer": "http://evil.example/trap.html"}, allow_redirects=False)
    assert r.status_code == 403
    # the app's own login page posts with its own origin
    sign_in(url, "mallory", "mallory's own passphrase", Origin=url)


def test_label_csrf_from_another_port_and_form_posts_are_refused(site):
    url, project, task = site["url"], site["project"], site["task"]
    victim = sign_in(url)
    other_port = url.rsplit(":", 1)[0] + ":1"
    body = {"task_id": task, "value": {"choices": {"overall": "A"}}}
    labels = f"{url}/api/projects/{project}/labels"
    r = victim.post(labels, json=body, headers={"Origin": other_port}, timeout=30)
    assert r.status_code == 403
    r = victim.post(f"{url}/api/projects/{project}/undo", json={},
                    headers={"Origin": other_port}, timeout=30)
    assert r.status_code == 403
    # what an HTML form can send cross-site without a preflight is not JSON: refused too
    r = victim.post(labels, data={"task_id": str(task)}, timeout=30)
    assert r.status_code == 415
    r = victim.post(labels, data='{"task_id": 1}', headers={"Content-Type": "text/plain"})
    assert r.status_code == 415
    assert site["store"].count_labels(project) == 0
    # the same request from the app's own pages goes through
    r = victim.post(labels, json=body, headers={"Origin": url}, timeout=30)
    assert r.status_code == 201, r.text


def test_sessions_are_server_side_and_revocable(site):
    url, token = site["url"], site["token"]
    first, second = sign_in(url), sign_in(url)
    session_token = first.cookies["alignkit_token"]
    assert session_token != token and second.cookies["alignkit_token"] != session_token
    for client in (first, second):
        assert client.get(f"{url}/api/me").json()["name"] == "pat"
    # the personal token (printed when the user was made) still works after both sign-ins
    me = requests.get(f"{url}/api/me", headers={"Authorization": f"Bearer {token}"})
    assert me.json()["name"] == "pat"
    first.post(f"{url}/logout")
    # the signed-out session is dead however it is presented; the other one lives
    assert requests.get(f"{url}/api/me", cookies={"alignkit_token": session_token}
                        ).status_code == 401
    assert requests.get(f"{url}/api/me", headers={"Authorization": f"Bearer {session_token}"}
                        ).status_code == 401
    assert second.get(f"{url}/api/me").status_code == 200
    # a personal token is not a cookie session
    assert requests.get(f"{url}/api/me", cookies={"alignkit_token": token}).status_code == 401


def test_cookies_and_headers(site):
    url = site["url"]
    r = requests.post(f"{url}/login", data={"name": "pat", "password": PASSWORD},
                      allow_redirects=False, timeout=30)
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "secure" not in cookie
    # behind a TLS-terminating proxy on this host (uvicorn trusts its X-Forwarded-Proto)
    r = requests.post(f"{url}/login", data={"name": "pat", "password": PASSWORD},
                      headers={"X-Forwarded-Proto": "https", "Origin": "https://" + url[7:]},
                      allow_redirects=False, timeout=30)
    assert r.status_code == 303 and "; secure" in r.headers["set-cookie"].lower()
    page = sign_in(url).get(f"{url}/projects/{site['project']}")
    assert page.status_code == 200
    assert page.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"


def test_failed_sign_ins_are_rate_limited(site):
    url = site["url"]
    answers = [requests.post(f"{url}/login", data={"name": "pat", "password": f"guess {i}"},
                             timeout=30) for i in range(12)]
    assert [a.status_code for a in answers[:10]] == [200] * 10  # the form again, with an error
    assert all("Unknown token" in a.text for a in answers[:10])
    assert [a.status_code for a in answers[10:]] == [429, 429]
    assert 1 <= int(answers[-1].headers["retry-after"]) <= 300
    # locked out: the right password too, until the window passes
    r = requests.post(f"{url}/login", data={"name": "pat", "password": PASSWORD}, timeout=30)
    assert r.status_code == 429
    # another name from the same address still signs in (the address limit is higher)
    sign_in(url, "mallory", "mallory's own passphrase")


def test_an_unknown_name_costs_a_full_password_check(tmp_path, monkeypatch):
    import hashlib

    from alignkit.feedback import store as store_module

    store = Store(f"sqlite:///{tmp_path / 'a.db'}")
    store.upgrade()
    store.create_user("pat", password=PASSWORD)
    store.create_user("tokenonly")
    calls = []
    real = hashlib.scrypt
    monkeypatch.setattr(store_module.hashlib, "scrypt",
                        lambda *a, **k: calls.append(k["n"]) or real(*a, **k))
    store.user_by_password("pat", PASSWORD)  # the server's first sign-in, whoever it is
    for name in ("pat", "nobody", "tokenonly"):
        calls.clear()
        assert store.user_by_password(name, "wrong") is None
        assert calls == [2 ** 14], name  # one scrypt of the same cost, whoever asks
    store.dispose()


def test_a_connection_whose_headers_never_come_is_closed(tmp_path):
    """Slowloris: a client that opens a connection and never finishes its request headers is
    cut off after --request-timeout."""
    import socket
    import time

    from tests.web.conftest import Server

    srv = Server(f"sqlite:///{tmp_path / 'a.db'}", tmp_path / "server.log", "--request-timeout",
                 "2")
    try:
        for sent in (b"", b"POST /login HTTP/1.1\r\nHost: x\r\n"):
            started = time.time()
            with socket.create_connection(("127.0.0.1", srv.port), timeout=20) as sock:
                sock.sendall(sent)
                assert sock.recv(100) == b""  # closed by the server
            assert 1.5 < time.time() - started < 10
        assert requests.get(srv.url + "/login", timeout=10).status_code == 200
    finally:
        srv.stop()
