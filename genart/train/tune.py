"""Hyperparameter search: Ray Tune drives a function that builds and fits the TorchTrainer.

``Tuner(trainer)`` is refused in Ray 2.60, so each trial runs :func:`_trial`, which builds a trainer
from the base config plus the trial's parameters and reports every epoch back to Tune through
``TuneReportCallback`` (so ASHA can stop weak trials). MLflow gets one parent run and one child run per
trial. Each trial's Train run has a fixed name, so an interrupted search resumes with ``resume=True``.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from genart.config import GenartConfig
from genart.models.zoo import get_entry
from genart.tracking import named_run, use_experiment
from genart.train.trainer import build_trainer, init_ray

__all__ = ["TuneResult", "param_space", "trial_concurrency", "tune_grid"]

log = logging.getLogger("genart.tune")


@dataclass
class TuneResult:
    name: str
    table: pd.DataFrame
    best: dict[str, Any]
    path: Path
    mlflow_parent_run_id: str | None


def param_space(config: GenartConfig) -> dict[str, Any]:
    """The grid: learning rate x batch size, plus optimizer and schedule when the config lists them."""
    from ray import tune

    space: dict[str, Any] = {
        "lr": tune.grid_search(list(config.tune.lr)),
        "batch_size": tune.grid_search(list(config.tune.batch_size)),
    }
    if config.tune.optimizer:
        space["optimizer"] = tune.grid_search(list(config.tune.optimizer))
    if config.tune.schedule:
        space["schedule"] = tune.grid_search(list(config.tune.schedule))
    return space


def trial_concurrency(config: GenartConfig, resources: dict[str, float]) -> int:
    """How many trials fit at once: each needs its workers' CPUs (and GPUs) plus one CPU for Ray Data."""
    if config.tune.max_concurrent:
        return config.tune.max_concurrent
    t = config.train
    per_trial_cpu = t.num_workers * t.cpus_per_worker + 1.0
    fit = int(resources.get("CPU", 1) // per_trial_cpu)
    if t.use_gpu:
        fit = min(fit, int(resources.get("GPU", 0) // max(1, t.num_workers)))
    return max(1, fit)


def _trial(params: dict[str, Any], context: dict[str, Any]) -> None:
    """One trial: the base config plus this trial's parameters, trained by a TorchTrainer."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    config = GenartConfig.model_validate(context["base"])
    for key in ("lr", "batch_size", "optimizer", "schedule"):
        if key in params:
            setattr(config.train, key, params[key])
    trial_id = tune.get_context().get_trial_id()
    mlflow_info = None
    if context.get("mlflow"):
        use_experiment(config.train.experiment, context["mlflow"]["tracking_uri"])
        tags = {"mlflow.parentRunId": context["mlflow"]["parent_run_id"], "genart.trial": trial_id}
        params = {k: params[k] for k in ("lr", "batch_size", "optimizer", "schedule") if k in params}
        child = named_run(f"trial-{trial_id}", params=params, tags=tags)
        mlflow_info = {"tracking_uri": context["mlflow"]["tracking_uri"], "run_id": child}
    trainer = build_trainer(
        config, Path(context["manifest"]), f"train-{trial_id}", mlflow_info, callbacks=[TuneReportCallback()]
    )
    trainer.fit()


def tune_grid(
    config: GenartConfig,
    manifest: str | Path,
    name: str | None = None,
    resume: bool = False,
    track: bool = True,
    out: str | Path = "reports/tune",
) -> TuneResult:
    """Run the grid with ASHA; write ``results.csv`` and ``results.md`` naming the best trial."""
    import ray
    from ray import tune

    manifest = Path(manifest).resolve()
    if not manifest.exists():
        raise FileNotFoundError(f"no manifest at {manifest}: run `genart data split` first")
    init_ray()
    name = name or f"tune-{config.model.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    storage = Path(config.train.storage_path).resolve()
    config = config.model_copy(deep=True)
    config.train.storage_path = storage / name / "train_runs"
    if config.model.weights is not None:  # trials run in their own directories: relative paths would break
        config.model.weights = Path(config.model.weights).resolve()
    concurrency = trial_concurrency(config, ray.cluster_resources())

    parent_id = uri = None
    if track:
        uri = use_experiment(config.train.experiment)
        params = {"model.name": config.model.name, "tune.lr": str(config.tune.lr),
                  "tune.batch_size": str(config.tune.batch_size)}  # fmt: skip
        parent_id = named_run(name, params=params, tags={"genart.kind": "tune"}, resume=resume)

    if get_entry(config.model.name).kind == "clip":  # a frozen encoder: one head per grid point, on features
        from genart.train.head import head_trainable

        trainable, space = head_trainable(config, manifest)
    else:
        space = param_space(config)
        context = {
            "base": config.model_dump(mode="json"),
            "manifest": str(manifest),
            "mlflow": {"tracking_uri": uri, "parent_run_id": parent_id} if track else None,
        }
        trainable = tune.with_resources(tune.with_parameters(_trial, context=context), {"cpu": 0.01})
    path = storage / name
    if resume and tune.Tuner.can_restore(str(path)):
        tuner = tune.Tuner.restore(
            str(path), trainable=trainable, resume_unfinished=True, resume_errored=True
        )
    else:
        tuner = _new_tuner(trainable, space, config, name, storage, concurrency)
    table, best = _results_table(tuner.fit())
    out = _write_results(table, best, Path(out) / name, name)
    if track and parent_id:
        _log_best(parent_id, best, out)
    return TuneResult(name=name, table=table, best=best, path=path, mlflow_parent_run_id=parent_id)


def _new_tuner(
    trainable: Any, space: dict[str, Any], config: GenartConfig, name: str, storage: Path, concurrency: int
):
    """A Tuner over the grid, with ASHA stopping the weak trials after the grace period."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    t = config.train
    return tune.Tuner(
        trainable,
        param_space=space,
        tune_config=tune.TuneConfig(
            metric="val_auc",
            mode="max",
            scheduler=ASHAScheduler(max_t=t.epochs, grace_period=min(config.tune.grace_period, t.epochs)),
            max_concurrent_trials=concurrency,
        ),
        run_config=tune.RunConfig(name=name, storage_path=str(storage)),
    )


def _results_table(grid: Any) -> tuple[pd.DataFrame, dict[str, Any]]:
    """One row per trial (its parameters and best validation figures), best first, and the best row."""
    frame = grid.get_dataframe(filter_metric="val_auc", filter_mode="max")
    columns = [c for c in frame.columns if c.startswith("config/") and c.split("/")[-1] in
               ("lr", "batch_size", "optimizer", "schedule", "head_c")]  # fmt: skip
    metrics = [c for c in ("val_auc", "val_acc", "val_loss", "epoch", "training_iteration") if c in frame]
    table = frame[[*columns, *metrics, "trial_id"]].rename(columns=lambda c: c.removeprefix("config/"))
    table = table.sort_values("val_auc", ascending=False).reset_index(drop=True)
    best_row = table.iloc[0].to_dict() if len(table) else {}
    return table, {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in best_row.items()}


def _write_results(table: pd.DataFrame, best: dict[str, Any], out: Path, name: str) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "results.csv", index=False)
    md = [f"# Tuning {name}", "", table.to_markdown(index=False, floatfmt=".4g"), ""]
    if best:
        chosen = ", ".join(f"{k} {best[k]}" for k in ("lr", "batch_size", "head_c") if k in best)
        md.append(f"**Best trial** {best['trial_id']}: {chosen}, validation ROC-AUC {best['val_auc']:.4f}.")
    (out / "results.md").write_text("\n".join(md))
    return out


def _log_best(parent_id: str, best: dict[str, Any], out: Path) -> None:
    import mlflow

    with mlflow.start_run(run_id=parent_id):
        if best:
            mlflow.log_metrics({"best_val_auc": float(best["val_auc"])})
            mlflow.log_params({f"best_{k}": best[k] for k in ("lr", "batch_size", "head_c") if k in best})
        mlflow.log_artifacts(str(out), artifact_path="tune")
