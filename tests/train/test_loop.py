"""The training loop's steps without Ray: schedule, one epoch, validation, best epoch, checkpoints."""

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from genart.config import TrainConfig
from genart.models.artifact import ArtifactMeta
from genart.models.zoo import build_model, get_entry
from genart.train.loop import (
    DataWait,
    Schedule,
    build_optimizer,
    epoch_line,
    evaluate_batches,
    lr_factor,
    quiet_reports,
    restore,
    save_checkpoint,
    track_best,
    train_epoch,
)


def _optimizer_for(net: nn.Module) -> torch.optim.Optimizer:
    return build_optimizer(net, TrainConfig(lr=1.0, optimizer="sgd", weight_decay=0.0))


def test_lr_schedule_warms_up_then_decays() -> None:
    assert lr_factor(0, 100, 10, "cosine") == pytest.approx(0.1)
    assert lr_factor(10, 100, 10, "cosine") == pytest.approx(1.0)
    assert lr_factor(99, 100, 10, "cosine") < 0.01
    assert lr_factor(50, 90, 0, "step") == pytest.approx(0.1)
    assert lr_factor(70, 100, 0, "constant") == 1.0


def _schedule(**kw) -> Schedule:
    return Schedule(**{"lr": 1.0, "epochs": 4, "steps_per_epoch": 10, "schedule": "constant", **kw})


def test_schedule_freezes_the_backbone_while_probing_then_warms_it_up_from_its_own_start() -> None:
    schedule = _schedule(probe_epochs=1, warmup_epochs=1)
    assert schedule.probing(0) and not schedule.probing(1)
    assert schedule.rates(0, 5) == {"head": pytest.approx(0.6), "backbone": 0.0}
    # at the first fine-tuning step the head is past its warm-up, the backbone starts its own
    assert schedule.rates(1, 0) == {"head": 1.0, "backbone": pytest.approx(0.1)}
    assert schedule.epoch_lr(3) == 1.0


def _batches(n: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [
        {"image": torch.randn(4, 3, 8, 8, generator=g), "target": torch.tensor([0, 1, 0, 1])}
        for _ in range(n)
    ]


def _net() -> nn.Module:
    torch.manual_seed(0)
    return build_model("tiny", pretrained=False, input_size=32)[0]


def test_train_epoch_counts_what_it_saw_and_stops_at_the_limit() -> None:
    net = _net()
    optimizer = _optimizer_for(net)
    counts = train_epoch(net, _batches(5), optimizer, _schedule(), epoch=0, limit=3)
    assert counts["seen"] == 12 and 0 <= counts["correct"] <= 12 and counts["loss_sum"] > 0
    assert {g["name"]: g["lr"] for g in optimizer.param_groups} == {"backbone": 1.0, "head": 1.0}


def test_a_probe_epoch_leaves_the_backbone_and_its_batchnorm_statistics_alone() -> None:
    net = _net()
    before = {k: v.clone() for k, v in net.state_dict().items() if "classifier" not in k}
    train_epoch(net, _batches(2), _optimizer_for(net), _schedule(probe_epochs=1), epoch=0)
    after = net.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())


def test_evaluate_batches_reports_loss_accuracy_and_auc() -> None:
    class Fixed(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            score = x.mean(dim=(1, 2, 3))
            return torch.stack([-score, score], dim=1)

    batches = [{"image": torch.full((2, 3, 4, 4), v), "target": torch.tensor(t)} for v, t in
               (((1.0), [1, 1]), ((-1.0), [0, 0]))]  # fmt: skip
    metrics = evaluate_batches(Fixed(), batches)
    assert metrics["val_acc"] == 1.0 and metrics["val_auc"] == 1.0 and metrics["val_n"] == 4
    assert metrics["val_loss"] == pytest.approx(-math.log(1 / (1 + math.exp(-2))), rel=1e-5)


def test_track_best_counts_epochs_without_improvement() -> None:
    state = {"epoch": -1, "best_auc": -1.0, "bad_epochs": 0}
    assert track_best(state, {"epoch": 0, "val_auc": 0.7, "val_acc": 0.6})
    assert not track_best(state, {"epoch": 1, "val_auc": 0.70001, "val_acc": 0.6})
    metrics = {"epoch": 2, "val_auc": float("nan"), "val_acc": 0.8}  # one class in val: accuracy decides
    assert track_best(state, metrics) and metrics["best_val_auc"] == 0.8
    assert state == {"epoch": 2, "best_auc": 0.8, "bad_epochs": 0}


def test_a_checkpoint_restores_weights_state_and_optimizer(tmp_path: Path) -> None:
    net = _net()
    optimizer = _optimizer_for(net)
    train_epoch(net, _batches(1), optimizer, _schedule(), epoch=0)
    meta = ArtifactMeta(name="tiny", timm_id=get_entry("tiny").timm_id, input={"input_size": 32})
    state = {"epoch": 2, "best_auc": 0.9, "bad_epochs": 1, "history": [{"epoch": 2}]}
    save_checkpoint(tmp_path, net, meta, state, optimizer)
    fresh = _net()
    with torch.no_grad():
        for p in fresh.parameters():
            p.zero_()
    saved, optimizer_state = restore(tmp_path, fresh)
    assert saved == {**state, "resumed_from": 2}
    assert all(
        torch.equal(a, b) for a, b in zip(net.state_dict().values(), fresh.state_dict().values(), strict=True)
    )
    _optimizer_for(fresh).load_state_dict(optimizer_state)


def test_data_wait_adds_up_the_time_spent_asking_for_each_batch_and_the_end() -> None:
    ticks = iter(
        [0.0, 1.0, 5.0, 7.0, 9.0, 9.5]
    )  # asked, got: 1 s; work; asked, got: 2 s; asked, the end: 0.5 s
    waits = DataWait(["a", "b"], clock=lambda: next(ticks))
    assert list(waits) == ["a", "b"] and waits.waited == 3.5


def test_train_epoch_reports_how_long_it_waited_for_data() -> None:
    net = _net()
    counts = train_epoch(net, _batches(2), _optimizer_for(net), _schedule(), epoch=0)
    assert set(counts) == {"seen", "loss_sum", "correct", "data_wait_s"} and counts["data_wait_s"] >= 0


def test_one_line_per_epoch_says_the_figures_a_person_reads() -> None:
    line = epoch_line({"epoch": 0, "phase": "probe", "train_loss": 0.5, "train_acc": 0.75, "val_loss": 0.4,
                       "val_acc": 0.8, "val_auc": 0.9, "train_img_s": 12.3}, epochs=3)  # fmt: skip
    assert line == ("epoch 1/3 [probe] train loss 0.5000 acc 0.750 | val loss 0.4000 acc 0.800 auc 0.9000 | "
                    "12 img/s")  # fmt: skip
    figures = {"epoch": 0, "phase": "probe", "train_loss": 0.5, "train_acc": 0.75, "val_loss": 0.4,
               "val_acc": 0.8, "val_auc": 0.9, "train_img_s": 12.3, "data_wait_frac": 0.084}  # fmt: skip
    waiting = epoch_line(figures, epochs=3)
    assert waiting == line + ", waiting for data 8%"


def test_ray_trains_per_report_lines_stay_off_the_console_but_warnings_and_epoch_lines_do_not() -> None:
    import io
    import logging

    stream = io.StringIO()
    logger = logging.getLogger("genart.test.quiet")
    logger.propagate = False
    logger.addHandler(logging.StreamHandler(stream))
    logger.setLevel(logging.INFO)
    quiet_reports(logger)
    quiet_reports(logger)  # idempotent: one filter per handler
    assert len(logger.handlers[0].filters) == 1
    logger.info("Reporting training result 1: TrainingReport(checkpoint=None, metrics={'epoch': 0})")
    logger.warning("epoch 1/6 [probe] train loss 0.6337")
    logger.warning("Reporting training result 2: something went wrong")
    assert stream.getvalue().splitlines() == [
        "epoch 1/6 [probe] train loss 0.6337",
        "Reporting training result 2: something went wrong",
    ]
