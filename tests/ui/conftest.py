"""Fixtures for the web demo: one real Serve app with tiny untrained models, deployed once per session with
`genart serve up` and shared by the AppTest and browser tests; a local image web server; the page itself
under Streamlit's AppTest, pointed at whichever API a test names."""

from __future__ import annotations

import http.server
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from genart.bench.harness import free_port
from genart.serve.client import GenartClient
from genart.ui import PAGE
from tests.conftest import SAMPLE_DATA, http_server, image_bytes, live_serve_config, untrained_artifact

API_KEY = "ui-test-key"
MAX_BATCH = 4  # smaller than the page's chunk, so that the page must split a refused batch
DOWN = "http://127.0.0.1:9"  # the discard port: nothing listens there


@dataclass(frozen=True)
class LiveApi:
    url: str
    key: str

    def client(self) -> GenartClient:
        return GenartClient(self.url, api_key=self.key, timeout_s=120)


@pytest.fixture(scope="session")
def live_api(ray_cluster: dict[str, int], tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveApi]:
    """The genart Serve app on the session's Ray cluster: a detector and an attributor, SQLite store, an
    API key, and URL fetching allowed to 127.0.0.1 so that the image server below can be reached."""
    from genart.cli import app as cli

    root = tmp_path_factory.mktemp("ui-serve")
    artifacts = {
        "detector": untrained_artifact(root, "detector", "tiny", 0, threshold=0.4, trained_on=SAMPLE_DATA),
        "attributor": untrained_artifact(
            root, "attributor", "tiny_residual", 1, threshold=0.6, input_size=48,
            classes=["nature", "imagenet_ai_0419_biggan", "imagenet_glide"],
        ),
    }  # fmt: skip
    port = free_port()
    env = {
        "DATABASE_URL": f"sqlite:///{root / 'genart.db'}",
        "GENART_API_KEY": API_KEY,
        "GENART_DATA_DIR": str(root / "data"),
    }
    config = live_serve_config(
        port, env, artifacts, timeout_s=60, max_batch_images=MAX_BATCH, url_allowlist=["127.0.0.1/32"],
        url_timeout_s=5,
    )  # fmt: skip
    path = root / "serve_config.yaml"
    path.write_text(yaml.safe_dump(config))
    dashboard = str(ray_cluster["dashboard_port"])
    runner = CliRunner()
    result = runner.invoke(
        cli, ["serve", "up", "--config", str(path), "--dashboard-port", dashboard, "--timeout", "240"]
    )
    assert result.exit_code == 0, result.output
    try:
        yield LiveApi(f"http://127.0.0.1:{port}", API_KEY)
    finally:
        runner.invoke(cli, ["serve", "down", "--keep-ray", "--dashboard-port", dashboard])


@pytest.fixture(scope="session")
def image_server() -> Iterator[str]:
    """A local web server with one image, at /img.png."""
    png = image_bytes((72, 56), seed=5)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            found = self.path == "/img.png"
            self.send_response(200 if found else 404)
            self.send_header("Content-Type", "image/png" if found else "text/plain")
            body = png if found else b"not here"
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    with http_server(Handler) as url:
        yield url


@pytest.fixture
def page(monkeypatch: pytest.MonkeyPatch) -> Callable[..., Any]:
    """``page(api, key=None, timeout_s=60)``: the demo under AppTest, run once, pointed at ``api``."""
    from streamlit.testing.v1 import AppTest

    def open_page(api: str, key: str | None = None, timeout_s: float = 60) -> AppTest:
        monkeypatch.setenv("GENART_API_URL", api)
        monkeypatch.setenv("GENART_API_TIMEOUT_S", str(timeout_s))
        if key:
            monkeypatch.setenv("GENART_API_KEY", key)
        else:
            monkeypatch.delenv("GENART_API_KEY", raising=False)
        at = AppTest.from_file(str(PAGE), default_timeout=max(120, 4 * timeout_s))
        at.run()
        assert not at.exception, at.exception
        return at

    return open_page


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> dict[str, bytes]:
    """What the page handed to Streamlit's media store (download buttons, images), by the URL it serves it
    at: AppTest keeps the store only for the length of a run."""
    from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage

    files: dict[str, bytes] = {}
    original = MemoryMediaFileStorage.load_and_get_id

    def recording(self: MemoryMediaFileStorage, *args: Any, **kwargs: Any) -> str:
        file_id = original(self, *args, **kwargs)
        files[self.get_url(file_id)] = self.get_file(file_id).content
        return file_id

    monkeypatch.setattr(MemoryMediaFileStorage, "load_and_get_id", recording)
    return files


def page_text(at: Any) -> str:
    """Everything the page says, main area and sidebar, as one string."""
    kinds = ("title", "markdown", "caption", "error", "warning", "success", "info", "html")
    return "\n".join(str(e.value) for kind in kinds for e in getattr(at, kind))


def shown_verdict(text: str) -> tuple[str, str]:
    """(label, P(ai) as shown) from the verdict card's HTML."""
    found = re.search(r'data-label="(\w+)" data-probability="([0-9.]+)"', text)
    assert found, f"no verdict on the page:\n{text[:2000]}"
    return found.group(1), found.group(2)
