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
