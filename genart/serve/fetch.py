"""Fetching an image from a user-supplied URL without letting the URL reach into our own network (SSRF).

Before anything is sent, a URL must be http(s), carry no credentials, and every address its host resolves to
must be public, unless an operator allow-listed the host name or the network. The request then goes to the
address that was checked, not to the name again, so a DNS answer that changes between check and connect (DNS
rebinding) cannot move it; TLS still verifies the real host name through SNI. Redirects are followed by hand
so that every hop passes the same check, and the body is streamed against a byte cap.

A host name that does not resolve is a failed fetch (``URLFetchFailed``, 422), not a refusal: the URL was
allowed, there was just nothing to fetch.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import httpx

import genart
from genart.serve.errors import PayloadTooLarge, URLFetchFailed, URLRefused

__all__ = ["MAX_URL_LENGTH", "FetchedImage", "check_url", "fetch_image"]

log = logging.getLogger("genart.serve.fetch")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_URL_LENGTH = 2048
_DEFAULT_PORTS = {"http": 80, "https": 443}
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_HOST_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789.-_")
_SHARED = ipaddress.ip_network("100.64.0.0/10")
_PRIVATE = tuple(
    ipaddress.ip_network(net) for net in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


@dataclass(frozen=True)
class FetchedImage:
    """The body of a fetched URL; ``url`` is where it came from after redirects."""

    data: bytes
    url: str
    content_type: str | None


@dataclass(frozen=True)
class _AllowList:
    hosts: frozenset[str]
    networks: tuple[IPNetwork, ...]


@dataclass(frozen=True)
class _Target:
    """A checked URL: where to connect (``addresses``) and what to ask for there."""

    url: str
    scheme: str
    host: str
    port: int
    path: str
    addresses: list[IPAddress]


def check_url(url: str, allow: Sequence[str] = ()) -> list[IPAddress]:
    """The addresses ``url``'s host resolves to, once the URL and every one of them is allowed.

    ``allow`` holds host names (matched exactly, case-insensitively) and IP networks in CIDR form
    (``10.0.0.0/8``); an allow-listed host or network skips the public-address rule. Raises ``URLRefused``
    for a URL that must not be fetched and ``URLFetchFailed`` for a host name that does not resolve.
    """
    return _check(url, _allow_list(allow)).addresses


async def fetch_image(
    url: str,
    *,
    max_bytes: int,
    timeout_s: float = 5.0,
    allow: Sequence[str] = (),
    max_redirects: int = 3,
) -> FetchedImage:
    """Download ``url`` (at most ``max_bytes``, within ``timeout_s`` in all), checking every redirect hop.

    Raises ``URLRefused`` (400) for a URL or redirect that is not allowed, ``PayloadTooLarge`` (413) for a
    body over ``max_bytes``, and ``URLFetchFailed`` (422) for everything else that goes wrong.
    """
    allow_list = _allow_list(allow)
    try:
        async with asyncio.timeout(timeout_s):
            return await _fetch(url, allow_list, max_bytes, timeout_s, max_redirects)
    except (TimeoutError, httpx.TimeoutException):
        raise _failed(
            f"timed out after {timeout_s:g} s fetching {_shown(url)}; the server is too slow or unreachable, "
            "try again later or upload the image instead"
        ) from None


async def _fetch(
    url: str, allow: _AllowList, max_bytes: int, timeout_s: float, max_redirects: int
) -> FetchedImage:
    current = url
    async with httpx.AsyncClient(
        verify=_tls_context(),
        trust_env=False,  # no proxies or .netrc credentials from the environment
        follow_redirects=False,
        timeout=timeout_s,
        # A pooled connection is keyed by IP, so reusing one could carry a request for another name
        # over a TLS session verified for the first.
        limits=httpx.Limits(max_keepalive_connections=0),
    ) as client:
        for hop in range(max_redirects + 1):
            try:
                target = await asyncio.to_thread(_check, current, allow)
            except URLRefused as error:
                if hop == 0:
                    raise
                raise URLRefused(f"{_shown(url)} redirects to a refused URL: {error.message}") from None
            response = await _send(client, target, timeout_s)
            try:
                status = response.status_code
                if status in _REDIRECT_STATUSES:
                    location = response.headers.get("location")
                    if not location:
                        raise _failed(f"{_shown(current)} answered HTTP {status} without a Location to go to")
                    current = urljoin(current, location)
                    continue
                if not 200 <= status < 300:
                    raise _failed(
                        f"{_shown(current)} answered HTTP {status} {response.reason_phrase}".rstrip()
                        + "; check that the URL points at a public image"
                    )
                data = await _read_capped(response, current, max_bytes)
                return FetchedImage(data=data, url=current, content_type=response.headers.get("content-type"))
            finally:
                await response.aclose()
    raise _failed(
        f"{_shown(url)} redirected more than {max_redirects} times; give the URL of the image itself"
    )


async def _send(client: httpx.AsyncClient, target: _Target, timeout_s: float) -> httpx.Response:
    """Send the request to the first checked address that accepts a connection."""
    last_error: Exception | None = None
    for address in target.addresses:
        request = _pinned_request(target, address, timeout_s)
        try:
            return await client.send(request, stream=True)
        except httpx.ConnectError as error:
            last_error = error
        except httpx.TimeoutException:
            raise
        except httpx.HTTPError as error:
            raise _failed(f"fetching {_shown(target.url)} failed: {error or type(error).__name__}") from None
    raise _failed(
        f"could not connect to {target.host} port {target.port} for {_shown(target.url)}: {last_error}"
    )


def _pinned_request(target: _Target, address: IPAddress, timeout_s: float) -> httpx.Request:
    """A GET for ``target`` sent to ``address``, naming the real host in ``Host`` and, for https, in SNI."""
    ip = address.compressed.split("%")[0]
    ip_literal = f"[{ip}]" if address.version == 6 else ip
    host = f"[{target.host}]" if ":" in target.host else target.host
    host_header = host if target.port == _DEFAULT_PORTS[target.scheme] else f"{host}:{target.port}"
    extensions: dict[str, object] = {"timeout": httpx.Timeout(timeout_s).as_dict()}
    if target.scheme == "https":
        extensions["sni_hostname"] = target.host
    headers = {
        "Host": host_header,
        "User-Agent": f"genart/{genart.__version__}",
        "Accept": "image/*",
        "Accept-Encoding": "identity",
    }
    try:
        return httpx.Request(
            "GET",
            f"{target.scheme}://{ip_literal}:{target.port}{target.path}",
            headers=headers,
            extensions=extensions,
        )
    except httpx.InvalidURL as error:
        raise _refused(f"{_shown(target.url)} is not a valid URL ({error})") from None


async def _read_capped(response: httpx.Response, url: str, max_bytes: int) -> bytes:
    declared = response.headers.get("content-length", "").strip()
    if declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(
            f"{_shown(url)} is {_size(int(declared))}, over the {_size(max_bytes)} limit for images"
        )
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        # Decompressing would let a small body expand past the cap in one chunk; images gain nothing from it.
        raise _failed(
            f"{_shown(url)} came with Content-Encoding {encoding}; only uncompressed image files are fetched"
        )
    data = bytearray()
    try:
        async for chunk in response.aiter_raw():
            data += chunk
            if len(data) > max_bytes:
                raise _too_large(f"{_shown(url)} is larger than the {_size(max_bytes)} limit for images")
    except httpx.TimeoutException:
        raise
    except httpx.HTTPError as error:
        raise _failed(f"the connection broke while reading {_shown(url)}: {error}") from None
    return bytes(data)


def _check(url: str, allow: _AllowList) -> _Target:
    scheme, host, port, path = _parse(url)
    addresses = _resolve(url, host, port)
    if host.rstrip(".") not in allow.hosts:
        for address in addresses:
            reason = _why_not_public(address)
            if reason is not None and not _in_networks(address, allow.networks):
                raise _refused(
                    f"{_shown(url)} resolves to {address}, {reason}; only public addresses are fetched"
                )
    return _Target(url=url, scheme=scheme, host=host, port=port, path=path, addresses=addresses)


def _parse(url: str) -> tuple[str, str, int, str]:
    """``(scheme, host, port, path_and_query)`` of a URL that is well-formed enough to fetch."""
    if len(url) > MAX_URL_LENGTH:
        raise _refused(f"the URL is {len(url)} characters long; the limit is {MAX_URL_LENGTH}")
    for position, char in enumerate(url):
        if char.isspace() or not char.isprintable():
            what = "a space" if char == " " else f"a control or whitespace character ({char!r})"
            raise _refused(
                f"the URL has {what} at position {position}; remove it or percent-encode it (a space is %20)"
            )
    shown = _shown(url)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as error:
        raise _refused(f"{shown} is not a valid URL ({error})") from None
    if parts.scheme not in _DEFAULT_PORTS:
        scheme = f"the {parts.scheme}:" if parts.scheme else "no"
        raise _refused(f"{shown} has {scheme} scheme; only http:// and https:// URLs are fetched")
    if "@" in parts.netloc:
        raise _refused(f"{shown} has a user name or password in it; remove them, credentials are never sent")
    if "\\" in parts.netloc:
        raise _refused(f"{shown} has a backslash in its host; use forward slashes")
    host = parts.hostname
    if not host:
        raise _refused(f"{shown} has no host name; give a full URL such as https://example.com/image.png")
    if port is None:
        port = _DEFAULT_PORTS[parts.scheme]
    elif port == 0:
        raise _refused(f"{shown} asks for port 0; give the port the image is served on, or none")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        host = _host_name(shown, host)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return parts.scheme, host, port, path


def _host_name(shown: str, host: str) -> str:
    """``host`` in its ASCII (IDNA) form, refused unless it is made of host-name characters."""
    try:
        ascii_host = host.encode("idna").decode("ascii")
    except UnicodeError:
        raise _refused(f"{shown} does not have a valid host name ({host!r})") from None
    if not set(ascii_host) <= _HOST_NAME_CHARS:
        raise _refused(f"{shown} does not have a valid host name ({host!r})")
    return ascii_host


def _resolve(url: str, host: str, port: int) -> list[IPAddress]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as error:
        reason = getattr(error, "strerror", None) or error
        raise _failed(
            f"could not resolve the host {host} of {_shown(url)} ({reason}); check the URL"
        ) from None
    addresses: list[IPAddress] = []
    for family, _type, _proto, _name, sockaddr in infos:
        if family in (socket.AF_INET, socket.AF_INET6):
            address = ipaddress.ip_address(sockaddr[0])
            if address not in addresses:
                addresses.append(address)
    if not addresses:
        raise _failed(f"the host {host} of {_shown(url)} has no IP address; check the URL")
    return addresses


def _why_not_public(address: IPAddress) -> str | None:
    """What kind of non-public address this is (``"a loopback address"``), or None for a public one."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded, form = _embedded_ipv4(address)
        if embedded is not None:
            reason = _why_not_public(embedded)
            return None if reason is None else f"{form} of {embedded} ({reason})"
        if address.teredo is not None:
            return "a Teredo tunnel address"
    if address.is_unspecified:
        return "an unspecified address"
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_multicast:
        return "a multicast address"
    if address in _SHARED:
        return "a shared (carrier-grade NAT) address"
    if address.is_reserved:
        return "a reserved address"
    if _in_networks(address, _PRIVATE):
        return "a private address"
    if isinstance(address, ipaddress.IPv6Address) and address.is_site_local:
        return "a site-local address"
    if address.is_private or not address.is_global:
        return "a special-purpose, non-public address"
    return None


def _embedded_ipv4(address: ipaddress.IPv6Address) -> tuple[ipaddress.IPv4Address | None, str]:
    """The IPv4 address an IPv6 address stands for (mapped, 6to4, NAT64), and which form it is."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped, "an IPv4-mapped form"
    if address.sixtofour is not None:
        return address.sixtofour, "a 6to4 form"
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF), "a NAT64 form"
    return None, ""


def _in_networks(address: IPAddress, networks: Sequence[IPNetwork]) -> bool:
    candidates: list[IPAddress] = [address]
    if isinstance(address, ipaddress.IPv6Address):
        embedded, _form = _embedded_ipv4(address)
        if embedded is not None:
            candidates.append(embedded)
    return any(candidate in network for candidate in candidates for network in networks)


def _allow_list(allow: Sequence[str]) -> _AllowList:
    """Split allow-list entries into host names and networks; a malformed network is a ValueError."""
    if isinstance(allow, str):
        allow = [allow]
    hosts: set[str] = set()
    networks: list[IPNetwork] = []
    for entry in allow:
        entry = entry.strip()
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            if "/" in entry or not entry:
                raise ValueError(
                    f"allow-list entry {entry!r} is neither a host name nor a CIDR network"
                ) from None
            hosts.add(entry.lower().rstrip("."))
    return _AllowList(hosts=frozenset(hosts), networks=tuple(networks))


@functools.cache
def _tls_context() -> ssl.SSLContext:
    return httpx.create_ssl_context()


def _shown(url: str, limit: int = 100) -> str:
    """``url`` fit for a message: cut to ``limit`` characters, with control characters escaped."""
    cut = url if len(url) <= limit else url[: limit - 3] + "..."
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in cut)


def _size(n: int) -> str:
    for unit, scale in (("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{round(n / scale, 1):g} {unit}"
    return f"{n} bytes"


def _refused(message: str) -> URLRefused:
    log.info("refused URL: %s", message)
    return URLRefused(message)


def _failed(message: str) -> URLFetchFailed:
    log.info("fetch failed: %s", message)
    return URLFetchFailed(message)


def _too_large(message: str) -> PayloadTooLarge:
    message += "; resize the image or upload a smaller file"
    log.info("fetch refused: %s", message)
    return PayloadTooLarge(message)
