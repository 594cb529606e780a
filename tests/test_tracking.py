"""MLflow set-up: one tracking URI for every process, and runs found again by name."""

from pathlib import Path

import mlflow

from genart.tracking import absolute_tracking_uri, named_run, use_experiment


def test_tracking_uri_is_made_absolute_for_workers() -> None:
    assert absolute_tracking_uri("sqlite:///mlflow.db") == f"sqlite:///{Path('mlflow.db').resolve()}"
    assert absolute_tracking_uri("sqlite:////abs/m.db") == "sqlite:////abs/m.db"
    assert absolute_tracking_uri("http://mlflow:5000") == "http://mlflow:5000"


def test_a_named_run_is_found_again_when_resuming_and_started_anew_otherwise(tmp_path: Path) -> None:
    uri = use_experiment("genart-test-tracking", f"sqlite:///{tmp_path / 'm.db'}")
    assert mlflow.get_tracking_uri() == uri
    first = named_run("r1", params={"lr": 0.1}, tags={"genart.kind": "test"})
    assert named_run("r1") == first
    assert named_run("r1", resume=False) != first
    run = mlflow.get_run(first)
    assert run.data.params == {"lr": "0.1"} and run.data.tags["genart.kind"] == "test"
