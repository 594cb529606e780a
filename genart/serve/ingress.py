"""The HTTP API's routes: the EnsembleIngress deployment (FastAPI) and its one classify path.

Each route parses its input and calls :meth:`EnsembleIngress._classify`, which scores the image with every
model, combines them with the ensemble rule (:mod:`genart.models.ensemble`) and labels the result with the
label rule (:mod:`genart.models.predict`). Middleware and the mapping of errors to JSON live in
:mod:`genart.serve.middleware`. Predictions are written to the store off the request path.
"""

import asyncio
import base64
import binascii
import json
import logging
import time
import uuid
from typing import Any

from fastapi import FastAPI, File, Request, UploadFile
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from ray import serve

import genart
from genart.config import ServeConfig, Settings
from genart.models.ensemble import (
    contributing_members,
    default_threshold,
    ensemble_defaults,
    ensemble_verdict,
)
from genart.models.predict import label_for
from genart.serve.errors import (
    APIError,
    BadRequest,
    NotFound,
    ServiceUnavailable,
    UnprocessableImage,
    UnsupportedMediaType,
)
from genart.serve.metrics import save_coverage
from genart.serve.middleware import (
    DeadlineMiddleware,
    LimitsMiddleware,
    current_request_id,
    install_error_handlers,
)
from genart.serve.schemas import (
    BatchItem,
    BatchPrediction,
    ErrorBody,
    Feedback,
    FeedbackResult,
    Health,
    ModelInfo,
    ModelsReport,
    PartHealth,
    Prediction,
    PredictJSON,
)

__all__ = ["EnsembleIngress", "app"]

log = logging.getLogger("genart.serve.ingress")

#: How often the ingress describes its models and flushes its metric tallies, off the request path.
MEMBERS_REFRESH_S = 5.0
METRICS_FLUSH_S = 1.0

app = FastAPI(
    title="genart",
    version=genart.__version__,
    description=(
        "Tells AI-generated images from real photos with an ensemble of detectors. Probabilities are "
        "calibrated on validation data; treat them as evidence, not verdicts. Set `X-API-Key` when the "
        "server has `GENART_API_KEY`."
    ),
    responses={
        400: {"description": "bad request", "model": ErrorBody},
        401: {"description": "missing or wrong API key", "model": ErrorBody},
        413: {"description": "body over the size limit", "model": ErrorBody},
        415: {"description": "unsupported content type", "model": ErrorBody},
        422: {"description": "not a usable image, or a malformed body", "model": ErrorBody},
        503: {"description": "overloaded (Retry-After) or a dependency unavailable", "model": ErrorBody},
        504: {"description": "the request passed the app's deadline", "model": ErrorBody},
    },
)
app.add_middleware(LimitsMiddleware)
install_error_handlers(app)
app.add_middleware(DeadlineMiddleware)  # added last, so outermost: the deadline covers the whole request


_MULTIPART_ONE = {
    "type": "object",
    "required": ["file"],
    "properties": {"file": {"type": "string", "format": "binary", "description": "the image file"}},
}
_PREDICT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": _MULTIPART_ONE},
            "application/json": {"schema": PredictJSON.model_json_schema()},
        },
    }
}


# Serve pickles the routes when @serve.ingress runs: every helper they call must be defined above this.
def _clean_name(name: str | None) -> str | None:
    """A filename fit for a log line and a database column: no path, no control characters, bounded."""
    if not name:
        return None
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    cleaned = "".join(ch for ch in base if ch.isprintable())
    return cleaned[:255] or None


# A request waiting at the ingress costs little (an await; the deadline bounds its wait): 128 leave room for
# ServeConfig.max_in_flight (96), so that 64 clients at once (make bench-serve's top step) get no 503.
@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=128)
@serve.ingress(app)
class EnsembleIngress:
    """Fans each image out to every model concurrently and combines them with the evaluation's rule.

    ``user_config`` (all optional): rule, weights ({model: weight}), threshold, max_upload_bytes,
    max_batch_images, max_pixels, url_timeout_s, url_allowlist.
    """

    def __init__(self, preprocessor: Any, models: dict[str, Any], config: dict[str, Any]) -> None:
        from genart.serve.logs import configure_logging
        from genart.serve.metrics import ServeMetrics
        from genart.serve.store import PredictionStore, StoreWriter

        self.settings = Settings()
        configure_logging(self.settings.log_dir)
        self.config = ServeConfig.model_validate(config)
        self.preprocessor = preprocessor
        self.models = models
        self.weights = {m.name: m.weight for m in self.config.models}
        self.metrics = ServeMetrics()
        self.store = PredictionStore(self.settings.database_url)
        self.writer = StoreWriter(
            self.store,
            max_buffer=self.config.store_buffer,
            spill_path=(self.settings.log_dir / "dropped-predictions.jsonl")
            if self.settings.log_dir
            else None,
            on_write_error=lambda exc: self.metrics.store_failures.inc(),
            on_drop=lambda record: self.metrics.store_dropped.inc(),
            spool=self._open_spool(),
        )
        self.migrated = False
        self._members: dict[str, dict[str, Any]] = {}
        self._background: set[asyncio.Task] = set()
        self._apply_limits()
        if self.config.ensemble:
            self.reconfigure({})
        app.state.ingress = self
        log.info("ingress up: models %s, store %s", list(models), self.store.url)

    def _open_spool(self) -> Any:
        """The durable spool under GENART_DATA_DIR; without one (read-only disk) the buffer is memory only."""
        import sqlite3

        from genart.serve.store import Spool

        try:
            spool = Spool.for_database(self.settings.data_dir, self.settings.database_url)
        except (OSError, sqlite3.Error) as exc:
            log.error(
                "no prediction spool in %s (%s): buffered predictions die with this replica",
                self.settings.data_dir,
                exc,
            )
            return None
        log.info("prediction spool: %s", spool.path)
        return spool

    # -- configuration -----------------------------------------------------------------------------------
    def reconfigure(self, user_config: dict[str, Any]) -> None:
        update = dict(user_config or {})
        ensemble = update.get("ensemble", self.config.ensemble)
        explicit = {k: v for k, v in update.items() if v is not None}
        if ensemble:  # the ensemble artefact's choices, under whatever the user_config sets explicitly
            update = {**ensemble_defaults(ensemble, [m.name for m in self.config.models]), **explicit}
        else:  # null means "the default"; for the threshold, the members' thresholds averaged by the rule
            cleared = {k: None for k in ("threshold", "ensemble") if k in update}
            if self.config.ensemble and "threshold" not in explicit:
                cleared["threshold"] = None  # the ensemble's threshold leaves with it
            update = {**explicit, **cleared}
        weights = update.pop("weights", None)
        if weights:
            unknown = set(weights) - set(self.models)
            if unknown:
                raise ValueError(f"weights for models not in this app: {sorted(unknown)}")
            self.weights.update({k: float(v) for k, v in weights.items()})
        self.config = self.config.model_copy(update=ServeConfig.model_validate(
            {**self.config.model_dump(), **update}
        ).model_dump(exclude={"models"}))  # fmt: skip
        self._apply_limits()
        self._members = {}  # the next request describes the models again
        log.info("ingress reconfigured: rule %s, threshold %s", self.config.rule, self.config.threshold)

    def _apply_limits(self) -> None:
        app.state.limits = {
            "max_upload_bytes": self.config.max_upload_bytes,
            "api_key": self.settings.api_key,
            "request_deadline_s": self.config.request_deadline_s,
            "max_in_flight": self.config.max_in_flight,
        }

    def count_error(self, code: str, route: str) -> None:
        self.metrics.errors.inc(tags={"code": code, "route": route})

    # -- background work ---------------------------------------------------------------------------------
    async def _ensure_started(self) -> None:
        await self.writer.start()
        running = {t.get_name() for t in self._background}
        wanted = {"members": self._keep_members, "metrics": self._flush_metrics}
        if not self.migrated:
            wanted["migrate"] = self._migrate
        for name, work in wanted.items():
            if name not in running:
                task = asyncio.create_task(work(), name=name)
                self._background.add(task)
                task.add_done_callback(self._background.discard)

    async def _flush_metrics(self) -> None:
        """Hand the request path's tallies to Ray's metrics once a second: a Ray metric record costs the
        request path tens of microseconds, and a prediction makes about ten of them."""
        while True:
            await asyncio.sleep(METRICS_FLUSH_S)
            self.metrics.store_buffer.set(self.writer.depth)
            try:
                self.metrics.flush()
            except Exception:  # metrics must never take the ingress down
                log.exception("could not record the metrics")

    async def _migrate(self) -> None:
        """Bring the store's schema up to date, retrying while the database is down."""
        delay = 0.5
        while not self.migrated:
            try:
                await asyncio.to_thread(self.store.upgrade)
                self.migrated = True
            except Exception as exc:  # the database may be down; the writer buffers meanwhile
                log.warning("store migration failed, retrying in %.0f s: %s", delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    async def check_health(self) -> None:
        """Serve restarts a replica whose check fails. The store being down is not a reason: this replica
        holds the buffered predictions, so only a dead writer or an overflowing buffer fails the check."""
        save_coverage()
        await self._ensure_started()
        self.metrics.store_buffer.set(self.writer.depth)
        if self.writer.depth >= self.config.store_buffer:
            fate = "wait in the spool" if self.writer.spool is not None else "are being dropped"
            log.error("store buffer full (%d): predictions %s", self.writer.depth, fate)

    async def __del__(self) -> None:
        """Serve awaits this on graceful shutdown: write what is still buffered."""
        await self.writer.close(timeout_s=10.0)
        save_coverage()

    # -- the models --------------------------------------------------------------------------------------
    async def _describe_members(self) -> dict[str, dict[str, Any]]:
        names = list(self.models)
        described = await asyncio.gather(*(self.models[n].describe.remote() for n in names))
        self._members = dict(zip(names, described, strict=True))
        return self._members

    def _contributing(self, names: list[str]) -> list[str]:
        """The models whose scores can move P(ai) under the rule in force: under ``weighted``, a model with
        weight 0 is not asked at all (nor is its input prepared)."""
        weights = [self.weights.get(n, 1.0) for n in names]
        return [names[i] for i in contributing_members(self.config.rule, weights, len(names))]

    async def _keep_members(self) -> None:
        """Describe the models every few seconds, off the request path: a request reads what is known, and
        refreshes it itself only when a model answers that it was swapped (``stale_spec``)."""
        while True:
            await asyncio.sleep(MEMBERS_REFRESH_S)
            try:
                await self._describe_members()
            except Exception as exc:  # a model replica restarting: keep what is known, try again later
                log.warning("could not describe the models: %s", exc)

    async def _member_info(self, refresh: bool = False) -> dict[str, dict[str, Any]]:
        members = self._members
        if refresh or not members:
            members = await self._describe_members()
        missing = [n for n, d in members.items() if not d.get("loaded")]
        if missing:
            if not refresh:  # what is known may be older than the models' loading
                return await self._member_info(refresh=True)
            raise ServiceUnavailable(f"models not loaded yet: {missing}; set their 'artifact' in user_config")
        return members

    async def _score(self, data: bytes) -> tuple[Any, dict[str, dict[str, Any]]]:
        """The score for ``data`` of each model that can move P(ai) (:meth:`_contributing`), and the image's
        header (size, hash, decoding time).

        The Preprocessor's response is handed to the model calls unawaited: Serve passes each model the
        object-store reference, so the tensors never travel through this replica."""
        for attempt in range(3):
            members = await self._member_info(refresh=attempt > 0)
            names = self._contributing(list(members))
            specs = {members[n]["spec_key"]: members[n]["input"] for n in names}
            prepared = self.preprocessor.prepare.remote(data, specs)
            results = await asyncio.gather(*(self.models[n].score.remote(prepared) for n in names))
            scores = dict(zip(names, results, strict=True))
            unusable = next((r for r in results if r.get("error") == "unprocessable"), None)
            if unusable is not None:
                raise UnprocessableImage(unusable["detail"])
            if not any(r.get("error") in ("stale_spec", "not_loaded") for r in results):
                failed = {n: r for n, r in scores.items() if "error" in r}
                if failed:
                    raise ServiceUnavailable(f"a model could not answer: {failed}")
                header = next(iter(results))["image"]
                return header, {n: {k: v for k, v in r.items() if k != "image"} for n, r in scores.items()}
            log.info("a model was swapped mid-request; preparing again")
        raise ServiceUnavailable("models are being swapped; retry")

    async def _classify(
        self,
        data: bytes,
        source: str,
        filename: str | None = None,
        url: str | None = None,
        request_id: str | None = None,
    ) -> Prediction:
        from genart.serve.store import PredictionRecord

        await self._ensure_started()
        start = time.perf_counter()
        prepared, scores = await self._score(data)
        t0 = time.perf_counter()
        probability, threshold = ensemble_verdict(
            [s["probability"] for s in scores.values()],
            [s["threshold"] for s in scores.values()],
            [self.weights.get(n, 1.0) for n in scores],
            self.config.rule,
            self.config.threshold,
        )
        ensemble_ms = (time.perf_counter() - t0) * 1000
        prediction = Prediction.from_scores(
            scores, probability, threshold, self.config.rule,
            request_id=request_id or current_request_id(), latency_ms=(time.perf_counter() - start) * 1000,
            source=source, filename=filename, sha256=prepared.sha256, width=prepared.width,
            height=prepared.height,
        )  # fmt: skip
        self.writer.submit(
            PredictionRecord.from_prediction(prediction, image_bytes=prepared.size_bytes, url=url)
        )
        self._observe(prediction, prepared.decode_ms, ensemble_ms)
        log.info(
            "predicted %s p=%.4f", prediction.label, probability,
            extra={"request_id": prediction.request_id, "source": source,
                   "latency_ms": round(prediction.latency_ms, 2)},
        )  # fmt: skip
        return prediction

    def _observe(self, p: Prediction, decode_ms: float, ensemble_ms: float) -> None:
        tally = self.metrics.tally
        tally.count("predictions", label=p.label, model="ensemble")
        tally.observe("stage_latency", decode_ms, stage="decode")
        tally.observe("stage_latency", ensemble_ms, stage="ensemble")
        tally.observe("stage_latency", p.latency_ms, stage="total")
        for score in p.models:
            tally.count("predictions", label=label_for(score.probability, score.threshold), model=score.name)
            tally.observe("stage_latency", score.latency_ms, stage=f"model:{score.name}")

    async def _fetch(self, url: str) -> bytes:
        from genart.serve.fetch import fetch_image

        fetched = await fetch_image(
            url,
            max_bytes=self.config.max_upload_bytes,
            timeout_s=self.config.url_timeout_s,
            allow=self.config.url_allowlist,
        )
        return fetched.data

    # -- routes ------------------------------------------------------------------------------------------
    @app.post(
        "/predict",
        response_model=Prediction,
        summary="Classify one image: a multipart `file`, or JSON with `url` or base64 `image`",
        openapi_extra=_PREDICT_BODY,
    )
    async def predict(self, request: Request) -> Prediction:
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type == "multipart/form-data":
            try:
                form = await request.form(max_files=1, max_fields=4)
            except Exception as exc:  # Starlette's parser: malformed multipart, too many parts
                raise BadRequest(f"cannot parse the multipart body: {exc}") from exc
            upload = form.get("file")
            if not isinstance(upload, UploadFile) and not hasattr(upload, "read"):
                raise BadRequest(
                    f"send the image as the multipart file field 'file' (got fields {list(form)})"
                )
            data = await upload.read()
            return await self._classify(data, "upload", filename=_clean_name(upload.filename))
        if content_type == "application/json":
            try:
                body = PredictJSON.model_validate(json.loads(await request.body()))
            except (ValueError, ValidationError, RecursionError) as exc:  # RecursionError: deep nesting
                raise APIError(
                    f"invalid JSON body: {str(exc)[:500]}", status=422, code="invalid_request"
                ) from exc
            if body.url is not None:
                data = await self._fetch(body.url)
                return await self._classify(data, "url", filename=_clean_name(body.filename), url=body.url)
            try:
                data = base64.b64decode(body.image or "", validate=True)
            except (binascii.Error, ValueError) as exc:
                raise BadRequest(f"'image' is not valid base64: {exc}") from exc
            return await self._classify(data, "upload", filename=_clean_name(body.filename))
        raise UnsupportedMediaType(
            f"content type {content_type or 'none'!r} is not accepted: use multipart/form-data "
            "with a 'file' field, or application/json with 'url' or 'image'"
        )

    @app.post("/batch-predict", response_model=BatchPrediction, summary="Classify up to N uploaded images")
    async def batch_predict(
        self, files: list[UploadFile] = File(description="the images")
    ) -> BatchPrediction:
        cap = self.config.max_batch_images
        if not files:
            raise BadRequest("the batch is empty: send one or more 'files' fields")
        if len(files) > cap:
            raise BadRequest(
                f"the batch has {len(files)} images; at most {cap} are accepted", code="batch_too_large"
            )

        async def one(upload: UploadFile) -> BatchItem:
            name = _clean_name(upload.filename)
            try:
                data = await upload.read()
                prediction = await self._classify(data, "upload", filename=name, request_id=uuid.uuid4().hex)
                return BatchItem(filename=name, prediction=prediction)
            except APIError as exc:
                self.count_error(exc.code, "/batch-predict")
                return BatchItem(filename=name, error=ErrorBody(**exc.to_dict()["error"]))

        items = await asyncio.gather(*(one(f) for f in files))
        failed = sum(item.error is not None for item in items)
        if failed == len(items):
            raise UnprocessableImage(
                "no image in the batch could be used: "
                + "; ".join(f"{i.filename}: {i.error.message}" for i in items)
            )
        return BatchPrediction(results=items, succeeded=len(items) - failed, failed=failed)

    @app.get("/health", response_model=Health, summary="Liveness, and readiness per part (no API key needed)")
    async def health(self) -> JSONResponse:
        await self._ensure_started()
        parts: dict[str, PartHealth] = {}
        try:
            await asyncio.wait_for(self.preprocessor.ping.remote(), 5)
            parts["preprocessor"] = PartHealth(ok=True)
        except Exception as exc:
            parts["preprocessor"] = PartHealth(ok=False, detail={"error": str(exc)})
        for name, handle in self.models.items():
            try:
                d = await asyncio.wait_for(handle.describe.remote(), 5)
                parts[f"model:{name}"] = PartHealth(
                    ok=bool(d.get("loaded")), detail={"version": d.get("version"), "source": d.get("source")}
                )
            except Exception as exc:
                parts[f"model:{name}"] = PartHealth(ok=False, detail={"error": str(exc)})
        store_detail: dict[str, Any] = {
            "url": self.store.url,
            "migrated": self.migrated,
            "buffered": self.writer.depth,
            "written": self.writer.written,
            "dropped": self.writer.dropped,
            "last_error": self.writer.last_error,
        }
        try:
            await asyncio.wait_for(asyncio.to_thread(self.store.ping), 5)
            store_ok = self.migrated
        except Exception as exc:
            store_ok, store_detail["error"] = False, str(exc)
        parts["store"] = PartHealth(ok=store_ok, detail=store_detail)
        serving = all(p.ok for k, p in parts.items() if k != "store")
        status = "unavailable" if not serving else ("ok" if store_ok else "degraded")
        health = Health(status=status, live=True, ready=serving, parts=parts)
        return JSONResponse(health.model_dump(), status_code=200 if serving else 503)

    @app.get(
        "/models", response_model=ModelsReport, summary="What is deployed: versions, thresholds, metrics"
    )
    async def list_models(self) -> ModelsReport:
        members = await self._member_info(refresh=True)
        names = list(members)
        weights = [self.weights.get(n, 1.0) for n in names]
        threshold = self.config.threshold
        if threshold is None:
            threshold = default_threshold(self.config.rule, [members[n]["threshold"] for n in names], weights)
        return ModelsReport(
            rule=self.config.rule,
            threshold=threshold,
            models=[
                ModelInfo(
                    **{k: v for k, v in members[n].items() if k in ModelInfo.model_fields and k != "weight"},
                    weight=w,
                )
                for n, w in zip(names, weights, strict=True)
            ],
        )

    @app.post("/feedback", response_model=FeedbackResult, summary="The true label of a past request_id")
    async def feedback(self, body: Feedback) -> FeedbackResult:
        from genart.serve.store import StoreUnavailable

        await self._ensure_started()
        pending = self.writer.pending(body.request_id)
        if pending is not None and self.writer.set_pending_feedback(body.request_id, body.label):
            predicted = pending.label
        else:
            try:
                row = await asyncio.to_thread(self.store.get, body.request_id)
                if row is None:
                    raise NotFound(f"no prediction with request_id {body.request_id!r}")
                await asyncio.to_thread(self.store.set_feedback, body.request_id, body.label)
            except StoreUnavailable as exc:
                raise ServiceUnavailable(f"the prediction store is unreachable; retry later ({exc})") from exc
            predicted = row["label"]
        correct = predicted == body.label
        self.metrics.feedback.inc(tags={"correct": str(correct).lower()})
        try:
            accuracy, _ = await asyncio.to_thread(self.store.online_accuracy)
            if accuracy is not None:
                self.metrics.online_accuracy.set(accuracy)
        except StoreUnavailable:
            pass  # the gauge catches up with the next feedback
        return FeedbackResult(
            request_id=body.request_id, label=body.label, predicted=predicted, correct=correct
        )
