import os
import signal
import threading
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest
import torch

from genart.config import load_config
from genart.models.artifact import load_artifact, read_meta
from genart.train.trainer import fit

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _config(tmp_path: Path, *overrides: str):
    return load_config(
        overrides=[
            "model.name=tiny_residual",
            "model.input_size=48",
            "train.batch_size=16",
            "train.lr=0.003",
            "train.num_workers=2",
            "train.early_stop_patience=0",
            f"train.storage_path={tmp_path / 'runs'}",
            *overrides,
        ],
        environ={},
    )


@pytest.fixture
def tracking(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


def test_fit_trains_evaluates_and_logs_a_registered_artefact(
    synth_manifest: Path, tmp_path: Path, tracking: str, ray_cluster
) -> None:
    result = fit(
        _config(tmp_path, "train.epochs=2", "train.run_name=e2e"), synth_manifest, out=tmp_path / "art"
    )

    assert list(result.history["epoch"]) == [0, 1]
    waits = result.history["data_wait_frac"]  # how much of each epoch the loop stood idle for input
    assert ((waits > 0) & (waits <= 1)).all() and (result.history["data_wait_s"] > 0).all()
    meta = read_meta(result.artifact)
    assert meta.name == "tiny_residual" and meta.data_fingerprint and len(meta.generators) == 7
    assert 0 < meta.threshold <= 1 and meta.temperature > 0
    assert {"val_auc", "test_accuracy", "ece_before", "ece_after"} <= set(meta.metrics)
    per_gen = pd.read_csv(result.artifact / "evaluation" / "per_generator.csv", index_col=0)
    assert len(per_gen) == 8 and "all" in per_gen.index
    assert (result.artifact / "evaluation" / "confusion.png").exists()
    assert load_artifact(result.artifact).predict_proba is not None

    import mlflow

    mlflow.set_tracking_uri(tracking)
    run = mlflow.get_run(result.mlflow_run_id)
    assert "val_auc" in run.data.metrics and "test_accuracy" in run.data.metrics
    assert run.data.params["model.name"] == "tiny_residual"
    history = mlflow.tracking.MlflowClient().get_metric_history(result.mlflow_run_id, "val_loss")
    assert [m.step for m in history] == [0, 1]  # per-epoch metrics, logged once (rank 0 only)
    registered = load_artifact("models:/genart-tiny_residual/1")
    assert registered.meta.data_fingerprint == meta.data_fingerprint


def test_a_killed_worker_resumes_from_the_last_checkpoint(
    synth_manifest: Path, tmp_path: Path, ray_cluster
) -> None:
    config = _config(tmp_path, "train.epochs=6", "train.run_name=chaos", "train.max_failures=2")
    run_dir = tmp_path / "runs" / "chaos"
    outcome: dict = {}
    thread = threading.Thread(
        target=lambda: outcome.update(result=fit(config, synth_manifest, out=tmp_path / "art", track=False))
    )
    thread.start()
    killed = None
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and thread.is_alive() and killed is None:
        # The snapshot is written once the controller has registered a checkpoint: a kill before that
        # point would rightly restart from scratch.
        if (run_dir / "checkpoint_manager_snapshot.json").exists():
            workers = [
                p for p in psutil.process_iter(["pid", "cmdline"])
                if any("RayTrainWorker" in part for part in (p.info["cmdline"] or []))
            ]  # fmt: skip
            if workers:
                killed = workers[-1].info["pid"]
                os.kill(killed, signal.SIGKILL)
        time.sleep(0.2)
    thread.join(timeout=600)
    assert killed is not None, "no checkpoint appeared, or the run ended before a worker could be killed"
    history = outcome["result"].history
    assert history["epoch"].iloc[-1] == 5
    assert (history["resumed_from"] >= 0).any(), "training restarted from scratch instead of the checkpoint"


def test_resume_continues_an_interrupted_run(synth_manifest: Path, tmp_path: Path, ray_cluster) -> None:
    first = fit(
        _config(tmp_path, "train.epochs=1", "train.run_name=r"),
        synth_manifest,
        out=tmp_path / "a",
        track=False,
    )
    assert list(first.history["epoch"]) == [0]
    again = fit(
        _config(tmp_path, "train.epochs=2"), synth_manifest, out=tmp_path / "a", resume="r", track=False
    )
    assert list(again.history["epoch"]) == [0, 1] and again.history["resumed_from"].iloc[-1] == 0
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        fit(_config(tmp_path), synth_manifest, resume="never-ran", track=False)
    with pytest.raises(ValueError, match="--resume"):  # reusing a name must not silently resume
        fit(_config(tmp_path, "train.run_name=r"), synth_manifest, track=False)


def test_the_loop_probes_then_fine_tunes_and_stops_early_in_local_mode(
    synth_manifest: Path, tmp_path: Path, ray_cluster
) -> None:
    from genart.train.trainer import build_trainer

    config = _config(
        tmp_path,
        "train.num_workers=0",
        "train.epochs=6",
        "train.probe_epochs=1",
        "train.early_stop_patience=1",
        "model.name=tiny_vit",  # LayerNorm only: with lr ~ 0 its outputs, and so its AUC, cannot change
        "train.lr=1e-12",
        "train.optimizer=sgd",
        "train.limit_train_batches=2",
    )
    history = build_trainer(config, synth_manifest, run_name="local").fit().return_value
    assert [h["phase"] for h in history[:2]] == ["probe", "finetune"]
    assert len(history) == 2, "early stopping did not stop a run whose validation AUC cannot improve"
    assert all(h["train_img_s"] > 0 and 0 <= h["val_acc"] <= 1 for h in history)
    with pytest.raises(ValueError, match="local mode"):
        fit(config, synth_manifest, track=False)


def test_train_command_and_leave_one_generator_out(synth_manifest: Path, tmp_path: Path, ray_cluster) -> None:
    from typer.testing import CliRunner

    from genart.cli import app

    config = tmp_path / "tiny.yaml"
    config.write_text(
        "model: {name: tiny_residual, input_size: 48}\n"
        f"train: {{epochs: 1, batch_size: 16, num_workers: 1, storage_path: {tmp_path / 'runs'}}}\n"
    )
    runner = CliRunner()
    trained = runner.invoke(
        app,
        ["train", "--config", str(config), "--data", str(synth_manifest), "--no-track",
         "--out", str(tmp_path / "a"), "--name", "cli"],
    )  # fmt: skip
    assert trained.exit_code == 0, trained.output
    assert "imagenet_glide" in trained.output and (tmp_path / "a" / "cli" / "genart.json").exists()

    logo = runner.invoke(
        app,
        ["evaluate", "--protocol", "logo", "--config", str(config), "--data", str(synth_manifest),
         "--set", "data.generators=[imagenet_glide, imagenet_ai_0508_adm]", "--out", str(tmp_path / "logo")],
    )  # fmt: skip
    assert logo.exit_code == 0, logo.output
    table = pd.read_csv(tmp_path / "logo" / "logo.csv", index_col=0)
    assert list(table.index) == ["imagenet_glide", "imagenet_ai_0508_adm", "mean"]
    assert table.loc["imagenet_glide", "unseen_accuracy"] >= 0 and "seen_auc" in table


def test_tune_runs_a_grid_with_mlflow_parent_and_child_runs(
    synth_manifest: Path, tmp_path: Path, tracking: str, ray_cluster
) -> None:
    from genart.train.tune import trial_concurrency, tune_grid

    config = _config(
        tmp_path,
        "train.epochs=1",
        "train.num_workers=1",
        "train.cpus_per_worker=0.4",
        "tune.lr=[0.001, 0.003]",
        "tune.batch_size=[16]",
        "train.experiment=tune-test",
    )
    assert trial_concurrency(config, {"CPU": 4}) == 2 and trial_concurrency(config, {"CPU": 1}) == 1
    result = tune_grid(config, synth_manifest, name="grid", out=tmp_path / "reports")
    assert len(result.table) == 2 and set(result.table["lr"]) == {0.001, 0.003}
    assert result.best["val_auc"] == result.table["val_auc"].max()
    assert (tmp_path / "reports" / "grid" / "results.md").read_text().count("Best trial") == 1

    import mlflow

    mlflow.set_tracking_uri(tracking)
    children = mlflow.search_runs(
        experiment_names=["tune-test"],
        filter_string=f"tags.mlflow.parentRunId = '{result.mlflow_parent_run_id}'",
    )
    assert len(children) == 2 and "metrics.val_auc" in children

    resumed = tune_grid(config, synth_manifest, name="grid", resume=True, out=tmp_path / "reports")
    assert resumed.mlflow_parent_run_id == result.mlflow_parent_run_id  # the same search, not a new one
    assert sorted(resumed.table["trial_id"]) == sorted(result.table["trial_id"])


def test_attribution_model_names_generators_in_class_order(
    synth_manifest: Path, tmp_path: Path, ray_cluster
) -> None:
    config = _config(tmp_path, "model.task=attribute", "train.epochs=1", "train.num_workers=1")
    result = fit(config, synth_manifest, out=tmp_path / "art", track=False)
    meta = read_meta(result.artifact)
    assert (
        meta.classes[0] == "nature"
        and meta.classes[1:] == sorted(meta.classes[1:])
        and len(meta.classes) == 8
    )
    attribution = result.evaluation.attribution
    assert list(attribution.index) == meta.classes
    assert attribution["recall"].between(0, 1).all() and attribution["n"].sum() == len(
        result.evaluation.predictions
    )
    assert "## Attribution" in (result.artifact / "evaluation" / "evaluation.md").read_text()
    loaded = load_artifact(result.artifact)
    probs = loaded.predict_proba(torch.zeros(3, 3, 48, 48))
    assert probs.shape == (3,) and ((probs >= 0) & (probs <= 1)).all()
