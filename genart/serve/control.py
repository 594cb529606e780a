"""``genart serve up|down|status``: a local Ray head, ``serve deploy`` of a config, and waiting until ready.

Everything goes through Ray's own tools (``ray start``, ``serve deploy``, the dashboard's REST API); this
module only sequences them and turns their failures into messages that say what to do.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

__all__ = ["ServeEndpoints", "deploy", "ensure_ray", "http_port", "serve_status", "shutdown", "wait_ready"]


def http_port(config: Path) -> int:
    """The port a Serve config's HTTP proxy listens on (``http_options.port``, default 8000)."""
    import yaml

    raw = yaml.safe_load(config.read_text()) or {}
    return int((raw.get("http_options") or {}).get("port", 8000))


class ServeEndpoints:
    """Where the local services answer."""

    def __init__(
        self, port: int = 6380, dashboard_port: int = 8265, http_port: int = 8000, metrics_port: int = 8080
    ):
        self.port = port
        self.dashboard = f"http://127.0.0.1:{dashboard_port}"
        self.api = f"http://127.0.0.1:{http_port}"
        self.metrics = f"http://127.0.0.1:{metrics_port}/metrics"
        self.dashboard_port = dashboard_port
        self.metrics_port = metrics_port


def _bin(name: str) -> str:
    """A console script of this environment (ray, serve), so that jobs and replicas use the same Python."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else name


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("RAY_AUTH_MODE", "disabled")
    return env


def _dashboard_up(endpoints: ServeEndpoints) -> bool:
    try:
        return httpx.get(f"{endpoints.dashboard}/api/version", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def ensure_ray(endpoints: ServeEndpoints, log: Callable[[str], None] = print, ingress: str = "proxy") -> bool:
    """Start a local Ray head unless one answers; True if this call started it. Never on Redis' 6379.

    ``ingress`` is the Serve layout the head is started with (:data:`genart.serve.app.INGRESS_ENV`); a
    running cluster keeps the one it was started with."""
    from genart.serve.app import ingress_environment

    env = ingress_environment(ingress, _env())
    if _dashboard_up(endpoints):
        log(f"using the running Ray cluster ({endpoints.dashboard}) with the ingress it was started with")
        return False
    cmd = [
        _bin("ray"), "start", "--head", f"--port={endpoints.port}", "--dashboard-host=127.0.0.1",
        f"--dashboard-port={endpoints.dashboard_port}", f"--metrics-export-port={endpoints.metrics_port}",
        "--disable-usage-stats",
    ]  # fmt: skip
    log(f"starting a local Ray head (Serve ingress: {ingress}): " + " ".join(cmd[1:]))
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(
            f"`ray start` failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}\n"
            f"Is port {endpoints.port} or {endpoints.dashboard_port} taken? `ray stop` clears a stale head."
        )
    deadline = time.monotonic() + 60
    while not _dashboard_up(endpoints):
        if time.monotonic() > deadline:
            raise RuntimeError(f"Ray started but its dashboard never answered at {endpoints.dashboard}")
        time.sleep(1)
    return True


def deploy(config: Path, endpoints: ServeEndpoints, log: Callable[[str], None] = print) -> None:
    """``serve deploy CONFIG``: applications update in place (a changed user_config swaps models live)."""
    if not config.exists():
        raise FileNotFoundError(f"no Serve config at {config}")
    cmd = [_bin("serve"), "deploy", str(config), "--address", endpoints.dashboard]
    log("deploying: serve deploy " + str(config))
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"`serve deploy` failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")


def serve_status(endpoints: ServeEndpoints) -> dict[str, Any]:
    """The applications and deployments as the Serve controller reports them (the dashboard's REST API)."""
    response = httpx.get(f"{endpoints.dashboard}/api/serve/applications/", timeout=10)
    response.raise_for_status()
    return response.json()


def _failures(status: dict[str, Any]) -> list[str]:
    problems = []
    for name, app in (status.get("applications") or {}).items():
        if app.get("status") in ("DEPLOY_FAILED", "UNHEALTHY"):
            problems.append(f"application {name}: {app.get('status')}: {app.get('message', '')}")
            for dname, dep in (app.get("deployments") or {}).items():
                if dep.get("status") not in ("HEALTHY", "UPDATING"):
                    problems.append(f"  deployment {dname}: {dep.get('status')}: {dep.get('message', '')}")
    return problems


def wait_ready(
    endpoints: ServeEndpoints,
    timeout_s: float = 300,
    api_key: str | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Poll ``GET /health`` until the app is ready; fail fast, with Serve's message, if a deployment fails."""
    deadline = time.monotonic() + timeout_s
    last = "no answer yet"
    while time.monotonic() < deadline:
        try:
            problems = _failures(serve_status(endpoints))
            if problems:
                raise RuntimeError("the Serve application failed:\n" + "\n".join(problems))
        except httpx.HTTPError as exc:
            last = f"dashboard: {exc}"
        try:
            response = httpx.get(f"{endpoints.api}/health", timeout=10)
            if response.status_code == 200:
                return response.json()
            last = f"/health answered {response.status_code}: {response.text[:300]}"
        except httpx.HTTPError as exc:
            last = f"/health: {exc.__class__.__name__}"
        time.sleep(2)
    raise TimeoutError(f"the app was not ready after {timeout_s:.0f} s ({last}); see `genart serve status`")


def shutdown(endpoints: ServeEndpoints, stop_ray: bool = True, log: Callable[[str], None] = print) -> None:
    """Delete the Serve applications, then stop the local Ray head."""
    if _dashboard_up(endpoints):
        subprocess.run(
            [_bin("serve"), "shutdown", "-y", "--address", endpoints.dashboard], env=_env(), check=False
        )
        log("Serve shut down")
    if stop_ray:
        subprocess.run([_bin("ray"), "stop"], env=_env(), check=False, capture_output=True)
        log("Ray stopped")
