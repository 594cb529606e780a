"""The prediction store and its writer: what gets stored, exactly once, and what happens while the database
is away."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect

from genart.serve.store import (
    Base,
    PredictionRecord,
    PredictionStore,
    RecordsRejected,
    Spool,
    StoreUnavailable,
    StoreWriter,
    alembic_config,
    normalise_url,
)
from tests.serve.conftest import PostgresServer, fresh_database, throwaway_postgres


def record(i: int, **fields) -> PredictionRecord:
    values = {
        "request_id": f"req-{i}",
        "source": "upload",
        "filename": f"{i}.png",
        "image_sha256": hashlib.sha256(str(i).encode()).hexdigest(),
        "image_bytes": 1234,
        "width": 64,
        "height": 48,
        "label": "ai",
        "probability": 0.91,
        "threshold": 0.5,
        "model_probs": {"lite0": 0.93, "b3": 0.88},
        "model_versions": {"lite0": "3", "b3": "1"},
        "latency_ms": 12.5,
    }
    return PredictionRecord(**{**values, **fields})


async def eventually(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


# -- URLs and records ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgresql://u:p@db:5432/genart", "postgresql+psycopg://u:p@db:5432/genart"),
        ("postgres://u@db/genart", "postgresql+psycopg://u@db/genart"),
        ("postgresql+psycopg://u@db/genart", "postgresql+psycopg://u@db/genart"),
        ("sqlite:///genart.db", "sqlite:///genart.db"),
    ],
)
def test_normalise_url_uses_psycopg_for_plain_postgresql_urls(given: str, expected: str) -> None:
    assert normalise_url(given) == expected


def test_store_masks_the_password_in_its_url_and_repr() -> None:
    store = PredictionStore("postgresql://genart:s3cr%40t@db:5432/genart")
    assert store.url == "postgresql+psycopg://genart:***@db:5432/genart"
    assert "s3cr" not in repr(store)
    assert store.engine.url.password == "s3cr@t"


def test_record_times_are_utc_whatever_zone_they_came_in() -> None:
    assert record(1).created_at.tzinfo == UTC
    naive = record(1, created_at=datetime(2025, 1, 2, 3, 4, 5))
    assert naive.created_at == datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    shifted = record(1, created_at=datetime(2025, 1, 2, 5, 4, 5, tzinfo=timezone(timedelta(hours=2))))
    assert shifted.created_at == naive.created_at and shifted.created_at.tzinfo == UTC


# -- PredictionStore, on SQLite and PostgreSQL ---------------------------------------------------------------


def test_upgrade_creates_the_table_and_is_idempotent(store_url: str) -> None:
    store = PredictionStore(store_url)
    try:
        store.upgrade()
        store.upgrade()
        inspector = inspect(store.engine)
        assert "predictions" in inspector.get_table_names()
        assert "ix_predictions_created_at" in {ix["name"] for ix in inspector.get_indexes("predictions")}
        head = ScriptDirectory.from_config(alembic_config()).get_current_head()
        with store.engine.connect() as connection:
            assert MigrationContext.configure(connection).get_current_revision() == head
        assert store.count() == 0
    finally:
        store.dispose()


def test_migrations_match_the_model(store: PredictionStore) -> None:
    with store.engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []


@pytest.mark.parametrize("store_url", [pytest.param("postgresql", marks=pytest.mark.db)], indirect=True)
def test_replicas_upgrading_at_once_do_not_collide(store_url: str) -> None:
    stores = [PredictionStore(store_url) for _ in range(4)]
    try:
        with ThreadPoolExecutor(len(stores)) as pool:
            list(pool.map(PredictionStore.upgrade, stores))
        assert stores[0].count() == 0
    finally:
        for store in stores:
            store.dispose()


def test_write_then_get_round_trips_every_field(store: PredictionStore) -> None:
    written = record(
        1,
        source="url",
        url="https://example.com/a.png",
        filename=None,
        created_at=datetime(2025, 1, 2, 3, 4, 5, 678000, tzinfo=timezone(timedelta(hours=2))),
        generator="midjourney",
        generator_prob=0.7,
    )
    assert store.write([written]) == 1
    row = store.get("req-1")
    assert row == written.model_dump()
    assert row["model_probs"] == {"lite0": 0.93, "b3": 0.88}
    assert row["created_at"].utcoffset() == timedelta(0)
    assert store.get("req-unknown") is None


def test_write_is_idempotent_on_request_id(store: PredictionStore) -> None:
    assert store.write([record(1), record(2)]) == 2
    assert store.write([record(2), record(3)]) == 1
    assert store.write([record(3, label="nature")]) == 0
    assert store.write([]) == 0
    assert store.count() == 3
    assert store.get("req-3")["label"] == "ai", "the first write of a request_id wins"


def test_write_refuses_the_whole_batch_when_one_record_breaks_a_constraint(store: PredictionStore) -> None:
    with pytest.raises(RecordsRejected, match="probability"):
        store.write([record(1), record(2, probability=1.5)])
    assert store.count() == 0


def test_set_feedback_records_the_label_and_returns_false_for_an_unknown_id(store: PredictionStore) -> None:
    store.write([record(1)])
    assert store.set_feedback("req-1", "nature")
    row = store.get("req-1")
    assert row["feedback_label"] == "nature"
    assert abs(row["feedback_at"] - datetime.now(UTC)) < timedelta(minutes=1)
    assert not store.set_feedback("req-unknown", "ai")
    with pytest.raises(ValueError, match="feedback label"):
        store.set_feedback("req-1", "cat")


def test_online_accuracy_counts_only_predictions_with_feedback(store: PredictionStore) -> None:
    assert store.online_accuracy() == (None, 0)
    store.write([record(i) for i in range(5)])
    assert store.online_accuracy() == (None, 0)
    for request_id, truth in [("req-0", "ai"), ("req-1", "ai"), ("req-2", "nature")]:
        store.set_feedback(request_id, truth)
    accuracy, labelled = store.online_accuracy()
    assert labelled == 3
    assert accuracy == pytest.approx(2 / 3)


def test_ping_and_write_raise_store_unavailable_when_the_server_is_unreachable() -> None:
    store = PredictionStore("postgresql+psycopg://postgres:secret@127.0.0.1:1/x", connect_timeout_s=1)
    with pytest.raises(StoreUnavailable, match=r"127\.0\.0\.1:1") as raised:
        store.ping()
    assert "secret" not in str(raised.value)
    with pytest.raises(StoreUnavailable):
        store.write([record(1)])
    store.dispose()


def test_writing_before_upgrade_says_to_migrate(sqlite_url: str) -> None:
    store = PredictionStore(sqlite_url)
    with pytest.raises(StoreUnavailable, match="upgrade"):
        store.write([record(1)])
    store.dispose()


# -- StoreWriter ---------------------------------------------------------------------------------------------


class FakeStore:
    """Stands in for PredictionStore: refuses every write while ``down``, remembers each insert."""

    def __init__(self) -> None:
        self.down = False
        self.rows: dict[str, PredictionRecord] = {}
        self.inserted: list[str] = []
        self.batches: list[int] = []

    def write(self, records: list[PredictionRecord]) -> int:
        self.batches.append(len(records))
        if self.down:
            raise StoreUnavailable("connection refused")
        new = [r for r in records if r.request_id not in self.rows]
        self.rows.update({r.request_id: r for r in new})
        self.inserted += [r.request_id for r in new]
        return len(new)

    def set_feedback(self, request_id: str, label: str, *, at: datetime | None = None) -> bool:
        return False


class LosesAcknowledgements(PredictionStore):
    """Commits a write, then reports it failed: the connection dropped before the commit was acknowledged."""

    lost = 2

    def write(self, records: list[PredictionRecord]) -> int:
        inserted = super().write(records)
        if self.lost:
            self.lost -= 1
            raise StoreUnavailable("server closed the connection unexpectedly")
        return inserted


class GatedStore(PredictionStore):
    """Holds each write until ``release`` is set, so a test can act while a batch is in flight."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.entered, self.release = threading.Event(), threading.Event()

    def write(self, records: list[PredictionRecord]) -> int:
        self.entered.set()
        assert self.release.wait(5)
        return super().write(records)


def migrated(store: PredictionStore) -> PredictionStore:
    store.upgrade()
    return store


def test_writer_writes_records_in_batches() -> None:
    store = FakeStore()
    writer = StoreWriter(store, batch_size=3)

    async def main() -> None:
        assert not writer.running
        await writer.start()
        await writer.start()
        assert writer.running
        for i in range(7):
            assert writer.submit(record(i))
        assert writer.depth == 7
        assert await writer.flush(timeout_s=5)

    asyncio.run(main())
    assert store.batches == [3, 3, 1]
    assert (writer.written, writer.depth, writer.write_failures, writer.healthy) == (7, 0, 0, True)


def test_writer_keeps_records_buffered_while_the_database_is_down_and_writes_each_once() -> None:
    store = FakeStore()
    store.down = True
    errors: list[Exception] = []
    writer = StoreWriter(
        store, batch_size=4, retry_initial_s=0.01, retry_max_s=0.05, on_write_error=errors.append
    )

    async def main() -> None:
        await writer.start()
        for i in range(10):
            writer.submit(record(i))
        await eventually(lambda: writer.write_failures >= 3)
        assert writer.depth == 10 and not writer.healthy
        assert writer.pending("req-9") is not None
        store.down = False
        assert await writer.flush(timeout_s=5)

    asyncio.run(main())
    assert sorted(store.inserted) == sorted(f"req-{i}" for i in range(10))
    assert writer.written == 10 and writer.dropped == 0 and writer.healthy
    assert len(errors) == writer.write_failures >= 3
    assert "connection refused" in writer.last_error


def test_writer_retry_after_a_lost_acknowledgement_never_duplicates(sqlite_url: str) -> None:
    store = migrated(LosesAcknowledgements(sqlite_url))
    writer = StoreWriter(store, batch_size=2, retry_initial_s=0.01)

    async def main() -> None:
        await writer.start()
        for i in range(5):
            writer.submit(record(i))
        assert await writer.flush(timeout_s=5)

    asyncio.run(main())
    assert store.count() == 5
    assert writer.written == 5 and writer.write_failures == 2


def test_a_full_buffer_drops_the_newest_record_counts_it_calls_on_drop_and_spills_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    dropped: list[PredictionRecord] = []
    spill = tmp_path / "spill" / "dropped.jsonl"
    spill.parent.mkdir()
    writer = StoreWriter(FakeStore(), max_buffer=2, spill_path=spill, on_drop=dropped.append)
    with caplog.at_level(logging.ERROR, logger="genart.serve.store"):
        assert writer.submit(record(1)) and writer.submit(record(2))
        assert not writer.submit(record(3))
    assert writer.dropped == 1 and writer.depth == 2
    assert [r.request_id for r in dropped] == ["req-3"]
    assert writer.pending("req-1") is not None and writer.pending("req-3") is None
    assert [PredictionRecord.model_validate_json(line) for line in spill.read_text().splitlines()] == dropped
    assert "req-3" in caplog.text


def test_feedback_for_a_buffered_record_is_written_with_it(sqlite_url: str) -> None:
    store = migrated(PredictionStore(sqlite_url))
    writer = StoreWriter(store)
    writer.submit(record(1))
    assert writer.pending("req-1").feedback_label is None
    assert writer.set_pending_feedback("req-1", "nature")
    assert writer.pending("req-1").feedback_label == "nature"
    assert not writer.set_pending_feedback("req-unknown", "ai")

    async def main() -> None:
        await writer.start()
        assert await writer.flush(timeout_s=5)

    asyncio.run(main())
    assert writer.pending("req-1") is None
    assert store.get("req-1")["feedback_label"] == "nature"


def test_feedback_given_while_its_record_is_being_written_is_applied_afterwards(sqlite_url: str) -> None:
    store = migrated(GatedStore(sqlite_url))
    writer = StoreWriter(store)

    async def main() -> None:
        await writer.start()
        writer.submit(record(1))
        assert await asyncio.to_thread(store.entered.wait, 5)
        assert writer.set_pending_feedback("req-1", "nature")
        store.release.set()
        assert await writer.flush(timeout_s=5)

    asyncio.run(main())
    assert store.get("req-1")["feedback_label"] == "nature"


def test_a_record_the_database_refuses_is_dropped_without_holding_back_the_others(
    sqlite_url: str, tmp_path: Path
) -> None:
    store = migrated(PredictionStore(sqlite_url))
    writer = StoreWriter(store, spill_path=tmp_path / "dropped.jsonl")

    async def main() -> None:
        await writer.start()
        for rec in (record(1), record(2, probability=1.5), record(3)):
            writer.submit(rec)
        assert await writer.flush(timeout_s=5)

    asyncio.run(main())
    assert store.count() == 2 and store.get("req-2") is None
    assert writer.written == 2 and writer.dropped == 1
    assert "req-2" in (tmp_path / "dropped.jsonl").read_text()


def test_close_writes_everything_buffered_then_refuses_new_records(sqlite_url: str) -> None:
    store = migrated(PredictionStore(sqlite_url))
    writer = StoreWriter(store)

    async def main() -> None:
        await writer.start()
        for i in range(5):
            writer.submit(record(i))
        await writer.close()
        assert not writer.running

    asyncio.run(main())
    assert store.count() == 5 and writer.dropped == 0
    assert not writer.submit(record(9)) and writer.dropped == 1


def test_close_spills_what_the_database_never_accepted(tmp_path: Path) -> None:
    store = FakeStore()
    store.down = True
    writer = StoreWriter(store, retry_initial_s=0.01, spill_path=tmp_path / "dropped.jsonl")

    async def main() -> None:
        await writer.start()
        for i in range(3):
            writer.submit(record(i))
        await writer.close(timeout_s=0.2)

    asyncio.run(main())
    assert writer.dropped == 3 and writer.depth == 0
    assert len((tmp_path / "dropped.jsonl").read_text().splitlines()) == 3


# -- a real outage -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("store_url", [pytest.param("postgresql", marks=pytest.mark.db)], indirect=True)
def test_writer_loses_nothing_while_postgresql_restarts(
    store_url: str, postgres_server: PostgresServer
) -> None:
    store = migrated(PredictionStore(store_url, connect_timeout_s=1))
    writer = StoreWriter(store, batch_size=8, retry_initial_s=0.1, retry_max_s=0.5)

    async def main() -> None:
        await writer.start()
        for i in range(10):
            writer.submit(record(i))
        assert await writer.flush(timeout_s=10)
        try:
            await asyncio.to_thread(postgres_server.control, "stop")
            for i in range(10, 40):
                writer.submit(record(i))
            await eventually(lambda: writer.write_failures >= 2, timeout_s=10)
            assert writer.depth == 30 and not writer.healthy
        finally:
            await asyncio.to_thread(postgres_server.control, "start")
        assert await writer.flush(timeout_s=15)
        await writer.close()

    try:
        asyncio.run(main())
        assert store.count() == 40
        assert writer.written == 40 and writer.dropped == 0 and writer.healthy
    finally:
        store.dispose()


def test_a_killed_writer_leaves_its_records_in_the_spool_and_the_next_one_stores_them(tmp_path: Path) -> None:
    """The kill -9 case: the database is down, the process dies with records buffered; nothing is lost."""
    store = FakeStore()
    store.down = True
    first = StoreWriter(store, retry_initial_s=0.01, retry_max_s=0.05, spool=Spool(tmp_path / "spool.db"))

    async def killed() -> None:
        await first.start()
        for i in range(5):
            first.submit(record(i))
        first.set_pending_feedback("req-2", "nature")
        await eventually(lambda: first.write_failures >= 1)
        # No close(): the process is gone and only the spool file survives it.

    asyncio.run(killed())
    assert store.inserted == [] and len(Spool(tmp_path / "spool.db")) == 5

    store.down = False
    spool = Spool(tmp_path / "spool.db")
    second = StoreWriter(store, spool=spool)

    async def next_ingress() -> None:
        await second.start()
        assert await second.flush(timeout_s=5)

    asyncio.run(next_ingress())
    assert sorted(store.inserted) == [f"req-{i}" for i in range(5)]
    assert store.rows["req-2"].feedback_label == "nature" and len(spool) == 0


def test_with_a_spool_a_full_buffer_defers_instead_of_dropping(tmp_path: Path) -> None:
    store = FakeStore()
    store.down = True
    dropped: list[PredictionRecord] = []
    writer = StoreWriter(
        store, max_buffer=2, batch_size=2, retry_initial_s=0.01, retry_max_s=0.05,
        spool=Spool(tmp_path / "spool.db"), on_drop=dropped.append,
    )  # fmt: skip

    async def main() -> None:
        await writer.start()
        for i in range(7):
            assert writer.submit(record(i))
        assert writer.depth == 7 and writer.deferred == 5 and dropped == []
        store.down = False
        assert await writer.flush(timeout_s=5)

    asyncio.run(main())
    assert store.inserted == [f"req-{i}" for i in range(7)]  # in the order they came
    assert writer.dropped == 0 and len(writer.spool) == 0


def test_one_spool_per_database(tmp_path: Path) -> None:
    a = Spool.for_database(tmp_path, "sqlite:///a.db")
    assert (
        a.path
        == Spool.for_database(tmp_path, "sqlite:///a.db").path
        != Spool.for_database(tmp_path, "sqlite:///b.db").path
    )
    assert a.path.parent == tmp_path


@pytest.mark.db
def test_throwaway_postgres_serves_a_store_and_is_gone_afterwards() -> None:
    """The server `make test` starts when DATABASE_URL is unset (CI sets it: this test runs one there)."""
    with throwaway_postgres() as server, fresh_database(server.url, "genart_throwaway") as url:
        store = PredictionStore(url)
        store.upgrade()
        store.write([record(1)])
        assert store.get("req-1") is not None
        store.dispose()
    with pytest.raises(StoreUnavailable):
        PredictionStore(server.url, connect_timeout_s=1).ping()
