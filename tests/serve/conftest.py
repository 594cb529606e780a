"""Fixtures for the serving tests: a throwaway PostgreSQL database per session, SQLite files per test."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
from sqlalchemy import create_engine, make_url, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from genart.bench.load import fresh_database as database_on_server
from genart.serve.store import PredictionStore, mask_url


@contextmanager
def fresh_database(prefix: str) -> Iterator[str]:
    """A fresh, empty database ``<prefix>_<random>`` on the server at ``DATABASE_URL``, dropped afterwards
    (:func:`genart.bench.load.fresh_database`, which the load test uses too).

    Fails rather than skips when there is no server: a green run must mean the PostgreSQL tests ran.
    """
    base = os.environ.get("DATABASE_URL")
    if not base or make_url(base).get_backend_name() != "postgresql":
        pytest.fail(
            f"the db tests need DATABASE_URL to point at a PostgreSQL server (it is {base!r}), e.g. "
            "postgresql+psycopg://postgres@127.0.0.1:5432/test; or deselect them with -m 'not db'",
            pytrace=False,
        )
    with ExitStack() as stack:
        try:
            url = stack.enter_context(database_on_server(base, prefix))
        except DBAPIError as exc:
            pytest.fail(
                f"cannot create a test database on {mask_url(base)}: {exc.orig}. "
                "Is PostgreSQL running (pg_isready -h 127.0.0.1)?",
                pytrace=False,
            )
        yield url


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A database for the store tests, which start each test from an empty schema."""
    with fresh_database("genart_test") as url:
        yield url


@pytest.fixture(scope="module")
def pg_app_url() -> Iterator[str]:
    """A database of its own for a module's Serve app, so that its rows never meet the store tests'."""
    with fresh_database("genart_app") as url:
        yield url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'genart.db'}"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.db)])
def store_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """Each store test runs on SQLite and on PostgreSQL, starting from an empty database either way."""
    if request.param == "sqlite":
        yield request.getfixturevalue("sqlite_url")
        return
    url = request.getfixturevalue("pg_url")
    yield url
    engine = create_engine(url, poolclass=NullPool)
    with engine.begin() as connection:
        connection.execute(text("DROP TABLE IF EXISTS predictions, alembic_version"))
    engine.dispose()


@pytest.fixture
def store(store_url: str) -> Iterator[PredictionStore]:
    """A migrated store."""
    store = PredictionStore(store_url)
    store.upgrade()
    yield store
    store.dispose()
