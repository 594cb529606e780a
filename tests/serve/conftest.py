"""Fixtures for the serving tests: a PostgreSQL server (the one at ``DATABASE_URL``, else a throwaway one),
fresh databases on it, SQLite files per test, and the live Serve app (deployed once per test module that asks
for it) with a local image server."""

from __future__ import annotations

import http.server
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from sqlalchemy import create_engine, make_url, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool
from typer.testing import CliRunner

from genart.bench.harness import free_port
from genart.bench.load import fresh_database as database_on_server
from genart.cli import app as cli
from genart.serve.store import PredictionStore, mask_url
from tests.conftest import SAMPLE_DATA, http_server, image_bytes, live_serve_config, untrained_artifact


def postgres_binaries() -> Path | None:
    """The folder of ``initdb`` and ``pg_ctl``: on PATH, else Debian's ``/usr/lib/postgresql/<major>/bin``."""
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).resolve().parent
    debian = sorted(Path("/usr/lib/postgresql").glob("[0-9]*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    return debian[-1].parent if debian else None


@dataclass
class PostgresServer:
    """The server the db tests use, and how to stop and start it (the outage tests do)."""

    url: str
    control: Callable[[str], None]  # "stop" or "start"


def debian_cluster(action: str) -> None:
    """Stop or start the machine's Debian PostgreSQL cluster (pg_ctlcluster; the tests run as root)."""
    if not os.path.isdir("/etc/postgresql"):
        pytest.fail(
            "this test stops and restarts a local Debian PostgreSQL cluster; /etc/postgresql is missing"
        )
    version = sorted(os.listdir("/etc/postgresql"))[-1]
    # Not check=True on start: when stop failed the server is up and start exits non-zero, masking the cause.
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", action],
        check=action == "stop",
        timeout=60,
        capture_output=True,
    )
    if action == "start":
        deadline = time.monotonic() + 30
        while subprocess.run(["pg_isready", "-q", "-h", "127.0.0.1"], check=False).returncode != 0:
            assert time.monotonic() < deadline, "PostgreSQL did not come back within 30 s"
            time.sleep(0.2)


@contextmanager
def throwaway_postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server of its own (initdb in a temporary folder, trust auth, 127.0.0.1 on a free port, no
    Unix socket), stopped and deleted afterwards. PostgreSQL refuses to run as root: as root it runs as the
    ``postgres`` user that Debian's package creates."""
    bindir = postgres_binaries()
    if bindir is None:
        pytest.fail(
            "the db tests need PostgreSQL: set DATABASE_URL to a server, or install the server binaries "
            "(`make install` does, or `apt-get install -y postgresql`) so that the tests start one of their "
            "own; deselect them with -m 'not db'",
            pytrace=False,
        )
    as_user: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="genart-pg-"))
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(root)
            pytest.fail(
                "PostgreSQL cannot run as root, and there is no `postgres` user to run it", pytrace=False
            )
        os.chown(root, owner.pw_uid, owner.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    data, log, port = root / "data", root / "server.log", free_port()

    def run(program: str, *args: str) -> None:
        done = subprocess.run(
            [*as_user, str(bindir / program), *args], capture_output=True, text=True, timeout=120
        )
        if done.returncode != 0:
            output = done.stdout + done.stderr + (log.read_text()[-2000:] if log.exists() else "")
            pytest.fail(f"{program} failed for the throwaway PostgreSQL:\n{output}", pytrace=False)

    def control(action: str) -> None:
        if action == "start":
            options = f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' -c fsync=off"
            run("pg_ctl", "start", "-w", "-D", str(data), "-l", str(log), "-o", options)
        else:
            run("pg_ctl", "stop", "-w", "-m", "fast", "-D", str(data))

    try:
        run("initdb", "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-locale")
        control("start")
        try:
            yield PostgresServer(f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres", control)
        finally:
            control("stop")
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """The PostgreSQL server the db tests use: the machine's at ``DATABASE_URL`` when it is set, otherwise a
    throwaway server of the tests' own (:func:`throwaway_postgres`), started only when a db test asks."""
    base = os.environ.get("DATABASE_URL")
    if base:
        yield PostgresServer(base, debian_cluster)
        return
    with throwaway_postgres() as server:
        yield server


@contextmanager
def fresh_database(base: str, prefix: str) -> Iterator[str]:
    """A fresh, empty database ``<prefix>_<random>`` on the server at ``base``, dropped afterwards
    (:func:`genart.bench.load.fresh_database`, which the load test uses too).

    Fails rather than skips when there is no server: a green run must mean the PostgreSQL tests ran.
    """
    if make_url(base).get_backend_name() != "postgresql":
        pytest.fail(
            f"the db tests need DATABASE_URL to point at a PostgreSQL server (it is {base!r}), e.g. "
            "postgresql+psycopg://postgres@127.0.0.1:5432/test; unset it to let the tests start their own, "
            "or deselect them with -m 'not db'",
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
def pg_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A database for the store tests, which start each test from an empty schema."""
    with fresh_database(postgres_server.url, "genart_test") as url:
        yield url


@pytest.fixture(scope="module")
def pg_app_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A database of its own for a module's Serve app, so that its rows never meet the store tests'."""
    with fresh_database(postgres_server.url, "genart_app") as url:
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


API_KEY = "test-key-123"
MAX_UPLOAD = 2_000_000
MAX_BATCH = 4


@dataclass
class Live:
    api: str
    config_path: Path
    config: dict[str, Any]
    dashboard_port: int
    metrics: str
    pg_url: str
    artifacts: dict[str, Path]

    def client(self, key: str | None = API_KEY) -> httpx.Client:
        return httpx.Client(base_url=self.api, headers={"X-API-Key": key} if key else {}, timeout=60)

    def stored(self) -> int:
        engine = create_engine(self.pg_url, poolclass=NullPool)
        try:
            with engine.connect() as connection:
                return connection.execute(text("SELECT count(*) FROM predictions")).scalar_one()
        finally:
            engine.dispose()

    def settled(self, timeout_s: float = 60) -> int:
        """The stored count once the app's buffer is empty (earlier tests' writes have landed)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            store = httpx.get(f"{self.api}/health", timeout=30).json()["parts"]["store"]["detail"]
            if store["buffered"] == 0:
                break
            time.sleep(0.3)
        return self.stored()

    def wait_stored(self, expected: int, timeout_s: float = 60) -> int:
        deadline = time.monotonic() + timeout_s
        count = -1
        while time.monotonic() < deadline:
            try:
                count = self.stored()
            except Exception:
                count = -1
            if count >= expected:
                return count
            time.sleep(0.5)
        return count

    def redeploy(self) -> None:
        self.config_path.write_text(yaml.safe_dump(self.config))
        result = CliRunner().invoke(
            cli,
            ["serve", "up", "--config", str(self.config_path), "--dashboard-port", str(self.dashboard_port),
             "--timeout", "180"],
        )  # fmt: skip
        assert result.exit_code == 0, result.output


@pytest.fixture(scope="module")
def live(ray_cluster: dict[str, int], pg_app_url: str, tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("serve")
    artifacts = {
        "detector": untrained_artifact(root, "detector", "tiny", 0, threshold=0.4, trained_on=SAMPLE_DATA),
        "attributor": untrained_artifact(
            root, "attributor", "tiny_residual", 1, threshold=0.6, input_size=48,
            classes=["nature", "imagenet_ai_0419_biggan", "imagenet_glide"],
        ),
        "detector_v2": untrained_artifact(root, "detector_v2", "tiny", 2, threshold=0.3, version="7"),
    }  # fmt: skip
    http_port = free_port()
    env = {
        "DATABASE_URL": pg_app_url,
        "GENART_API_KEY": API_KEY,
        "GENART_LOG_DIR": str(root / "logs"),
        "GENART_DATA_DIR": str(root / "data"),
    }
    config = live_serve_config(
        http_port, env, artifacts, timeout_s=30, max_upload_bytes=MAX_UPLOAD, max_batch_images=MAX_BATCH,
        url_allowlist=["127.0.0.1/32"], url_timeout_s=3,
    )  # fmt: skip
    config["logging_config"] = {"encoding": "JSON"}
    config["applications"][0]["deployments"][2]["user_config"]["max_batch_size"] = 8
    path = root / "serve_config.yaml"
    live = Live(
        api=f"http://127.0.0.1:{http_port}",
        config_path=path,
        config=config,
        dashboard_port=ray_cluster["dashboard_port"],
        metrics=f"http://127.0.0.1:{ray_cluster['metrics_port']}/metrics",
        pg_url=pg_app_url,
        artifacts=artifacts,
    )
    live.redeploy()
    try:
        yield live
    finally:
        CliRunner().invoke(cli, ["serve", "down", "--keep-ray", "--dashboard-port", str(live.dashboard_port)])


@pytest.fixture(scope="module")
def image_server() -> Any:
    """A local web server: /img.png is an image, /to-metadata redirects to the cloud metadata address."""
    png = image_bytes((64, 64), seed=5)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/img.png":
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(png)))
                self.end_headers()
                self.wfile.write(png)
            else:
                self.send_response(302)
                self.send_header("Location", "http://169.254.169.254/latest/meta-data/")
                self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    with http_server(Handler) as url:
        yield url
