"""Fixtures of the annotation-app tests: every store/app test runs against SQLite AND a real
PostgreSQL server (a throwaway cluster this session starts itself)."""

from __future__ import annotations

import pytest

from tests.web.pg import PostgresCluster


@pytest.fixture(scope="session")
def postgres_cluster():
    cluster = PostgresCluster().start()
    yield cluster
    cluster.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'annotate.db'}"
    return request.getfixturevalue("postgres_cluster").new_database()


ADMIN_TOKEN = "test-admin-token-0123456789"


class Server:
    """``alignkit annotate serve`` as a real subprocess (uvicorn) on a free loopback port."""

    def __init__(self, db_url: str, log_path, *extra: str):
        import os
        import subprocess
        import sys
        import time

        import requests

        from tests.web.pg import free_port

        self.db_url = db_url
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(log_path, "w")
        env = {**os.environ, "ALIGNKIT_ADMIN_TOKEN": ADMIN_TOKEN}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "alignkit", "annotate", "serve", "--db", db_url, "--port",
             str(self.port), *extra], stdout=self.log, stderr=subprocess.STDOUT, env=env)
        deadline = time.time() + 60
        while True:
            assert self.proc.poll() is None, open(log_path).read()
            try:
                if requests.get(self.url + "/login", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert time.time() < deadline, "server did not start:\n" + open(log_path).read()
            time.sleep(0.1)

    def stop(self) -> str:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except Exception:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
        return open(self.log.name).read()


@pytest.fixture
def server(db_url, tmp_path):
    srv = Server(db_url, tmp_path / "server.log")
    yield srv
    log = srv.stop()
    # the server must never have hit an unexpected error (a 500) during the test
    assert "unexpected error" not in log, log
