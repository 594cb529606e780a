"""The Serve application: ``build_app(args)`` composes Preprocessor -> one ModelDeployment per model ->
EnsembleIngress. ``serve_config.yaml`` names it as ``genart.serve.app:build_app``.

Deployment names are ``Preprocessor``, ``EnsembleIngress`` and each model's ``name``, so that the config's
``deployments:`` section can set replicas, resources and ``user_config`` (the artefact) per model.
"""

from __future__ import annotations

from typing import Any

from ray.serve import Application

from genart.config import ServeConfig
from genart.serve.deployments import ModelDeployment, Preprocessor
from genart.serve.ingress import EnsembleIngress

__all__ = ["build_app", "compose"]

RESERVED_NAMES = {"Preprocessor", "EnsembleIngress"}


def compose(config: ServeConfig, ingress_options: dict[str, Any] | None = None) -> Application:
    """Bind the deployments for ``config``. ``ingress_options`` go to the ingress' ``.options()``."""
    clash = RESERVED_NAMES & {m.name for m in config.models}
    if clash:
        raise ValueError(f"model names {sorted(clash)} are taken by the app's own deployments")
    preprocessor = Preprocessor.options(user_config={"max_pixels": config.max_pixels}).bind(config.max_pixels)
    models = {
        m.name: ModelDeployment.options(
            name=m.name,
            user_config={
                **({"artifact": m.artifact} if m.artifact else {}),
                "max_batch_size": config.max_batch_size,
                "batch_wait_timeout_s": config.batch_wait_timeout_s,
            },
        ).bind(m.name, None, m.weight)
        for m in config.models
    }
    ingress = EnsembleIngress.options(**(ingress_options or {}))
    return ingress.bind(preprocessor, models, config.model_dump(mode="json"))


def build_app(args: dict[str, Any]) -> Application:
    """The app builder for ``serve run`` / ``serve deploy``: ``args`` is a :class:`ServeConfig`."""
    return compose(ServeConfig.model_validate(args))
