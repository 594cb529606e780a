"""Fetching images from user URLs: what is refused (SSRF), what fails, and what a good fetch returns.

The test server listens on loopback, which the fetcher refuses by default; tests that should reach it pass
``allow=["127.0.0.1/32"]``. Nothing here needs the internet: public addresses come from a patched resolver.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import ipaddress
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import genart
from genart.serve import fetch
from genart.serve.errors import PayloadTooLarge, URLFetchFailed, URLRefused
from genart.serve.fetch import FetchedImage, check_url, fetch_image
from tests.conftest import image_bytes

LOOPBACK = ["127.0.0.1/32"]
PNG = image_bytes((8, 8))
LARGE_BODY = b"\0" * 300_000
CAP = 100_000
SLOW_RESPONSE_S = 5.0
STREAM_CHUNK = b"x" * 16_384
STREAM_LIMIT = 64 * 2**20


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    release_slow: threading.Event

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the client hung up on purpose
            self._route()

    def _route(self) -> None:
        path = self.path
        if path == "/image.png":
            self._send(200, PNG, "image/png")
        elif path == "/large":
            self._send(200, LARGE_BODY, "application/octet-stream")
        elif path == "/metadata-redirect":
            self._redirect("http://169.254.169.254/latest/meta-data/")
        elif path.startswith("/chain/"):
            left = int(path.removeprefix("/chain/"))
            if left == 0:
                self._send(200, PNG, "image/png")
            else:
                self._redirect(f"/chain/{left - 1}")
        elif path == "/relative-redirect":
            self._redirect("image.png")
        elif path == "/missing":
            self._send(404, b"not here", "text/plain")
        elif path == "/slow":
            self.server.release_slow.wait(SLOW_RESPONSE_S)  # type: ignore[attr-defined]
            self._send(200, PNG, "image/png")
        elif path == "/stream":
            self._stream_forever()
        elif path == "/headers":
            self._send(200, json.dumps(dict(self.headers.items())).encode(), "application/json")
        elif path == "/set-cookie":
            self._redirect("/headers", extra={"Set-Cookie": "session=secret; Path=/"})
        elif path == "/gzip":
            self._send(200, gzip.compress(PNG), "image/png", extra={"Content-Encoding": "gzip"})
        else:
            self._send(404, b"", "text/plain")

    def _send(self, status: int, body: bytes, content_type: str, extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _redirect(self, location: str, extra: dict[str, str] | None = None) -> None:
        self._send(302, b"", "text/plain", extra={"Location": location, **(extra or {})})

    def _stream_forever(self) -> None:
        """A chunked body with no Content-Length that only a byte cap stops (bounded so a bug cannot hang)."""
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        sent = 0
        while sent < STREAM_LIMIT:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(STREAM_CHUNK), STREAM_CHUNK))
            sent += len(STREAM_CHUNK)
        self.wfile.write(b"0\r\n\r\n")


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """Base URL (``http://127.0.0.1:PORT``) of a threaded HTTP server with one endpoint per scenario."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.release_slow = threading.Event()  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.release_slow.set()  # type: ignore[attr-defined]
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def resolve_as(monkeypatch: pytest.MonkeyPatch) -> Callable[..., list[str]]:
    """``resolve_as(name, *ips)``: the resolver answers ``ips`` for ``name``; returns the names looked up."""
    real_getaddrinfo = socket.getaddrinfo
    answers: dict[str, tuple[str, ...]] = {}
    calls: list[str] = []

    def getaddrinfo(host, port, *args, **kwargs):
        if host not in answers:
            return real_getaddrinfo(host, port, *args, **kwargs)
        calls.append(host)
        infos = []
        for ip in answers[host]:
            if ipaddress.ip_address(ip).version == 4:
                infos.append((socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port)))
            else:
                infos.append((socket.AF_INET6, socket.SOCK_STREAM, 6, "", (ip, port, 0, 0)))
        return infos

    monkeypatch.setattr(fetch.socket, "getaddrinfo", getaddrinfo)

    def resolve_as(name: str, *ips: str) -> list[str]:
        answers[name] = ips
        return calls

    return resolve_as


def fetch_sync(url: str, **kwargs) -> FetchedImage:
    kwargs.setdefault("max_bytes", CAP)
    return asyncio.run(fetch_image(url, **kwargs))


# --- refusals: nothing is sent ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "ftp://example.com/image.png",
        "gopher://example.com/",
        "javascript:alert(1)",
        "//example.com/image.png",
        "http://localhost/",
        "http://127.0.0.1/",
        "http://127.1/",
        "http://2130706433/",
        "http://0x7f000001/",
        "http://0x7f.1/",
        "http://[::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://[::ffff:7f00:1]/",
        "http://[64:ff9b::a9fe:a9fe]/",
        "http://[2002:a9fe:a9fe::]/",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/",
        "http://192.168.1.1/",
        "http://172.16.0.1/",
        "http://100.64.0.1/",
        "http://0.0.0.0/",
        "http://224.0.0.1/",
        "http://240.0.0.1/",
        "http://[fe80::1]/",
        "http://[fc00::1]/",
        "http://user:pass@example.com/",
        "http://user@example.com/",
        "http://example.com\\@127.0.0.1/",
        "http://example.com/a b.png",
        "http://example.com/image.png\n",
        "http://example.com/\r\nX-Injected: 1",
        " http://example.com/",
        "http://example.com:0/",
        "http://example.com:99999/",
        "http:///image.png",
        "http://[::1/",
        "http://" + "a" * 3000 + ".example/",
    ],
)
def test_check_url_refuses_urls_that_could_reach_inside(url: str) -> None:
    with pytest.raises(URLRefused) as raised:
        check_url(url)
    assert raised.value.status == 400
    assert raised.value.message


def test_refusal_names_the_address_and_its_kind() -> None:
    with pytest.raises(
        URLRefused, match=r"resolves to 169\.254\.169\.254, a link-local address; only public"
    ):
        check_url("http://169.254.169.254/latest/meta-data/")


def test_refusal_of_a_mapped_address_names_the_address_it_stands_for() -> None:
    with pytest.raises(URLRefused, match=r"IPv4-mapped form of 127\.0\.0\.1 \(a loopback address\)"):
        check_url("http://[::ffff:127.0.0.1]/")


def test_refusal_of_scheme_and_length_say_what_is_allowed() -> None:
    with pytest.raises(URLRefused, match=r"only http:// and https:// URLs are fetched"):
        check_url("file:///etc/passwd")
    with pytest.raises(URLRefused, match=r"3016 characters long; the limit is 2048"):
        check_url("http://" + "a" * 3000 + ".example/")
    with pytest.raises(URLRefused, match=r"a space at position 20; .*%20"):
        check_url("http://example.com/a b.png")


def test_refusals_are_logged_at_info(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="genart.serve.fetch"), pytest.raises(URLRefused):
        check_url("http://10.0.0.1/")
    [record] = [r for r in caplog.records if r.name == "genart.serve.fetch"]
    assert record.levelno == logging.INFO
    assert "10.0.0.1, a private address" in record.getMessage()


def test_unresolvable_host_fails_with_422_not_a_refusal() -> None:
    # The URL is allowed; there is just nothing at it, like an unreachable server.
    with pytest.raises(URLFetchFailed, match=r"could not resolve the host no-such-host\.invalid") as raised:
        check_url("http://no-such-host.invalid/image.png")
    assert raised.value.status == 422


def test_check_url_returns_the_public_addresses_it_resolved(resolve_as) -> None:
    resolve_as("images.example.com", "93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946")
    assert check_url("https://images.example.com/cat.png") == [
        ipaddress.ip_address("93.184.216.34"),
        ipaddress.ip_address("2606:2800:220:1:248:1893:25c8:1946"),
    ]


def test_a_host_with_any_non_public_address_is_refused(resolve_as) -> None:
    resolve_as("mixed.example.com", "93.184.216.34", "10.1.2.3")
    with pytest.raises(URLRefused, match=r"resolves to 10\.1\.2\.3, a private address"):
        check_url("http://mixed.example.com/")


def test_a_public_address_in_ipv4_mapped_form_is_allowed(resolve_as) -> None:
    resolve_as("mapped.example.com", "::ffff:93.184.216.34")
    assert check_url("http://mapped.example.com/") == [ipaddress.ip_address("::ffff:93.184.216.34")]


def test_allow_listed_network_permits_its_addresses_only() -> None:
    assert check_url("http://10.0.0.1/", allow=["10.0.0.0/8"]) == [ipaddress.ip_address("10.0.0.1")]
    assert check_url("http://127.0.0.1:8080/", allow=LOOPBACK) == [ipaddress.ip_address("127.0.0.1")]
    with pytest.raises(URLRefused):
        check_url("http://192.168.1.1/", allow=["10.0.0.0/8"])


def test_allow_listed_host_name_matches_case_insensitively(resolve_as) -> None:
    resolve_as("intranet.example", "10.1.2.3")
    assert check_url("http://Intranet.Example/", allow=["INTRANET.example"]) == [
        ipaddress.ip_address("10.1.2.3")
    ]
    with pytest.raises(URLRefused):
        check_url("http://intranet.example/", allow=["other.example"])


def test_malformed_allow_list_entry_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match=r"10\.0\.0\.0/33"):
        check_url("http://10.0.0.1/", allow=["10.0.0.0/33"])


def test_fetch_refuses_the_test_server_without_the_allow_list(server: str) -> None:
    with pytest.raises(URLRefused, match=r"127\.0\.0\.1, a loopback address"):
        fetch_sync(f"{server}/image.png")


# --- fetching ----------------------------------------------------------------------------------------------


def test_fetches_an_image_from_an_allow_listed_address(server: str) -> None:
    image = fetch_sync(f"{server}/image.png", allow=LOOPBACK)
    assert image == FetchedImage(data=PNG, url=f"{server}/image.png", content_type="image/png")


def test_sends_genart_user_agent_and_the_original_host(server: str) -> None:
    headers = json.loads(fetch_sync(f"{server}/headers", allow=LOOPBACK).data)
    assert headers["User-Agent"] == f"genart/{genart.__version__}"
    assert headers["Host"] == server.removeprefix("http://")
    assert "Authorization" not in headers


def test_cookies_set_during_redirects_are_not_sent(server: str) -> None:
    image = fetch_sync(f"{server}/set-cookie", allow=LOOPBACK)
    assert image.url == f"{server}/headers"
    assert "Cookie" not in json.loads(image.data)


def test_connects_to_the_checked_address_and_never_resolves_again(
    server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # DNS rebinding: the name answers an allowed address first and the metadata address after that.
    port = int(server.rsplit(":", 1)[1])
    answers = iter(["127.0.0.1", "169.254.169.254"])
    looked_up: list[str] = []
    real_getaddrinfo = socket.getaddrinfo

    def rebinding_getaddrinfo(host, *args, **kwargs):
        if host != "rebind.example":
            return real_getaddrinfo(host, *args, **kwargs)
        looked_up.append(host)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (next(answers), port))]

    monkeypatch.setattr(fetch.socket, "getaddrinfo", rebinding_getaddrinfo)
    headers = json.loads(fetch_sync(f"http://rebind.example:{port}/headers", allow=LOOPBACK).data)
    assert headers["Host"] == f"rebind.example:{port}"
    assert looked_up == ["rebind.example"]


def test_allow_listed_host_name_is_fetched_from_its_resolved_address(server: str, resolve_as) -> None:
    port = server.rsplit(":", 1)[1]
    calls = resolve_as("images.internal", "127.0.0.1")
    image = fetch_sync(f"http://images.internal:{port}/image.png", allow=["images.internal"])
    assert image.data == PNG
    assert calls == ["images.internal"]


def test_follows_a_relative_redirect_and_reports_the_final_url(server: str) -> None:
    image = fetch_sync(f"{server}/relative-redirect", allow=LOOPBACK)
    assert image.data == PNG
    assert image.url == f"{server}/image.png"


def test_redirect_to_metadata_address_is_refused(server: str) -> None:
    with pytest.raises(URLRefused, match=r"redirects to a refused URL: .*169\.254\.169\.254, a link-local"):
        fetch_sync(f"{server}/metadata-redirect", allow=LOOPBACK)


def test_follows_redirects_up_to_the_cap(server: str) -> None:
    assert fetch_sync(f"{server}/chain/3", allow=LOOPBACK, max_redirects=3).url == f"{server}/chain/0"


def test_redirect_chain_longer_than_the_cap_fails(server: str) -> None:
    with pytest.raises(URLFetchFailed, match="redirected more than 3 times") as raised:
        fetch_sync(f"{server}/chain/4", allow=LOOPBACK, max_redirects=3)
    assert raised.value.status == 422


def test_error_status_fails_with_the_status(server: str) -> None:
    with pytest.raises(URLFetchFailed, match="answered HTTP 404 Not Found"):
        fetch_sync(f"{server}/missing", allow=LOOPBACK)


def test_slow_server_times_out(server: str) -> None:
    started = time.monotonic()
    with pytest.raises(URLFetchFailed, match=r"timed out after 0\.5 s"):
        fetch_sync(f"{server}/slow", allow=LOOPBACK, timeout_s=0.5)
    assert time.monotonic() - started < 2


def test_unreachable_server_fails() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(URLFetchFailed, match=f"could not connect to 127.0.0.1 port {port}"):
        fetch_sync(f"http://127.0.0.1:{port}/image.png", allow=LOOPBACK)


def test_content_length_over_the_cap_is_refused_before_reading(server: str) -> None:
    with pytest.raises(PayloadTooLarge, match=r"is 293 KiB, over the 97\.7 KiB limit") as raised:
        fetch_sync(f"{server}/large", allow=LOOPBACK, max_bytes=CAP)
    assert raised.value.status == 413


def test_chunked_body_over_the_cap_stops_reading_early(server: str) -> None:
    # The stream runs to 64 MiB; a fetcher that kept reading would time out or return it instead.
    with pytest.raises(PayloadTooLarge, match=r"larger than the 97\.7 KiB limit"):
        fetch_sync(f"{server}/stream", allow=LOOPBACK, max_bytes=CAP, timeout_s=5)


def test_body_exactly_at_the_cap_is_accepted(server: str) -> None:
    assert fetch_sync(f"{server}/image.png", allow=LOOPBACK, max_bytes=len(PNG)).data == PNG
    with pytest.raises(PayloadTooLarge):
        fetch_sync(f"{server}/image.png", allow=LOOPBACK, max_bytes=len(PNG) - 1)


def test_compressed_body_fails_rather_than_being_inflated_past_the_cap(server: str) -> None:
    with pytest.raises(URLFetchFailed, match="Content-Encoding gzip"):
        fetch_sync(f"{server}/gzip", allow=LOOPBACK)


# --- the request that goes on the wire ---------------------------------------------------------------------


def test_https_request_goes_to_the_checked_address_and_verifies_the_real_name() -> None:
    target = fetch._Target(
        url="https://images.example.com/cat.png?size=2",
        scheme="https",
        host="images.example.com",
        port=443,
        path="/cat.png?size=2",
        addresses=[ipaddress.ip_address("93.184.216.34")],
    )
    request = fetch._pinned_request(target, target.addresses[0], timeout_s=5)
    assert str(request.url) == "https://93.184.216.34/cat.png?size=2"
    assert request.headers["Host"] == "images.example.com"
    assert request.extensions["sni_hostname"] == "images.example.com"
    assert "Cookie" not in request.headers and "Authorization" not in request.headers


def test_ipv6_address_is_bracketed_and_a_custom_port_kept_in_host() -> None:
    address = ipaddress.ip_address("2606:2800:220:1:248:1893:25c8:1946")
    target = fetch._Target(
        url="http://images.example.com:8080/",
        scheme="http",
        host="images.example.com",
        port=8080,
        path="/",
        addresses=[address],
    )
    request = fetch._pinned_request(target, address, timeout_s=5)
    assert str(request.url) == "http://[2606:2800:220:1:248:1893:25c8:1946]:8080/"
    assert request.headers["Host"] == "images.example.com:8080"
    assert "sni_hostname" not in request.extensions
