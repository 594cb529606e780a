"""The per-worker training loop run by Ray Train: DDP on CPU or GPU, checkpoints, resume, early stopping.

The loop is a few named steps, each testable without Ray: :class:`Schedule` (linear probe, then fine-tuning,
learning rates per parameter group), :func:`train_epoch`, :func:`evaluate_batches` (predictions gathered so
that every rank computes the same ROC-AUC, and so takes the same early-stopping decision), :func:`track_best`,
:func:`save_checkpoint` and :func:`restore`. Rank 0 prints one line per epoch, writes the checkpoint (an
artefact directory plus ``train_state.pt``) and logs to MLflow; no other rank touches MLflow.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from genart.config import GenartConfig, TrainConfig
from genart.data.pipeline import split_epochs
from genart.data.transforms import InputSpec, normalize
from genart.evaluate.metrics import binary_metrics
from genart.models.artifact import WEIGHTS_FILE, ArtifactMeta, save_artifact
from genart.models.predict import ai_probability
from genart.models.zoo import build_from_config

__all__ = [
    "STATE_FILE",
    "DataWait",
    "QuietReports",
    "Schedule",
    "build_optimizer",
    "epoch_line",
    "evaluate_batches",
    "lr_factor",
    "quiet_reports",
    "restore",
    "save_checkpoint",
    "track_best",
    "train_epoch",
    "train_loop_per_worker",
]

log = logging.getLogger("genart.train")
STATE_FILE = "train_state.pt"


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """The learning-rate multiplier at ``step`` of ``total``: linear warm-up, then cosine, step or flat."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    if schedule == "step":
        return 0.1 ** int(progress * 3)  # x0.1 at one and two thirds of training
    return 1.0


def _head_parameter_ids(model: nn.Module) -> set[int]:
    classifier = model.get_classifier()
    return {id(p) for p in classifier.parameters()}


def build_optimizer(model: nn.Module, t: TrainConfig) -> torch.optim.Optimizer:
    """AdamW or SGD over two parameter groups, ``backbone`` and ``head``, for :class:`Schedule` to set."""
    head = _head_parameter_ids(model)
    groups = [
        {"params": [p for p in model.parameters() if id(p) not in head], "name": "backbone"},
        {"params": [p for p in model.parameters() if id(p) in head], "name": "head"},
    ]
    if t.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=t.lr, momentum=0.9, nesterov=True, weight_decay=t.weight_decay)
    return torch.optim.AdamW(groups, lr=t.lr, weight_decay=t.weight_decay)


def _gather(values: list[np.ndarray]) -> list[np.ndarray]:
    """Concatenate arrays across ranks (every rank gets everything)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, values)
    return [np.concatenate([g[i] for g in gathered]) for i in range(len(values))]


def _autocast(device: torch.device, enabled: bool):
    if enabled and device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast(device_type="cuda", dtype=dtype)
    return torch.autocast(device_type=device.type, enabled=False)


_DTYPES = {"image": torch.uint8, "target": torch.int64}  # the pipeline hands over uint8 (make_dataset)


@dataclass(frozen=True)
class Schedule:
    """The learning rates through a run: a linear probe (head only, backbone BatchNorm frozen) for
    ``probe_epochs``, then the whole network. Each group warms up and decays by ``schedule``; the backbone's
    schedule starts when it is unfrozen."""

    lr: float
    epochs: int
    steps_per_epoch: int
    warmup_epochs: int = 0
    probe_epochs: int = 0
    schedule: str = "cosine"

    @classmethod
    def from_config(cls, t: TrainConfig, steps_per_epoch: int) -> Schedule:
        return cls(t.lr, t.epochs, steps_per_epoch, t.warmup_epochs, t.probe_epochs, t.schedule)

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.epochs

    def probing(self, epoch: int) -> bool:
        return epoch < self.probe_epochs

    def rates(self, epoch: int, step: int) -> dict[str, float]:
        """The learning rate of each parameter group (``head``, ``backbone``) at ``step`` of ``epoch``."""
        global_step = epoch * self.steps_per_epoch + step
        warmup = self.warmup_epochs * self.steps_per_epoch
        head = self.lr * lr_factor(global_step, self.total_steps, warmup, self.schedule)
        if self.probing(epoch):
            return {"head": head, "backbone": 0.0}
        # A pretrained backbone hit by the full learning rate on its first step can lose what it knew.
        probe = self.probe_epochs * self.steps_per_epoch
        backbone = self.lr * lr_factor(global_step - probe, self.total_steps - probe, warmup, self.schedule)
        return {"head": head, "backbone": backbone}

    def apply(self, optimizer: torch.optim.Optimizer, epoch: int, step: int) -> None:
        rates = self.rates(epoch, step)
        for group in optimizer.param_groups:
            group["lr"] = rates[group["name"]]

    def epoch_lr(self, epoch: int) -> float:
        """The head's learning rate at the last step of ``epoch``: the ``lr`` reported for it."""
        return self.rates(epoch, self.steps_per_epoch - 1)["head"]


class DataWait:
    """Iterates ``batches`` and adds up how long its consumer waited for them (``waited``, seconds): the time
    a training step stood idle for input, which says whether a run is bound by its data pipeline."""

    def __init__(self, batches: Iterable[Any], clock: Callable[[], float] = time.perf_counter) -> None:
        self._batches, self._clock, self.waited = iter(batches), clock, 0.0

    def __iter__(self) -> DataWait:
        return self

    def __next__(self) -> Any:
        asked = self._clock()
        try:
            return next(self._batches)
        finally:
            self.waited += self._clock() - asked


def train_epoch(
    model: nn.Module,
    batches: Iterable[dict[str, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    schedule: Schedule,
    epoch: int,
    scaler: torch.amp.GradScaler | None = None,
    amp: bool = False,
    limit: int | None = None,
    log_steps: bool = False,
) -> dict[str, float]:
    """One pass over ``batches`` (``image``, ``target``) with the schedule's learning rates; in a probe
    epoch the BatchNorm statistics stay as pretrained. Returns this worker's ``seen``, ``loss_sum``,
    ``correct`` and ``data_wait_s`` (see :class:`DataWait`)."""
    net = getattr(model, "module", model)
    model.train()
    if schedule.probing(epoch):
        for module in net.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
    scaler = scaler or torch.amp.GradScaler("cuda", enabled=False)
    seen, loss_sum, correct = 0, 0.0, 0
    batches = DataWait(batches)
    for step, batch in enumerate(batches):
        if limit and step >= limit:
            break
        schedule.apply(optimizer, epoch, step)
        images, targets = batch["image"], batch["target"]
        with _autocast(images.device, amp):
            logits = model(images)
            loss = nn.functional.cross_entropy(logits.float(), targets)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        seen += len(targets)
        loss_sum += loss.item() * len(targets)
        correct += (logits.argmax(1) == targets).sum().item()
        if log_steps and step % 20 == 0:
            log.info("epoch %d step %d/%d loss %.4f", epoch, step, schedule.steps_per_epoch, loss.item())
    return {"seen": seen, "loss_sum": loss_sum, "correct": correct, "data_wait_s": batches.waited}


def evaluate_batches(
    model: nn.Module, batches: Iterable[dict[str, torch.Tensor]], amp: bool = False
) -> dict[str, float]:
    """Validation loss, accuracy and ROC-AUC over ``batches``, gathered across ranks so that every rank
    computes the same figures (and so takes the same early-stopping decision)."""
    model.eval()
    logits_all, targets_all = [], []
    with torch.inference_mode():
        for batch in batches:
            with _autocast(batch["image"].device, amp):
                logits = model(batch["image"])
            logits_all.append(logits.float().cpu().numpy())
            targets_all.append(batch["target"].cpu().numpy())
    logits_np = np.concatenate(logits_all) if logits_all else np.zeros((0, 2), np.float32)
    targets_np = np.concatenate(targets_all) if targets_all else np.zeros((0,), np.int64)
    logits_np, targets_np = _gather([logits_np, targets_np])
    metrics = binary_metrics(targets_np != 0, ai_probability(logits_np))
    loss = nn.functional.cross_entropy(torch.from_numpy(logits_np), torch.from_numpy(targets_np)).item()
    out = {
        "val_loss": loss,
        "val_acc": metrics["accuracy"],
        "val_auc": metrics["roc_auc"],
        "val_n": len(targets_np),
    }
    if logits_np.shape[1] > 2:
        out["val_class_acc"] = float((logits_np.argmax(1) == targets_np).mean()) if len(targets_np) else 0.0
    return out


def track_best(state: dict[str, Any], metrics: dict[str, Any]) -> bool:
    """Record ``metrics``' epoch in ``state``: the best validation AUC (accuracy when AUC is undefined) and
    the epochs since it improved. Returns True when this epoch is the best so far."""
    auc = metrics["val_auc"] if not math.isnan(metrics["val_auc"]) else metrics["val_acc"]
    improved = auc > state["best_auc"] + 1e-4
    if improved:
        state["best_auc"], state["bad_epochs"] = auc, 0
    else:
        state["bad_epochs"] += 1
    state["epoch"] = metrics["epoch"]
    metrics["best_val_auc"] = state["best_auc"]
    return improved


def save_checkpoint(
    directory: str | Path, net: nn.Module, meta: ArtifactMeta, state: dict[str, Any], optimizer
) -> Path:
    """An artefact (weights + ``genart.json``) plus ``train_state.pt`` (the loop's state and the
    optimizer's) in ``directory``: what :func:`restore` reads back."""
    path = save_artifact(net, meta, directory)
    torch.save({**state, "optimizer": optimizer.state_dict()}, path / STATE_FILE)
    return path


def restore(directory: str | Path, net: nn.Module) -> tuple[dict[str, Any], dict[str, Any]]:
    """Load a :func:`save_checkpoint` directory into ``net``: returns (the loop's state, the optimizer's)."""
    from safetensors.torch import load_file

    net.load_state_dict(load_file(str(Path(directory) / WEIGHTS_FILE)))
    saved = torch.load(Path(directory) / STATE_FILE, map_location="cpu", weights_only=False)
    optimizer_state = saved.pop("optimizer")
    return {**saved, "resumed_from": saved["epoch"]}, optimizer_state


class QuietReports(logging.Filter):
    """Drops Ray Train's INFO line for every report (``Reporting training result N: TrainingReport(...)``).

    Ray Train logs it under a logger named by its source file, outside ``ray.train``, so the level in
    ``RunConfig(logging_config=...)`` does not reach it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or not record.getMessage().startswith(
            "Reporting training result"
        )


def quiet_reports(logger: logging.Logger | None = None) -> None:
    """Keep Ray Train's per-report lines off the console handlers of ``logger`` (the root logger): the
    worker's log files under the Ray session's ``logs/`` still have them."""
    for handler in (logger or logging.getLogger()).handlers:
        console = isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler)
        if console and not any(isinstance(f, QuietReports) for f in handler.filters):
            handler.addFilter(QuietReports())


def epoch_line(metrics: dict[str, Any], epochs: int) -> str:
    """The one progress line per epoch a person reads in the terminal."""
    return (
        f"epoch {metrics['epoch'] + 1}/{epochs} [{metrics['phase']}] train loss {metrics['train_loss']:.4f} "
        f"acc {metrics['train_acc']:.3f} | val loss {metrics['val_loss']:.4f} acc {metrics['val_acc']:.3f} "
        f"auc {metrics['val_auc']:.4f} | {metrics['train_img_s']:.0f} img/s"
        + (f", waiting for data {metrics['data_wait_frac']:.0%}" if "data_wait_frac" in metrics else "")
    )


def train_loop_per_worker(loop_config: dict[str, Any]) -> list[dict[str, Any]]:
    """Ray Train entry point. ``loop_config`` holds the JSON-dumped :class:`GenartConfig` and run details.
    Returns the per-epoch metrics of this attempt (rank 0's become ``Result.return_value``)."""
    import ray.train
    import ray.train.torch

    config = GenartConfig.model_validate(loop_config["config"])
    t = config.train
    if not t.verbose:
        quiet_reports()
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    if device.type == "cpu":
        torch.set_num_threads(max(1, int(t.cpus_per_worker)))
    torch.manual_seed(config.data.seed)

    net, _ = build_from_config(config.model, num_classes=loop_config.get("num_classes", 2))
    state: dict[str, Any] = {"epoch": -1, "best_auc": -1.0, "bad_epochs": 0, "resumed_from": None}
    optimizer_state = None
    if (checkpoint := ray.train.get_checkpoint()) is not None:
        with checkpoint.as_directory() as ckpt_dir:
            saved, optimizer_state = restore(ckpt_dir, net)
        state.update(saved)
        if rank == 0:
            log.warning("resuming from the checkpoint of epoch %d", saved["epoch"])

    model = ray.train.torch.prepare_model(net)
    optimizer = build_optimizer(net, t)
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
    amp = t.mixed_precision and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=amp and not torch.cuda.is_bf16_supported())
    steps_per_epoch = max(1, math.ceil(loop_config["train_rows"] / (t.batch_size * world)))
    schedule = Schedule.from_config(t, min(steps_per_epoch, t.limit_train_batches or steps_per_epoch))
    shards = {split: ray.train.get_dataset_shard(split) for split in ("train", "val")}
    spec = InputSpec.from_dict(loop_config["meta"]["input"])
    mlflow_client = _mlflow_client(loop_config) if rank == 0 else None
    history: list[dict[str, Any]] = list(state.get("history", []))

    # The train shard holds every epoch and is read once (make_dataset, split_epochs); a resumed run takes the
    # epochs it has left from its start.
    shuffle = {"local_shuffle_buffer_size": max(256, t.batch_size * 8),
               "local_shuffle_seed": config.data.seed + rank}  # fmt: skip
    stream = _batches(shards["train"], t.batch_size, device, spec, **shuffle)
    passes = split_epochs(stream, loop_config["train_rows"] / world, t.epochs)
    for epoch, batches in zip(range(state["epoch"] + 1, t.epochs), passes, strict=False):
        started = time.perf_counter()
        counts = train_epoch(
            model, batches, optimizer, schedule, epoch, scaler, amp, t.limit_train_batches,
            log_steps=rank == 0 and t.verbose,
        )  # fmt: skip
        metrics = _epoch_metrics(epoch, schedule, counts, time.perf_counter() - started, state)
        metrics.update(evaluate_batches(model, _batches(shards["val"], t.batch_size, device, spec), amp))
        track_best(state, metrics)
        history.append(metrics)
        state["history"] = history
        _report(metrics, rank, t.epochs, net, loop_config, state, optimizer, mlflow_client)
        if t.early_stop_patience and state["bad_epochs"] >= t.early_stop_patience:
            if rank == 0:
                log.warning("early stop: validation AUC has not improved for %d epochs", state["bad_epochs"])
            break
    return history


def _batches(
    shard: Any, batch_size: int, device: torch.device, spec: InputSpec, **options: Any
) -> Iterator[dict]:
    """This worker's dataset shard as torch batches on ``device``: uint8 images travel, and are normalised
    on the device."""
    for batch in shard.iter_torch_batches(batch_size=batch_size, device=device, dtypes=_DTYPES, **options):
        yield {**batch, "image": normalize(batch["image"], spec)}


def _epoch_metrics(
    epoch: int, schedule: Schedule, counts: dict[str, float], elapsed: float, state: dict[str, Any]
) -> dict[str, Any]:
    keys = ("seen", "loss_sum", "correct", "data_wait_s")
    seen, loss, correct, waits, times = _gather(
        [*(np.array([counts[k]], float) for k in keys), np.array([elapsed])]
    )
    seen, loss, correct = float(seen.sum()), float(loss.sum()), float(correct.sum())
    # Each rank's wait against its own epoch's time (ranks start and end their epochs at different moments).
    wait_frac = float(np.mean(waits / np.maximum(times, 1e-9)))
    return {
        "epoch": epoch,
        "phase": "probe" if schedule.probing(epoch) else "finetune",
        "train_loss": loss / max(1.0, seen),
        "train_acc": correct / max(1.0, seen),
        "lr": schedule.epoch_lr(epoch),
        "epoch_s": elapsed,
        "train_img_s": seen / elapsed if elapsed else 0.0,
        "data_wait_s": float(waits.mean()),  # the ranks' mean, as is the fraction
        "data_wait_frac": wait_frac,
        "resumed_from": -1 if state["resumed_from"] is None else state["resumed_from"],
    }


def _report(metrics, rank, epochs, net, loop_config, state, optimizer, mlflow_client) -> None:
    """Rank 0 prints the epoch's line, logs it to MLflow and reports it with a checkpoint; other ranks
    report the metrics alone."""
    import ray.train

    if rank != 0:
        ray.train.report(metrics)
        return
    log.warning(epoch_line(metrics, epochs))
    if mlflow_client is not None:
        _log_epoch(mlflow_client, loop_config["mlflow"]["run_id"], metrics, metrics["epoch"])
    with tempfile.TemporaryDirectory() as tmp:
        meta = ArtifactMeta.model_validate({**loop_config["meta"], "metrics": _numeric(metrics)})
        save_checkpoint(tmp, net, meta, state, optimizer)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def _numeric(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}


def _mlflow_client(loop_config: dict[str, Any]):
    settings = loop_config.get("mlflow")
    if not settings:
        return None
    from mlflow.tracking import MlflowClient

    os.environ.setdefault("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "false")
    return MlflowClient(tracking_uri=settings["tracking_uri"])


def _log_epoch(client, run_id: str, metrics: dict[str, Any], epoch: int) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    batch = [Metric(k, v, now, epoch) for k, v in _numeric(metrics).items() if not math.isnan(v)]
    try:
        client.log_batch(run_id, metrics=batch)
    except Exception as exc:  # tracking must never kill a training run
        log.warning("MLflow logging failed: %s", exc)
