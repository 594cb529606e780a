"""The prediction store: one row per prediction in PostgreSQL or SQLite, and the writer that keeps it off the
request path.

``PredictionStore`` is the synchronous database side (schema by Alembic, idempotent writes, feedback, online
accuracy). ``StoreWriter`` buffers records in memory and drains them from an asyncio task, so that a slow or
down database never slows a prediction and never loses one silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import logging
import math
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from alembic import command
from alembic.config import Config
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    DateTime,
    Dialect,
    Engine,
    Float,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    case,
    create_engine,
    func,
    make_url,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, ProgrammingError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

if TYPE_CHECKING:
    from genart.serve import schemas

__all__ = [
    "MIGRATIONS_DIR",
    "Base",
    "Prediction",
    "PredictionRecord",
    "PredictionStore",
    "RecordsRejected",
    "Spool",
    "StoreUnavailable",
    "StoreWriter",
    "alembic_config",
    "mask_url",
    "normalise_url",
]

logger = logging.getLogger("genart.serve.store")

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
# Replicas that start together all call upgrade(); on PostgreSQL one migrates while the others wait here.
_MIGRATION_LOCK_KEY = 0x67656E617274  # "genart"

Label = Literal["ai", "nature"]
Source = Literal["upload", "url"]
LABELS: tuple[str, ...] = ("ai", "nature")


class StoreUnavailable(Exception):
    """The database cannot be reached, or a statement failed: the API answers 503 and the writer retries."""


class RecordsRejected(StoreUnavailable):
    """The database is up but refused these records (a constraint or a value it cannot store).

    Retrying cannot help, so ``StoreWriter`` writes the batch one record at a time and drops only the refused
    ones; everything else keeps flowing.
    """


def normalise_url(url: str) -> str:
    """``postgresql://`` and ``postgres://`` become ``postgresql+psycopg://``: psycopg 3 is our driver."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def mask_url(url: str) -> str:
    """The URL with its password replaced by ``***``: what logs and error messages show."""
    return make_url(url).render_as_string(hide_password=True)


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in and out, also on SQLite, which stores no zone and would return naive times."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


JSONDocument = JSON().with_variant(JSONB(), "postgresql")
# SQLite only autoincrements a column declared exactly INTEGER PRIMARY KEY.
RowId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_name)s",
            "uq": "uq_%(table_name)s_%(column_0_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


class Prediction(Base):
    """One served prediction.

    The schema is owned by the migrations in ``migrations/versions``; keep the two in step
    (``test_migrations_match_the_model`` checks).
    """

    __tablename__ = "predictions"
    __table_args__ = (
        CheckConstraint("source IN ('upload', 'url')", name="source"),
        CheckConstraint("label IN ('ai', 'nature')", name="label"),
        CheckConstraint("feedback_label IN ('ai', 'nature')", name="feedback_label"),
        CheckConstraint("probability >= 0 AND probability <= 1", name="probability"),
    )

    id: Mapped[int] = mapped_column(RowId, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(String(128), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    source: Mapped[str] = mapped_column(String(16))
    url: Mapped[str | None] = mapped_column(Text)
    filename: Mapped[str | None] = mapped_column(Text)
    image_sha256: Mapped[str] = mapped_column(String(64))
    image_bytes: Mapped[int] = mapped_column(BigInteger)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    label: Mapped[str] = mapped_column(String(16))
    probability: Mapped[float] = mapped_column(Float)
    threshold: Mapped[float] = mapped_column(Float)
    model_probs: Mapped[dict[str, float]] = mapped_column(JSONDocument)
    model_versions: Mapped[dict[str, str]] = mapped_column(JSONDocument)
    generator: Mapped[str | None] = mapped_column(String(128))
    generator_prob: Mapped[float | None] = mapped_column(Float)
    latency_ms: Mapped[float] = mapped_column(Float)
    feedback_label: Mapped[str | None] = mapped_column(String(16))
    feedback_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


def _utcnow() -> datetime:
    return datetime.now(UTC)


class PredictionRecord(BaseModel):
    """What the ingress hands to the store for one prediction.

    Frozen: ``StoreWriter`` replaces a buffered record rather than change it, because a write running in a
    thread may be reading it. The feedback fields are here so that feedback given while the record is still
    buffered travels with it.
    """

    model_config = ConfigDict(frozen=True)

    request_id: str = Field(min_length=1, max_length=128)
    created_at: datetime = Field(default_factory=_utcnow)
    source: Source
    url: str | None = None
    filename: str | None = None
    image_sha256: str = Field(max_length=64)
    image_bytes: int = Field(ge=0)
    width: int = Field(ge=0)
    height: int = Field(ge=0)
    label: Label
    probability: float = Field(description="calibrated P(ai) of the ensemble")
    threshold: float
    model_probs: dict[str, float] = Field(default_factory=dict, description="model name -> P(ai)")
    model_versions: dict[str, str] = Field(default_factory=dict, description="model name -> version")
    generator: str | None = Field(None, max_length=128)
    generator_prob: float | None = None
    latency_ms: float
    feedback_label: Label | None = None
    feedback_at: datetime | None = None

    @field_validator("created_at", "feedback_at")
    @classmethod
    def _as_utc(cls, value: datetime | None) -> datetime | None:
        """Naive times are taken as UTC; aware ones are converted, so every stored time compares alike."""
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    @classmethod
    def from_prediction(
        cls, prediction: schemas.Prediction, image_bytes: int, url: str | None = None
    ) -> PredictionRecord:
        """The stored record of an answered prediction: the same data, in the store's columns."""
        return cls(
            request_id=prediction.request_id,
            source=prediction.source,
            url=url,
            filename=prediction.filename,
            image_sha256=prediction.sha256,
            image_bytes=image_bytes,
            width=prediction.width,
            height=prediction.height,
            label=prediction.label,
            probability=prediction.probability,
            threshold=prediction.threshold,
            model_probs={m.name: m.probability for m in prediction.models},
            model_versions=prediction.model_versions,
            generator=prediction.generator,
            generator_prob=prediction.generator_probability,
            latency_ms=prediction.latency_ms,
        )


def alembic_config(url: str | None = None) -> Config:
    """The Alembic configuration, built in code (there is no alembic.ini).

    To author a migration after changing ``Prediction``::

        command.revision(alembic_config("sqlite:///scratch.db"), message="...", autogenerate=True)
    """
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url is not None:
        # ConfigParser interpolates '%', which percent-encoded passwords contain.
        config.set_main_option("sqlalchemy.url", normalise_url(url).replace("%", "%%"))
    return config


def _reason(exc: BaseException) -> str:
    """The driver's own first line (``connection refused``), not SQLAlchemy's wrapper with the SQL."""
    orig = getattr(exc, "orig", None) or exc
    lines = str(orig).strip().splitlines()
    return lines[0] if lines else type(orig).__name__


class PredictionStore:
    """The ``predictions`` table behind a SQLAlchemy engine. Every method is blocking: call it from a thread.

    Database errors surface as ``StoreUnavailable`` (``RecordsRejected`` for records the database refuses),
    with a message that says which database and what to check.
    """

    def __init__(self, url: str, *, connect_timeout_s: float = 3.0) -> None:
        url = normalise_url(url)
        # Safe to log and to show in /health; the engine keeps the real one.
        self.url = mask_url(url)
        connect_args: dict[str, Any] = {}
        backend = make_url(url).get_backend_name()
        if backend == "postgresql":
            # libpq takes whole seconds; without a timeout a blackholed host blocks a connect for minutes.
            connect_args["connect_timeout"] = max(1, math.ceil(connect_timeout_s))
        elif backend == "sqlite":
            # Seconds to wait for another replica's write lock before "database is locked".
            connect_args["timeout"] = connect_timeout_s
        # create_engine does not connect: constructing a store never fails because the database is down.
        self.engine: Engine = create_engine(url, pool_pre_ping=True, connect_args=connect_args)

    def __repr__(self) -> str:
        return f"PredictionStore({self.url!r})"

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextlib.contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        try:
            yield
        except (IntegrityError, DataError) as exc:
            raise RecordsRejected(f"the prediction database refused to {action}: {_reason(exc)}") from exc
        except DBAPIError as exc:
            hint = (
                "Has the schema been migrated (PredictionStore.upgrade)?"
                if isinstance(exc, ProgrammingError) or "no such table" in str(exc)
                else "Check DATABASE_URL and that the database server is running."
            )
            raise StoreUnavailable(f"cannot {action} at {self.url}: {_reason(exc)}. {hint}") from exc

    def upgrade(self) -> None:
        """Bring the schema to the newest migration; a no-op when it is already there."""
        config = alembic_config()
        with self._errors("migrate the prediction database"), self.engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY})
            config.attributes["connection"] = connection
            command.upgrade(config, "head")

    def ping(self) -> None:
        with self._errors("reach the prediction database"), self.engine.connect() as connection:
            connection.execute(text("SELECT 1"))

    def write(self, records: list[PredictionRecord]) -> int:
        """Insert the records in one transaction and return how many rows are new.

        A ``request_id`` already stored is skipped, not an error: after a commit whose acknowledgement was
        lost, the retry must not store the prediction twice.
        """
        if not records:
            return 0
        insert = postgresql_insert if self.dialect == "postgresql" else sqlite_insert
        rows = [record.model_dump() for record in records]
        statement = (
            insert(Prediction)
            .values(rows)
            .on_conflict_do_nothing(index_elements=["request_id"])
            # Counted from RETURNING: an INSERT's rowcount is not reported by every driver (psycopg gives -1).
            .returning(Prediction.id)
        )
        with self._errors("write predictions"), self.engine.begin() as connection:
            return len(connection.execute(statement).all())

    def set_feedback(self, request_id: str, label: str, *, at: datetime | None = None) -> bool:
        """Record the true label a user reports; False when no stored prediction has this ``request_id``."""
        if label not in LABELS:
            raise ValueError(f"feedback label must be one of {LABELS}, not {label!r}")
        statement = (
            update(Prediction)
            .where(Prediction.request_id == request_id)
            .values(feedback_label=label, feedback_at=at or _utcnow())
        )
        with self._errors("record feedback"), self.engine.begin() as connection:
            return connection.execute(statement).rowcount > 0

    def get(self, request_id: str) -> dict[str, Any] | None:
        """The stored prediction as a ``PredictionRecord``-shaped dict, or None."""
        columns = [Prediction.__table__.c[name] for name in PredictionRecord.model_fields]
        statement = select(*columns).where(Prediction.request_id == request_id)
        with self._errors("read a prediction"), self.engine.connect() as connection:
            row = connection.execute(statement).first()
        return None if row is None else dict(row._mapping)

    def count(self) -> int:
        with self._errors("count predictions"), self.engine.connect() as connection:
            return connection.execute(select(func.count()).select_from(Prediction)).scalar_one()

    def online_accuracy(self) -> tuple[float | None, int]:
        """Accuracy on the predictions users gave feedback on, and how many those are (None when none)."""
        correct = func.sum(case((Prediction.feedback_label == Prediction.label, 1), else_=0))
        statement = select(func.count(Prediction.feedback_label), correct)
        with self._errors("compute online accuracy"), self.engine.connect() as connection:
            labelled, right = connection.execute(statement).one()
        return (right / labelled if labelled else None), labelled

    def dispose(self) -> None:
        self.engine.dispose()


class Spool:
    """Predictions not yet in the database, on local disk: SQLite in WAL mode, one row per ``request_id``.

    The ingress puts each record here before it answers, and removes it once the database has accepted it,
    so a ``kill -9`` of the ingress during a database outage loses nothing: the next ingress on this
    machine replays what it finds (writes are idempotent on ``request_id``). ``synchronous=NORMAL`` makes a
    commit survive the process being killed, though not a power cut. One file per database URL
    (:meth:`for_database`), so that a spool is only ever replayed into the database it was meant for.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._connection = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=5
        )
        self._lock = threading.Lock()
        with self._lock:
            self._connection.execute("PRAGMA journal_mode=WAL")
            self._connection.execute("PRAGMA synchronous=NORMAL")
            self._connection.execute(
                "CREATE TABLE IF NOT EXISTS pending (request_id TEXT PRIMARY KEY, record TEXT NOT NULL)"
            )

    @classmethod
    def for_database(cls, data_dir: str | Path, database_url: str) -> Spool:
        digest = hashlib.sha256(normalise_url(database_url).encode()).hexdigest()[:12]
        return cls(Path(data_dir) / f"spool-{digest}.db")

    def put(self, record: PredictionRecord) -> None:
        with self._lock:
            self._connection.execute(
                "INSERT OR REPLACE INTO pending (request_id, record) VALUES (?, ?)",
                (record.request_id, record.model_dump_json()),
            )

    def remove(self, request_ids: list[str]) -> None:
        with self._lock:
            self._connection.executemany(
                "DELETE FROM pending WHERE request_id = ?", [(r,) for r in request_ids]
            )

    def load(
        self, limit: int | None = None, exclude: set[str] | frozenset[str] = frozenset()
    ) -> list[PredictionRecord]:
        """Spooled records, oldest first, skipping ``exclude``; at most ``limit``."""
        with self._lock:
            rows = self._connection.execute(
                "SELECT request_id, record FROM pending ORDER BY rowid"
            ).fetchall()
        records = [
            PredictionRecord.model_validate_json(raw) for request_id, raw in rows if request_id not in exclude
        ]
        return records if limit is None else records[:limit]

    def __len__(self) -> int:
        with self._lock:
            return int(self._connection.execute("SELECT count(*) FROM pending").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._connection.close()


class StoreWriter:
    """Writes records off the request path.

    A bounded in-memory buffer, drained by an asyncio task in batches (each write runs in a thread via
    ``asyncio.to_thread``) and retried with capped exponential backoff while the database is down. A
    record leaves the buffer only after the database has accepted it, and since ``PredictionStore.write``
    skips ``request_id``s it already has, a retry after a commit whose acknowledgement was lost stores
    nothing twice.

    When the buffer is full the new record is dropped: counted, logged at ERROR with its ``request_id``,
    passed to ``on_drop`` and appended as a JSON line to ``spill_path`` if one is set, so nothing is lost
    silently. The same happens to records the database refuses and to what is still buffered when ``close``
    gives up. A spilled line is a ``PredictionRecord``:
    ``store.write([PredictionRecord.model_validate_json(line)])`` replays it, idempotently.

    With a ``spool`` (:class:`Spool`), every submitted record is on disk before ``submit`` returns and leaves
    it only once the database has it (or refused it): ``start`` replays what an earlier writer left there,
    a full buffer leaves records in the spool for later instead of dropping them, and ``close`` keeps what it
    could not write there for the next writer.

    Every method but ``start``, ``flush`` and ``close`` is synchronous and meant for the event loop's thread.
    """

    def __init__(
        self,
        store: PredictionStore,
        *,
        max_buffer: int = 10_000,
        batch_size: int = 64,
        retry_initial_s: float = 0.5,
        retry_max_s: float = 10.0,
        spill_path: str | Path | None = None,
        on_write_error: Callable[[Exception], None] | None = None,
        on_drop: Callable[[PredictionRecord], None] | None = None,
        spool: Spool | None = None,
    ) -> None:
        if max_buffer < 1 or batch_size < 1:
            raise ValueError("max_buffer and batch_size must be at least 1")
        self.store = store
        self.max_buffer = max_buffer
        self.batch_size = batch_size
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.spill_path = Path(spill_path) if spill_path is not None else None
        self.on_write_error = on_write_error
        self.on_drop = on_drop
        self.spool = spool

        self.dropped = 0
        self.deferred = 0  # records left in the spool because the buffer was full
        self.written = 0
        self.write_failures = 0
        self.last_error: str | None = None
        self.healthy = True

        self._buffer: OrderedDict[str, PredictionRecord] = OrderedDict()
        self._in_flight: set[str] = set()
        # Feedback that arrived while its record was being written: applied with set_feedback afterwards.
        self._late_feedback: dict[str, tuple[str, datetime]] = {}
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        # Events bind to a loop, so they are made in start() on the loop that runs the drain.
        self._wakeup: asyncio.Event | None = None
        self._idle: asyncio.Event | None = None
        self._retry_now: asyncio.Event | None = None

    @property
    def depth(self) -> int:
        """Records waiting for the database: buffered, and left in the spool for later."""
        return len(self._buffer) + self.deferred

    @property
    def running(self) -> bool:
        """The drain task is alive: False before ``start``, after ``close``, or if it died."""
        return self._task is not None and not self._task.done()

    @property
    def _busy(self) -> bool:
        return bool(self._buffer or self._late_feedback or self.deferred)

    def submit(self, record: PredictionRecord) -> bool:
        """Buffer a record for writing; never blocks. False when it was dropped (full buffer or closed)."""
        if record.request_id in self._buffer:
            return True
        if self._closed:
            self._drop(record, "the store writer is closed")
            return False
        if self.spool is not None:
            self._spool_put(record)
            if len(self._buffer) >= self.max_buffer or self.deferred:  # keep the spool's order
                self.deferred += 1
                self._wake()
                return True
        if len(self._buffer) >= self.max_buffer:
            self._drop(
                record, f"the write buffer is full ({self.max_buffer} records waiting for the database)"
            )
            return False
        self._buffer[record.request_id] = record
        self._wake()
        return True

    def _wake(self) -> None:
        if self._idle is not None and self._wakeup is not None:
            self._idle.clear()
            self._wakeup.set()

    def _spool_put(self, record: PredictionRecord) -> None:
        assert self.spool is not None
        try:
            self.spool.put(record)
        except sqlite3.Error as exc:  # a full or read-only disk must not fail the request
            logger.error("prediction %s not spooled to %s: %s", record.request_id, self.spool.path, exc)

    async def _refill(self) -> None:
        """Move records left in the spool (buffer full, or an earlier writer's) into the buffer."""
        assert self.spool is not None
        room = self.max_buffer - len(self._buffer)
        records = await asyncio.to_thread(self.spool.load, room, set(self._buffer))
        for record in records:
            self._buffer.setdefault(record.request_id, record)
        remaining = 0 if len(records) < room else await asyncio.to_thread(len, self.spool)
        self.deferred = max(0, remaining - len(self._buffer))

    def pending(self, request_id: str) -> PredictionRecord | None:
        return self._buffer.get(request_id)

    def set_pending_feedback(self, request_id: str, label: str) -> bool:
        """Attach feedback to a record not yet written; False when it is not in the buffer."""
        if label not in LABELS:
            raise ValueError(f"feedback label must be one of {LABELS}, not {label!r}")
        record = self._buffer.get(request_id)
        if record is None:
            return False
        at = _utcnow()
        self._buffer[request_id] = record.model_copy(update={"feedback_label": label, "feedback_at": at})
        if self.spool is not None:
            self._spool_put(self._buffer[request_id])
        if request_id in self._in_flight:
            # The batch being written holds the old copy; without this the feedback would vanish with it.
            self._late_feedback[request_id] = (label, at)
        return True

    async def start(self) -> None:
        """Start draining on the running loop. Calling it again while the task runs does nothing."""
        if self.running:
            return
        self._closed = False
        if self.spool is not None:
            self.deferred = len(self.spool)
            if self.deferred:
                logger.warning("replaying %d predictions spooled in %s", self.deferred, self.spool.path)
        self._wakeup, self._idle, self._retry_now = asyncio.Event(), asyncio.Event(), asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._drain(), name="genart-store-writer")

    async def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until every buffered record is written; True if that happened within ``timeout_s``."""
        if not self._busy:
            return True
        if not self.running or self._idle is None or self._retry_now is None:
            return False
        self._retry_now.set()  # don't sit out a backoff delay the caller is waiting on
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    async def close(self, timeout_s: float = 5.0) -> None:
        """Flush for up to ``timeout_s``, stop the task, and drop (spill) whatever could not be written."""
        await self.flush(timeout_s)
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        leftovers = list(self._buffer.values())
        self._buffer.clear()
        if self.spool is not None and leftovers:
            logger.error(
                "%d predictions not yet stored stay in the spool %s for the next ingress",
                len(leftovers),
                self.spool.path,
            )
            leftovers = []
        for record in leftovers:
            self._drop(record, "the store writer closed before the database accepted it")
        if self._late_feedback:
            logger.error(
                "feedback for %d predictions not stored (writer closed): %s",
                len(self._late_feedback),
                ", ".join(sorted(self._late_feedback)),
            )
            self._late_feedback.clear()

    async def _drain(self) -> None:
        assert self._wakeup is not None and self._idle is not None and self._retry_now is not None
        delay = self.retry_initial_s
        while True:
            if not self._busy:
                self._wakeup.clear()
                self._idle.set()
                await self._wakeup.wait()
                continue
            try:
                await self._write_next()
            except Exception as exc:  # the drain must outlive any error, including our own bugs
                self._failed(exc, delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._retry_now.wait(), delay)
                self._retry_now.clear()
                delay = min(delay * 2, self.retry_max_s)
            else:
                delay = self.retry_initial_s

    async def _write_next(self) -> None:
        if self._late_feedback:
            late = dict(self._late_feedback)
            await asyncio.to_thread(self._apply_feedback, late)
            for request_id, feedback in late.items():
                if self._late_feedback.get(request_id) == feedback:
                    del self._late_feedback[request_id]
        if self.deferred and len(self._buffer) < self.batch_size:
            await self._refill()
        if not self._buffer:
            self.healthy = True
            return
        batch = list(itertools.islice(self._buffer.values(), self.batch_size))
        self._in_flight = {record.request_id for record in batch}
        try:
            refused = await asyncio.to_thread(self._write_batch, batch)
        finally:
            self._in_flight = set()
        for record in batch:
            self._buffer.pop(record.request_id, None)
        if self.spool is not None:
            # A record whose feedback came during the write was put again; its late feedback is still pending.
            await asyncio.to_thread(self.spool.remove, [r.request_id for r in batch])
        self.written += len(batch) - len(refused)
        self.healthy = True
        for record, error in refused:
            self._drop(record, f"the database refused it: {error}")

    def _write_batch(self, batch: list[PredictionRecord]) -> list[tuple[PredictionRecord, RecordsRejected]]:
        """Runs in a thread. One refused record must not hold back the rest: on refusal, go one by one."""
        try:
            self.store.write(batch)
            return []
        except RecordsRejected as exc:
            if len(batch) == 1:
                return [(batch[0], exc)]
        refused = []
        for record in batch:
            try:
                self.store.write([record])
            except RecordsRejected as exc:
                refused.append((record, exc))
        return refused

    def _apply_feedback(self, late: dict[str, tuple[str, datetime]]) -> None:
        for request_id, (label, at) in late.items():
            self.store.set_feedback(request_id, label, at=at)

    def _failed(self, exc: Exception, delay: float) -> None:
        self.write_failures += 1
        self.healthy = False
        self.last_error = str(exc)
        log = logger.warning if isinstance(exc, StoreUnavailable) else logger.exception
        log(
            "prediction store write failed (%d records buffered, retrying in %.1f s): %s",
            len(self._buffer),
            delay,
            exc,
        )
        if self.on_write_error is not None:
            try:
                self.on_write_error(exc)
            except Exception:
                logger.exception("on_write_error callback failed")

    def _drop(self, record: PredictionRecord, reason: str) -> None:
        self.dropped += 1
        spilled = ""
        if self.spill_path is not None:
            try:
                with self.spill_path.open("a", encoding="utf-8") as spill:
                    spill.write(record.model_dump_json() + "\n")
                spilled = f"; spilled to {self.spill_path}"
            except OSError as exc:
                spilled = f"; spilling to {self.spill_path} failed too: {exc}"
        logger.error(
            "prediction %s not stored: %s (%d dropped so far%s)",
            record.request_id,
            reason,
            self.dropped,
            spilled,
        )
        if self.on_drop is not None:
            try:
                self.on_drop(record)
            except Exception:
                logger.exception("on_drop callback failed")
