"""MLflow set-up in one place: which tracking server, which experiment, and the run of a given name.

Training (rank 0 of the workers and the driver), Tune (the parent run and one child run per trial) and the
CLI's reports all go through these, so they agree on the server and on how a run is found again to resume.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from genart.config import Settings

__all__ = ["absolute_tracking_uri", "named_run", "use_experiment"]


def absolute_tracking_uri(uri: str) -> str:
    """Workers run in other directories: make a relative ``sqlite:///file.db`` absolute."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str(Path(uri[len(prefix) :]).resolve())
    return uri


def use_experiment(experiment: str, uri: str | None = None) -> str:
    """Point MLflow at ``uri`` (default: ``MLFLOW_TRACKING_URI`` or the embedded SQLite file), made absolute,
    and at ``experiment`` (created when missing). Returns the URI, for processes that set up their own."""
    import mlflow

    uri = absolute_tracking_uri(uri or Settings().mlflow_tracking_uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(experiment)
    return uri


def named_run(
    name: str, params: dict[str, Any] | None = None, tags: dict[str, str] | None = None, resume: bool = True
) -> str:
    """The id of the run called ``name`` in the current experiment when ``resume`` and one exists; else of a
    new run of that name, started with ``params`` and ``tags`` and left for others to log into by id."""
    import mlflow

    if resume:
        found = mlflow.search_runs(filter_string=f"tags.mlflow.runName = '{name}'")
        if len(found):
            return str(found["run_id"].iloc[0])
    with mlflow.start_run(run_name=name, tags=tags) as run:
        if params:
            mlflow.log_params(params)
        return run.info.run_id
