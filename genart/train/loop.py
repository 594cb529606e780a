"""The per-worker training loop run by Ray Train: DDP on CPU or GPU, checkpoints, resume, early stopping.

Each epoch every worker trains on its shard, evaluates its shard of the validation set, and the
predictions are gathered so that every rank computes the same ROC-AUC (and so takes the same early-stopping
decision). Rank 0 writes the checkpoint, an artefact directory plus ``train_state.pt``, and logs to
MLflow; no other rank touches MLflow.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from genart.config import GenartConfig
from genart.evaluate.metrics import binary_metrics
from genart.models.artifact import WEIGHTS_FILE, ArtifactMeta, save_artifact
from genart.models.predict import ai_probability
from genart.models.zoo import build_from_config

__all__ = ["STATE_FILE", "lr_factor", "train_loop_per_worker"]

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


def _optimizer(model: nn.Module, config: GenartConfig) -> torch.optim.Optimizer:
    head = _head_parameter_ids(model)
    groups = [
        {"params": [p for p in model.parameters() if id(p) not in head], "name": "backbone"},
        {"params": [p for p in model.parameters() if id(p) in head], "name": "head"},
    ]
    t = config.train
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


def _evaluate(model: nn.Module, shard, batch_size: int, device: torch.device, amp: bool) -> dict[str, float]:
    model.eval()
    logits_all, targets_all = [], []
    with torch.inference_mode():
        for batch in shard.iter_torch_batches(batch_size=batch_size, device=device, dtypes=_DTYPES):
            with _autocast(device, amp):
                logits = model(batch["image"])
            logits_all.append(logits.float().cpu().numpy())
            targets_all.append(batch["target"].cpu().numpy())
    logits_np = np.concatenate(logits_all) if logits_all else np.zeros((0, 2), np.float32)
    targets_np = np.concatenate(targets_all) if targets_all else np.zeros((0,), np.int64)
    logits_np, targets_np = _gather([logits_np, targets_np])
    probs = ai_probability(logits_np)
    metrics = binary_metrics(targets_np != 0, probs)
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


_DTYPES = {"image": torch.float32, "target": torch.int64}


def train_loop_per_worker(loop_config: dict[str, Any]) -> list[dict[str, Any]]:
    """Ray Train entry point. ``loop_config`` holds the JSON-dumped :class:`GenartConfig` and run details.

    Returns the per-epoch metrics of this attempt (rank 0's become ``Result.return_value``).
    """
    import ray.train
    import ray.train.torch

    config = GenartConfig.model_validate(loop_config["config"])
    t = config.train
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    if device.type == "cpu":
        torch.set_num_threads(max(1, int(t.cpus_per_worker)))
    torch.manual_seed(config.data.seed)

    net, _ = build_from_config(config.model, num_classes=loop_config.get("num_classes", 2))
    state: dict[str, Any] = {"epoch": -1, "best_auc": -1.0, "bad_epochs": 0, "resumed_from": None}
    checkpoint = ray.train.get_checkpoint()
    optimizer_state = None
    if checkpoint is not None:
        from safetensors.torch import load_file

        with checkpoint.as_directory() as ckpt_dir:
            net.load_state_dict(load_file(str(Path(ckpt_dir) / WEIGHTS_FILE)))
            saved = torch.load(Path(ckpt_dir) / STATE_FILE, map_location="cpu", weights_only=False)
        optimizer_state = saved.pop("optimizer")
        state.update(saved)
        state["resumed_from"] = saved["epoch"]
        if rank == 0:
            log.warning("resuming from the checkpoint of epoch %d", saved["epoch"])

    model = ray.train.torch.prepare_model(net)
    optimizer = _optimizer(net, config)
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
    amp = t.mixed_precision and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=amp and not torch.cuda.is_bf16_supported())
    loss_fn = nn.CrossEntropyLoss()

    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val")
    steps_per_epoch = max(1, math.ceil(loop_config["train_rows"] / (t.batch_size * world)))
    if t.limit_train_batches:
        steps_per_epoch = min(steps_per_epoch, t.limit_train_batches)
    total_steps = steps_per_epoch * t.epochs
    mlflow_client = _mlflow_client(loop_config) if rank == 0 else None
    history: list[dict[str, Any]] = list(state.get("history", []))

    for epoch in range(state["epoch"] + 1, t.epochs):
        probing = epoch < t.probe_epochs
        model.train()
        if probing:  # linear probe: the backbone's BatchNorm statistics stay as pretrained
            for module in net.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        started, seen, loss_sum, correct = time.perf_counter(), 0, 0.0, 0
        for step, batch in enumerate(
            train_shard.iter_torch_batches(
                batch_size=t.batch_size,
                device=device,
                dtypes=_DTYPES,
                local_shuffle_buffer_size=max(256, t.batch_size * 8),
                local_shuffle_seed=config.data.seed + epoch * world + rank,
            )
        ):
            if t.limit_train_batches and step >= t.limit_train_batches:
                break
            global_step = epoch * steps_per_epoch + step
            warmup = t.warmup_epochs * steps_per_epoch
            head_factor = lr_factor(global_step, total_steps, warmup, t.schedule)
            # The backbone's schedule starts when it is unfrozen, warm-up included: a pretrained backbone
            # hit by the full learning rate on its first step can lose what it knew.
            probe_steps = t.probe_epochs * steps_per_epoch
            backbone_factor = lr_factor(
                global_step - probe_steps, total_steps - probe_steps, warmup, t.schedule
            )
            for group in optimizer.param_groups:
                if group["name"] == "head":
                    group["lr"] = t.lr * head_factor
                else:
                    group["lr"] = 0.0 if probing else t.lr * backbone_factor
            images, targets = batch["image"], batch["target"]
            with _autocast(device, amp):
                logits = model(images)
                loss = loss_fn(logits.float(), targets)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            seen += len(targets)
            loss_sum += loss.item() * len(targets)
            correct += (logits.argmax(1) == targets).sum().item()
            if rank == 0 and step % 20 == 0:
                log.info("epoch %d step %d/%d loss %.4f", epoch, step, steps_per_epoch, loss.item())
        seen_all, loss_all, correct_all = (
            float(x.sum()) for x in _gather([np.array([seen]), np.array([loss_sum]), np.array([correct])])
        )
        elapsed = time.perf_counter() - started
        metrics: dict[str, Any] = {
            "epoch": epoch,
            "phase": "probe" if probing else "finetune",
            "train_loss": loss_all / max(1.0, seen_all),
            "train_acc": correct_all / max(1.0, seen_all),
            "lr": t.lr
            * lr_factor(
                (epoch + 1) * steps_per_epoch - 1, total_steps, t.warmup_epochs * steps_per_epoch, t.schedule
            ),
            "epoch_s": elapsed,
            "train_img_s": seen_all / elapsed if elapsed else 0.0,
            "resumed_from": -1 if state["resumed_from"] is None else state["resumed_from"],
        }
        metrics.update(_evaluate(model, val_shard, t.batch_size, device, amp))
        auc = metrics["val_auc"] if not math.isnan(metrics["val_auc"]) else metrics["val_acc"]
        if auc > state["best_auc"] + 1e-4:
            state["best_auc"], state["bad_epochs"] = auc, 0
        else:
            state["bad_epochs"] += 1
        state["epoch"] = epoch
        metrics["best_val_auc"] = state["best_auc"]
        history.append(metrics)
        state["history"] = history

        if rank == 0:
            log.warning(
                "epoch %d/%d [%s] train loss %.4f acc %.3f | val loss %.4f acc %.3f auc %.4f | %.0f img/s",
                epoch + 1, t.epochs, metrics["phase"], metrics["train_loss"], metrics["train_acc"],
                metrics["val_loss"], metrics["val_acc"], metrics["val_auc"], metrics["train_img_s"],
            )  # fmt: skip
            if mlflow_client is not None:
                _log_epoch(mlflow_client, loop_config["mlflow"]["run_id"], metrics, epoch)
            with tempfile.TemporaryDirectory() as tmp:
                meta = ArtifactMeta.model_validate({**loop_config["meta"], "metrics": _numeric(metrics)})
                save_artifact(net, meta, tmp)
                torch.save({**state, "optimizer": optimizer.state_dict()}, Path(tmp) / STATE_FILE)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
        else:
            ray.train.report(metrics)
        if t.early_stop_patience and state["bad_epochs"] >= t.early_stop_patience:
            if rank == 0:
                log.warning("early stop: validation AUC has not improved for %d epochs", state["bad_epochs"])
            break
    return history


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
