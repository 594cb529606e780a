"""Fixtures of the benchmark tests: a tiny local HTTP server to drive load at."""

from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler

import pytest

from tests.conftest import http_server


class _Answer(BaseHTTPRequestHandler):
    """200 to a POST whose path says ``ok``, 503 to any other; 200 to every GET."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200 if "ok" in self.path else 503)
        self.send_header("content-length", "0")
        self.end_headers()

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    """The URL of a local server that answers POSTs to ``.../ok`` with 200 and other POSTs with 503."""
    with http_server(_Answer) as url:
        yield url
