"""The training driver: build the TorchTrainer, fit it, and turn the best checkpoint into an artefact.

After ``fit`` the driver loads the checkpoint with the best validation ROC-AUC, fits the calibration
temperature and the decision threshold on the validation split, evaluates the test split per generator
with robustness columns, writes the final artefact, and logs all of it to MLflow (the run the workers'
rank 0 logged epochs to) and registers it as ``genart-<model>``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from genart.config import GenartConfig, Settings, TrainConfig
from genart.data.index import training_data_summary
from genart.data.layout import CLASSES
from genart.data.pipeline import cap_per_generator, make_dataset, select_rows
from genart.evaluate.evaluation import EvaluationResult, calibrate, evaluate, write_evaluation
from genart.models.allocator import allocator_environment
from genart.models.artifact import (
    ArtifactMeta,
    LoadedModel,
    load_artifact,
    read_meta,
    save_artifact,
    split_fingerprint,
)
from genart.models.zoo import build_from_config, get_entry
from genart.tracking import named_run, use_experiment
from genart.train.loop import train_loop_per_worker

__all__ = ["FitResult", "build_trainer", "fit", "init_ray", "model_classes"]

log = logging.getLogger("genart.train")


@dataclass
class FitResult:
    run_name: str
    artifact: Path
    metrics: dict[str, Any]
    evaluation: EvaluationResult | None
    mlflow_run_id: str | None
    history: pd.DataFrame


def init_ray(address: str | None = None) -> None:
    """Connect to ``address`` (or ``RAY_ADDRESS``), else start a local Ray. Idempotent."""
    import ray

    if ray.is_initialized():
        return
    address = address or Settings().ray_address
    ray.init(address=address, log_to_driver=True) if address else ray.init()


def model_classes(config: GenartConfig, manifest: Path) -> list[str]:
    """The model's classes: nature/ai to detect, or nature plus each training generator to attribute."""
    if config.model.task == "detect":
        return list(CLASSES)
    generators = select_rows(manifest, "train", config.data.generators, config.data.exclude_generators)[
        "generator"
    ]
    return [CLASSES[0], *sorted(generators.unique())]


def _rows(config: GenartConfig, manifest: Path, split: str, classes: list[str] | None = None) -> pd.DataFrame:
    rows = select_rows(manifest, split, config.data.generators, config.data.exclude_generators, classes)
    if split != "train":
        return rows
    return cap_per_generator(rows, config.data.max_per_generator, config.data.seed)


def _artifact_meta(
    config: GenartConfig, manifest: Path, classes: list[str], train_rows: pd.DataFrame, val_rows: pd.DataFrame
) -> tuple[ArtifactMeta, Any]:
    """The metadata every checkpoint of this run carries, and the model's input spec. The model is built
    here first so that missing pretrained weights fail before any worker starts."""
    model, spec = build_from_config(config.model)
    del model
    entry = get_entry(config.model.name)
    meta = ArtifactMeta(
        name=config.model.name, timm_id=entry.timm_id, residual=entry.residual, input=spec.to_dict(),
        data_fingerprint=split_fingerprint({"train": train_rows, "val": val_rows}),
        generators=sorted(train_rows["generator"].unique()),
        trained_on=training_data_summary(manifest, train_rows), classes=classes,
        train_config=config.model_dump(mode="json"),
    )  # fmt: skip
    return meta, spec


def _run_config(t: TrainConfig, run_name: str, callbacks: list | None):
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig

    storage = str(t.storage_path) if "://" in str(t.storage_path) else str(Path(t.storage_path).resolve())
    return RunConfig(
        name=run_name,
        storage_path=storage,
        checkpoint_config=CheckpointConfig(
            num_to_keep=t.keep_checkpoints, checkpoint_score_attribute="val_auc", checkpoint_score_order="max"
        ),
        failure_config=FailureConfig(max_failures=t.max_failures, controller_failure_limit=3),
        callbacks=callbacks,
        # Ray Train's own INFO lines (a TrainingReport per rank and epoch) stay in its log files under the Ray
        # session's logs/train/ unless asked for: the terminal shows one line per epoch.
        logging_config=LoggingConfig(log_level="INFO" if t.verbose else "WARNING"),
        # Each step's activations reused by the next, not faulted in again (genart.models.allocator).
        worker_runtime_env={"env_vars": allocator_environment()},
    )


def build_trainer(
    config: GenartConfig,
    manifest: Path,
    run_name: str,
    mlflow_info: dict[str, str] | None = None,
    callbacks: list | None = None,
):
    """A Ray Train V2 ``TorchTrainer`` for ``config``, fed by Ray Data datasets built from ``manifest``.

    ``callbacks`` are Ray Train user callbacks, e.g. Tune's ``TuneReportCallback`` when a trial drives it.
    """
    from ray.train import ScalingConfig
    from ray.train.torch import TorchTrainer

    t = config.train
    classes = model_classes(config, manifest)
    train_rows, val_rows = _rows(config, manifest, "train", classes), _rows(config, manifest, "val", classes)
    meta, spec = _artifact_meta(config, manifest, classes, train_rows, val_rows)
    columns = ["image", "target"]
    # Every epoch in one dataset, read once by the train loop (split_epochs); a batch limit cuts each pass.
    workers = max(1, t.num_workers)  # 0: local mode, one process
    limit = t.limit_train_batches * t.batch_size * workers if t.limit_train_batches else len(train_rows)
    per_epoch = min(len(train_rows), limit)
    datasets = {
        "train": make_dataset(train_rows, spec, training=True, augment=config.augment, seed=config.data.seed,
                              batch_size=t.batch_size, as_uint8=True, epochs=t.epochs,
                              rows_per_epoch=per_epoch, columns=columns),
        "val": make_dataset(val_rows, spec, training=False, batch_size=t.batch_size,
                            as_uint8=True, columns=columns),
    }  # fmt: skip
    resources = {"CPU": t.cpus_per_worker, **({"GPU": 1} if t.use_gpu else {})}
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "config": config.model_dump(mode="json"),
            "train_rows": per_epoch,
            "num_classes": len(classes),
            "meta": meta.model_dump(mode="json"),
            "mlflow": mlflow_info,
        },
        scaling_config=ScalingConfig(
            num_workers=t.num_workers, use_gpu=t.use_gpu, resources_per_worker=resources
        ),
        run_config=_run_config(t, run_name, callbacks),
        datasets=datasets,
    )


def _start_mlflow(config: GenartConfig, run_name: str, resume: bool) -> dict[str, str]:
    uri = use_experiment(config.train.experiment)
    return {"tracking_uri": uri, "run_id": named_run(run_name, params=_flat_params(config), resume=resume)}


def _flat_params(config: GenartConfig) -> dict[str, Any]:
    flat = {}
    for section, values in config.model_dump(mode="json", exclude={"serve"}).items():
        for key, value in values.items():
            flat[f"{section}.{key}"] = json.dumps(value) if isinstance(value, list | dict) else value
    return flat


def _finish_mlflow(info: dict[str, str], result: FitResult, eval_dir: Path, register: bool) -> None:
    import mlflow

    mlflow.set_tracking_uri(info["tracking_uri"])
    with mlflow.start_run(run_id=info["run_id"]):
        final_keys = ("ece_before", "ece_after", "temperature", "threshold")
        final = {
            k: float(v)
            for k, v in result.metrics.items()
            if (k.startswith("test_") or k in final_keys)
            and isinstance(v, int | float)
            and v == v  # v == v: not NaN
        }
        mlflow.log_metrics(final)
        mlflow.log_artifacts(str(result.artifact), artifact_path="model")
        mlflow.log_artifacts(str(eval_dir), artifact_path="evaluation")
        mlflow.set_tag("genart.artifact", str(result.artifact))
    if register:
        register_model(info, read_meta(result.artifact).name)


def register_model(info: dict[str, str], model_name: str) -> str | None:
    """Register the run's ``model/`` directory as a new version of ``genart-<model_name>``.

    ``mlflow.register_model`` expects a logged MLflow model; a genart artefact is a plain directory, so
    the version is created with the client, which accepts any run artifact path.
    """
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=info["tracking_uri"])
    name = f"genart-{model_name}"
    try:
        with contextlib.suppress(MlflowException):  # already registered: add a version
            client.create_registered_model(name)
        version = client.create_model_version(
            name, source=f"runs:/{info['run_id']}/model", run_id=info["run_id"]
        )
        return f"models:/{name}/{version.version}"
    except Exception as exc:  # a registry that refuses must not lose a finished run
        log.warning("model registration failed: %s", exc)
        return None


def fit(
    config: GenartConfig,
    manifest: str | Path,
    out: str | Path = "artifacts",
    resume: str | None = None,
    track: bool = True,
    evaluate_test: bool = True,
    artifact_name: str | None = None,
) -> FitResult:
    """Train, calibrate, evaluate and save to ``out/<artifact_name or run name>``.

    ``resume`` names an interrupted run to continue (the run directory under ``train.storage_path``).
    """
    manifest = Path(manifest)
    if config.train.num_workers == 0:
        raise ValueError(
            "train.num_workers=0 (local mode) keeps no checkpoint, so no artefact: use 1 or more"
        )
    if not manifest.exists():
        raise FileNotFoundError(f"no manifest at {manifest}: run `genart data index` and `genart data split`")
    run_name = resume or config.train.run_name or f"{config.model.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    local_storage = "://" not in str(config.train.storage_path)
    run_dir = Path(config.train.storage_path) / run_name
    if resume and local_storage and not run_dir.exists():
        raise FileNotFoundError(f"nothing to resume: no run {resume!r} under {config.train.storage_path}")
    if not resume and local_storage and run_dir.exists():
        # Ray Train resumes any run whose folder exists, even a finished one: say so rather than do it.
        raise ValueError(f"a run named {run_name!r} exists under {config.train.storage_path}: "
                         "continue it with --resume, or choose another train.run_name")  # fmt: skip
    init_ray()
    mlflow_info = _start_mlflow(config, run_name, bool(resume)) if track else None
    trainer = build_trainer(config, manifest, run_name, mlflow_info)
    result = trainer.fit()
    best = result.get_best_checkpoint("val_auc", "max") or result.checkpoint
    if best is None:
        raise RuntimeError(f"run {run_name} reported no checkpoint; see the worker logs above")
    # Result.metrics_dataframe holds only kept checkpoints; the loop returns every epoch, resumed ones too.
    history = pd.DataFrame(result.return_value or [])

    artifact_dir = Path(out) / (artifact_name or run_name)
    with best.as_directory() as ckpt:
        loaded = load_artifact(ckpt, device="cuda" if torch.cuda.is_available() else "cpu")
    workers = min(4, os.cpu_count() or 1)  # decoding for calibration and evaluation runs on the driver
    return finish_artifact(loaded, config, manifest, artifact_dir, run_name, mlflow_info, history,
                           evaluate_test=evaluate_test, workers=workers)  # fmt: skip


def finish_artifact(
    loaded: LoadedModel,
    config: GenartConfig,
    manifest: Path,
    artifact_dir: Path,
    run_name: str,
    mlflow_info: dict[str, str] | None,
    history: pd.DataFrame,
    evaluate_test: bool = True,
    workers: int = 0,
) -> FitResult:
    """What every trained model goes through: calibration on val, evaluation on test, the artefact written."""
    classes = loaded.meta.classes
    calibration = calibrate(
        loaded,
        _rows(config, manifest, "val", classes),
        workers=workers,
        max_fpr=config.train.threshold_max_fpr,
    )
    loaded.meta.temperature, loaded.meta.threshold = calibration.temperature, calibration.threshold
    evaluation = None
    metrics: dict[str, Any] = dict(loaded.meta.metrics)
    eval_dir = artifact_dir / "evaluation"
    if evaluate_test:
        test_rows = _rows(config, manifest, "test", classes)
        evaluation = evaluate(loaded, test_rows, split="test", calibration=calibration, workers=workers)
        metrics.update({f"test_{k}": v for k, v in evaluation.overall.items()})
    metrics.update(
        ece_before=calibration.ece_before,
        ece_after=calibration.ece_after,
        temperature=calibration.temperature,
    )
    loaded.meta.metrics = metrics
    if artifact_dir.exists():
        shutil.rmtree(artifact_dir)
    save_artifact(loaded.model, loaded.meta, artifact_dir)
    if evaluation is not None:
        write_evaluation(evaluation, eval_dir)
    fit_result = FitResult(
        run_name, artifact_dir, metrics, evaluation, mlflow_info and mlflow_info["run_id"], history
    )
    if mlflow_info:
        _finish_mlflow(mlflow_info, fit_result, eval_dir, register=True)
    log.info("artefact written to %s", artifact_dir)
    return fit_result
