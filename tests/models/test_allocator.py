"""The allocator setting of the processes that run the models (genart.models.allocator)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

#: In a fresh interpreter: touch a 64 MiB tensor (over glibc's largest mmap threshold) twelve times, before
#: and after reuse_freed_memory(), and count the passes after the first four that faulted in at least half of
#: its pages again. With memory reused, the first passes after the switch may still fault (seen: up to three,
#: in 4 of 32 runs), probably while a small object left next to a freed block keeps it from the next one.
PASSES = """
import json, resource, sys, torch
from genart.models.allocator import reuse_freed_memory

def faults():
    out = []
    for _ in range(12):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        torch.ones(16 * 2**20, dtype=torch.float32).sum()
        out.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    half = 8 * 2**20 * 4 // resource.getpagesize()
    return sum(n >= half for n in out[4:])

default = faults()
applied = reuse_freed_memory()
print(json.dumps({"default": default, "applied": applied, "again": reuse_freed_memory(), "tuned": faults()}))
"""

linux_glibc = pytest.mark.skipif(
    not sys.platform.startswith("linux") or os.confstr("CS_GNU_LIBC_VERSION") is None,
    reason="mallopt is glibc's",
)


def _passes(env: dict[str, str]) -> dict:
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", PASSES], env=env, cwd=root, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def _environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_")}


@linux_glibc
def test_reuse_freed_memory_stops_each_pass_faulting_its_buffers_in_again() -> None:
    result = _passes(_environment())
    assert result["applied"] is True and result["again"] is True
    assert result["default"] == 8  # glibc's default: fresh pages for every pass
    assert result["tuned"] <= 2  # kept and reused (none after the fourth pass in 20 runs)


@linux_glibc
def test_glibc_tunables_set_in_the_environment_win() -> None:
    result = _passes({**_environment(), "MALLOC_TRIM_THRESHOLD_": "131072"})
    assert result["applied"] is False and result["again"] is False
    assert result["tuned"] == 8  # left as the environment set it: fresh pages for every pass


def _deployments(app):
    from ray.serve import Application

    deployment = app._bound_deployment
    yield deployment
    for arg in deployment.init_args:
        for bound in arg.values() if isinstance(arg, dict) else [arg]:
            if isinstance(bound, Application):
                yield from _deployments(bound)


def test_the_processes_started_to_run_models_get_the_allocators_environment(monkeypatch) -> None:
    from genart.config import ServeConfig, ServeModel, TrainConfig
    from genart.models.allocator import ALLOCATOR_ENV, allocator_environment
    from genart.serve.app import SERVE_ENV, compose
    from genart.train.trainer import _run_config

    for name in ALLOCATOR_ENV:
        monkeypatch.delenv(name, raising=False)
    app = compose(
        ServeConfig(models=[ServeModel(name="m0", artifact="a"), ServeModel(name="m1", artifact="b")])
    )
    env = {d.name: d.ray_actor_options["runtime_env"]["env_vars"] for d in _deployments(app)}
    assert env["m0"] == env["m1"] == {**SERVE_ENV, **ALLOCATOR_ENV}  # the model replicas
    assert env["Preprocessor"] == env["EnsembleIngress"] == SERVE_ENV  # decoding keeps glibc's defaults
    assert _run_config(TrainConfig(), "run", None).worker_runtime_env["env_vars"] == ALLOCATOR_ENV

    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")  # a tunable the user set is theirs
    assert "MALLOC_ARENA_MAX" not in allocator_environment()
    assert allocator_environment({"MALLOC_MMAP_MAX_": "8"})["MALLOC_MMAP_MAX_"] == "8"


def _serve_config_files() -> dict[str, dict]:
    """Each Serve config the project ships, as `serve deploy` reads it (and the RayService's)."""
    import yaml

    root = Path(__file__).parents[2]
    read = lambda path: yaml.safe_load((root / path).read_text())  # noqa: E731
    return {
        "serve_config.yaml": read("serve_config.yaml"),
        "jobs/serve/wild.yaml": read("jobs/serve/wild.yaml"),
        "docker/k8s/rayservice.yaml": yaml.safe_load(
            read("docker/k8s/rayservice.yaml")["spec"]["serveConfigV2"]
        ),
    }


@pytest.mark.parametrize("name", list(_serve_config_files()))
def test_the_serve_config_files_give_their_model_replicas_the_allocator_and_only_them(name: str) -> None:
    """A deployment's ray_actor_options in a config file replace the ones compose() sets, whole (Ray Serve
    2.60 merges only the app's runtime_env into them): each file carries the model replicas' settings."""
    from genart.models.allocator import ALLOCATOR_ENV

    app = _serve_config_files()[name]["applications"][0]
    models = {m["name"] for m in app["args"]["models"]}
    seen = {}
    for deployment in app["deployments"]:
        runtime_env = (deployment.get("ray_actor_options") or {}).get("runtime_env") or {}
        env = runtime_env.get("env_vars") or {}
        seen[deployment["name"]] = {k: v for k, v in env.items() if k.startswith("MALLOC_")}
    assert seen == {d: (ALLOCATOR_ENV if d in models else {}) for d in seen}, seen
    assert models <= set(seen)
