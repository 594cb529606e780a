from pathlib import Path

import pytest

from genart.train.loop import lr_factor
from genart.train.trainer import absolute_tracking_uri


def test_lr_schedule_warms_up_then_decays() -> None:
    assert lr_factor(0, 100, 10, "cosine") == pytest.approx(0.1)
    assert lr_factor(10, 100, 10, "cosine") == pytest.approx(1.0)
    assert lr_factor(99, 100, 10, "cosine") < 0.01
    assert lr_factor(50, 90, 0, "step") == pytest.approx(0.1)
    assert lr_factor(70, 100, 0, "constant") == 1.0


def test_tracking_uri_is_made_absolute_for_workers() -> None:
    assert absolute_tracking_uri("sqlite:///mlflow.db") == f"sqlite:///{Path('mlflow.db').resolve()}"
    assert absolute_tracking_uri("sqlite:////abs/m.db") == "sqlite:////abs/m.db"
    assert absolute_tracking_uri("http://mlflow:5000") == "http://mlflow:5000"
