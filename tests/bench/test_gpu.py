"""The GPU check: its configs without Ray or a GPU, and its whole dry run on the shared local Ray."""

import subprocess
from pathlib import Path

import pytest
import torch

from genart.bench import gpu

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "jobs/configs/efficientnet_b3.yaml"
SERVE_CONFIG = ROOT / "serve_config.yaml"


@pytest.mark.parametrize("plan", [gpu.Plan.for_gpu(1), gpu.Plan.for_dry_run()], ids=["gpu", "dry"])
def test_train_config_is_the_efficientnet_b3_recipe_shortened(plan: gpu.Plan, tmp_path: Path) -> None:
    config = gpu.train_config(plan, RECIPE, tmp_path)
    assert config.model.name == "efficientnet_b3" and not config.model.pretrained
    assert config.train.mixed_precision and config.train.num_workers == 1
    assert config.train.use_gpu is not plan.dry
    assert config.model.input_size == (32 if plan.dry else 224)
    assert config.train.cpus_per_worker == (0.5 if plan.dry else 4)  # the recipe's on a GPU node
    assert config.train.storage_path == tmp_path and config.train.early_stop_patience == 0


@pytest.mark.parametrize("plan", [gpu.Plan.for_gpu(1), gpu.Plan.for_dry_run()], ids=["gpu", "dry"])
def test_serve_config_gives_every_model_deployment_its_artefact_and_gpu_share(
    plan: gpu.Plan, tmp_path: Path
) -> None:
    artifacts = {"lite0": tmp_path / "a", "residual": tmp_path / "b"}
    config = gpu.serve_config(SERVE_CONFIG, artifacts, 8123, plan, {"GENART_API_KEY": ""})
    (app,) = config["applications"]
    deployments = {d["name"]: d for d in app["deployments"]}
    assert config["http_options"] == {**config["http_options"], "host": "127.0.0.1", "port": 8123}
    assert app["args"]["models"] == [{"name": "lite0"}, {"name": "residual"}]
    env = app["runtime_env"]["env_vars"]
    assert env["GENART_API_KEY"] == "" and env["RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD"] == "0"  # kept
    assert deployments["EnsembleIngress"]["user_config"]["ensemble"] is None
    for name, path in artifacts.items():
        options = deployments[name]["ray_actor_options"]
        assert deployments[name]["user_config"]["artifact"] == str(path)
        assert options["num_gpus"] == (0 if plan.dry else 0.5)  # two models share one GPU
        assert ("memory" in options) is not plan.dry
    assert "num_gpus" not in deployments["Preprocessor"]["ray_actor_options"]
    ingress = deployments["EnsembleIngress"]
    assert app["args"]["max_in_flight"] >= plan.concurrency  # no 503 from the ingress at 64 clients
    assert ingress["max_ongoing_requests"] > app["args"]["max_in_flight"]


def test_serve_config_refuses_models_it_does_not_deploy(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"no deployment for the models \['vit'\]"):
        gpu.serve_config(SERVE_CONFIG, {"vit": tmp_path}, 8000, gpu.Plan.for_dry_run(), {})


def test_gpu_status_says_why_there_is_no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gpu.shutil, "which", lambda name: None)
    assert gpu.gpu_status() == (0, "nvidia-smi: not found (no NVIDIA driver on this machine)")
    monkeypatch.setattr(gpu.shutil, "which", lambda name: "/usr/bin/nvidia-smi")

    def failing(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
        return subprocess.CompletedProcess(cmd, 9, "", "NVIDIA-SMI has failed: no devices were found")

    gpus, status = gpu.gpu_status(run=failing)
    assert gpus == 0 and status == "nvidia-smi failed (exit 9): NVIDIA-SMI has failed: no devices were found"


@pytest.mark.ray
@pytest.mark.slow
def test_gpu_check_dry_run_runs_every_step_and_writes_its_table(
    tmp_path: Path, ray_cluster: dict[str, int], capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--out", str(tmp_path), "--dashboard-port", str(ray_cluster["dashboard_port"])]
    argv += ["--recipe", str(RECIPE), "--serve-config", str(SERVE_CONFIG)]
    results = gpu.main(argv + (["--dry-run"] if torch.cuda.is_available() else []))
    assert results["dry_run"] and results["plan"]["num_gpus"] == 0
    train, serve, ceiling = results["train"], results["serve"], results["ceiling"]
    assert train["model"] == "efficientnet_b3" and len(train["epochs_img_s"]) == 2 and train["img_s"] > 0
    assert serve["ok"] == serve["requests"] == 12 and serve["errors"] == {} and serve["p99_ms"] > 0
    assert ceiling["device"] == "cpu" and ceiling["img_s"] > 0
    report = (tmp_path / "gpu-dry.md").read_text()
    assert "dry run" in report and "| Ray Serve over HTTP |" in report and "| Serve / ceiling |" in report
    assert not (tmp_path / "gpu.md").exists()
    if not torch.cuda.is_available():
        assert "No GPU here" in capsys.readouterr().out


def test_the_table_of_a_gpu_run_names_every_step_and_the_budget() -> None:
    results = {
        "dry_run": False, "gpu": "NVIDIA H200, 139 GiB, CUDA 13.0", "serve_size": 224, "total_s": 500.0,
        "seconds": {"train": 200.0, "serve": 250.0, "ceiling": 50.0},
        "train": {"model": "efficientnet_b3", "input_size": 224, "batch_size": 64, "images": 1833,
                  "mixed_precision": "bf16", "epochs_img_s": [300.0, 900.0, 1000.0, 950.0], "img_s": 950.0},
        "serve": {"num_gpus_per_model": 0.5, "concurrency": 64, "requests": 1920, "ok": 1920, "req_s": 400.0,
                  "p50_ms": 150.0, "p99_ms": 300.0},
        "ceiling": {"device": "cuda", "batch": 64, "img_s": 4000.0},
    }  # fmt: skip
    table = gpu.markdown(results)
    assert table.startswith("## GPU check\n") and "dry run" not in table
    assert "| Ray Train, 1 GPU worker | efficientnet_b3 at 224 px, batch 64, mixed precision bf16" in table
    assert "**950.0 img/s** (median of epochs 2-4)" in table
    assert "num_gpus 0.5 per model deployment, concurrency 64, 1920 requests (1920 ok)" in table
    assert "| Serve / ceiling | | 0.10 |" in table and "budget 480 s: OVER" in table
    dry = gpu.markdown(
        {**results, "dry_run": True, "train": {**results["train"], "epochs_img_s": [1.0, 2.0]}}
    )
    assert "(dry run: no GPU, tiny sizes on the CPU, not a measurement)" in dry and "(epoch 2)" in dry
