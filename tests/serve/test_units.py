"""The serving logic that needs no Ray: preprocessing, limits, logs, the client."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from genart.config import DecodeLimits, ServeConfig
from genart.data.transforms import InputSpec
from genart.serve.client import GenartClient, expand_inputs, write_csv
from genart.serve.deployments import Preprocessor, prepare_image, resident_bytes, spec_key
from genart.serve.errors import BadRequest
from genart.serve.logs import JsonFormatter, configure_logging
from genart.serve.middleware import DeadlineMiddleware, LimitsMiddleware, install_error_handlers
from genart.serve.schemas import Prediction
from genart.serve.store import PredictionRecord
from tests.conftest import image_bytes, png_bomb


def test_prepare_image_decodes_once_and_makes_each_spec_tensor() -> None:
    small = InputSpec(input_size=32, crop_policy="crop").to_dict()
    large = InputSpec(input_size=48, crop_policy="resize").to_dict()
    prepared = prepare_image(image_bytes((64, 40)), {"a": small, "b": large})
    assert prepared.error is None and (prepared.width, prepared.height) == (64, 40)
    assert prepared.tensors["a"].shape == (3, 32, 32) and prepared.tensors["b"].shape == (3, 48, 48)
    assert {t.dtype for t in prepared.tensors.values()} == {np.dtype(np.uint8)}  # 1/4 of float32
    assert spec_key(small) == spec_key(InputSpec(input_size=32, crop_policy="crop")) != spec_key(large)


@pytest.mark.parametrize("zoo", ["tiny_residual", "tiny_vit"])  # a native-resolution crop, a resize
def test_a_served_uint8_tensor_scores_as_the_evaluated_float_one(tmp_path, zoo: str) -> None:
    """Serving hands the models uint8 tensors, and the model normalises them (``LoadedModel.logits``);
    evaluation hands it the eval transform's float32. The logits must be the same, bit for bit: a frozen INT8
    encoder quantises its activations on the fly, and an input 2e-7 away can move P(ai) by 0.3."""
    import torch

    from genart.data.transforms import decode_image
    from genart.models.artifact import load_artifact
    from tests.conftest import untrained_artifact

    loaded = load_artifact(untrained_artifact(tmp_path, "m", zoo, seed=0, threshold=0.5))
    data = image_bytes((90, 70), seed=3, fmt="JPEG")
    served = prepare_image(data, {"k": loaded.spec.to_dict()}).tensors["k"]
    evaluated = loaded.transform(decode_image(data))
    assert served.dtype == np.uint8 and evaluated.dtype == torch.float32
    np.testing.assert_array_equal(
        loaded.logits(torch.from_numpy(served[None])), loaded.logits(evaluated[None])
    )


@pytest.mark.parametrize(
    "data, reason",
    [(b"", "empty"), (b"not an image", "not a recognised"), (png_bomb(), "pixels"),
     (image_bytes(fmt="JPEG")[:200], "truncated")],
)  # fmt: skip
def test_prepare_image_reports_bad_bytes_without_raising(data: bytes, reason: str) -> None:
    prepared = prepare_image(
        data, {"a": InputSpec(input_size=32).to_dict()}, DecodeLimits(max_pixels=10_000_000)
    )
    assert prepared.error and reason in prepared.error.lower() and not prepared.tensors


def test_serve_config_refuses_duplicate_model_names() -> None:
    with pytest.raises(ValueError, match="unique"):
        ServeConfig.model_validate({"models": [{"name": "a"}, {"name": "a"}]})


def _guarded_app(limits: dict) -> TestClient:
    app = FastAPI()
    app.add_middleware(LimitsMiddleware)
    install_error_handlers(app)
    app.state.limits = limits

    @app.post("/echo")
    async def echo(body: dict) -> dict:
        return body

    @app.get("/health")
    async def health() -> dict:
        return {"ok": True}

    @app.get("/refuse")
    async def refuse() -> dict:
        raise BadRequest("no, because")

    @app.get("/bug")
    async def bug() -> dict:
        raise RuntimeError("internal detail")

    return TestClient(app, raise_server_exceptions=False)


def test_every_error_becomes_json_with_its_status_and_a_bug_says_nothing_about_internals() -> None:
    client = _guarded_app({})
    counted: list[tuple[str, str]] = []
    client.app.state.ingress = type(
        "Ingress", (), {"count_error": lambda self, c, r: counted.append((c, r))}
    )()
    assert client.get("/refuse").json()["error"] == {
        "code": "bad_request",
        "message": "no, because",
        "status": 400,
    }
    invalid = client.post("/echo", content=b"[1]", headers={"content-type": "application/json"})
    assert invalid.status_code == 422 and invalid.json()["error"]["code"] == "invalid_request"
    assert client.get("/nowhere").json()["error"]["code"] == "not_found"
    assert client.delete("/health").json()["error"]["code"] == "method_not_allowed"
    bug = client.get("/bug")
    assert bug.status_code == 500 and "internal detail" not in bug.text and bug.json()["request_id"]
    assert [c for c, _ in counted] == [
        "bad_request",
        "invalid_request",
        "not_found",
        "method_not_allowed",
        "internal",
    ]


def test_a_prediction_and_its_stored_record_carry_the_same_data() -> None:
    scores = {
        "detector": {"probability": 0.8, "threshold": 0.5, "version": "v1", "latency_ms": 3.0,
                     "batch_size": 2},
        "attributor": {"probability": 0.4, "threshold": 0.6, "version": "v2", "latency_ms": 4.0,
                       "generator": "midjourney", "generator_probability": 0.3},
    }  # fmt: skip
    prediction = Prediction.from_scores(
        scores, 0.6, 0.55, "mean", request_id="r1", latency_ms=9.0, source="upload", filename="a.png",
        sha256="ab" * 32, width=10, height=20,
    )  # fmt: skip
    assert prediction.label == "ai" and prediction.generator == "midjourney"
    assert [m.name for m in prediction.models] == ["detector", "attributor"]
    assert prediction.model_versions == {"detector": "v1", "attributor": "v2"}
    request = prediction.model_dump(
        include={"request_id", "latency_ms", "source", "filename", "sha256", "width", "height"}
    )
    assert Prediction.from_scores(scores, 0.5, 0.55, "mean", **request).label == "nature"
    record = PredictionRecord.from_prediction(prediction, image_bytes=123, url=None)
    assert record.model_probs == {"detector": 0.8, "attributor": 0.4} and record.generator_prob == 0.3
    assert (record.image_sha256, record.image_bytes, record.label, record.threshold) == (
        "ab" * 32,
        123,
        "ai",
        0.55,
    )


def test_limits_middleware_caps_the_body_and_checks_the_api_key() -> None:
    client = _guarded_app({"max_upload_bytes": 100, "api_key": "k"})
    assert client.get("/health").status_code == 200
    assert client.post("/echo", json={"a": 1}).json()["error"]["code"] == "unauthorized"
    assert client.post("/echo", json={"a": 1}, headers={"X-API-Key": "k"}).json() == {"a": 1}
    big = client.post("/echo", json={"a": "x" * 200}, headers={"X-API-Key": "k"})
    assert big.status_code == 413 and big.json()["error"]["code"] == "payload_too_large"


def test_json_logs_carry_extra_fields_and_rotate_into_the_log_dir(tmp_path: Path) -> None:
    configure_logging(tmp_path)
    logging.getLogger("genart.serve.test").info("hello", extra={"request_id": "r1"})
    files = list(tmp_path.glob("genart-serve-*.jsonl"))
    assert len(files) == 1
    entry = json.loads(files[0].read_text().strip().splitlines()[-1])
    assert entry["message"] == "hello" and entry["request_id"] == "r1" and entry["level"] == "INFO"
    record = logging.LogRecord("x", logging.ERROR, "f", 1, "boom %s", ("!",), None)
    assert json.loads(JsonFormatter().format(record))["message"] == "boom !"
    configure_logging(None)


def test_client_expands_folders_and_reports_an_unreachable_api(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(image_bytes())
    (tmp_path / "notes.txt").write_text("skip me")
    inputs = list(expand_inputs([str(tmp_path), "https://example.com/x.jpg"]))
    assert inputs == [str(tmp_path / "a.png"), "https://example.com/x.jpg"]
    with GenartClient("http://127.0.0.1:9", timeout_s=2) as client:
        rows = list(client.predict_many(inputs))
    assert [r["error"] is not None for r in rows] == [True, True]
    assert write_csv(rows, tmp_path / "out.csv").read_text().startswith("input,")


def test_client_turns_api_errors_into_rows() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(422, json={"error": {"code": "invalid_image", "message": "not an image"}})

    client = GenartClient("http://api")
    client.http = httpx.Client(base_url="http://api", transport=httpx.MockTransport(handler))
    row = next(client.predict_many(["https://example.com/a.jpg"]))
    assert row["error"] == "not an image" and row["label"] is None


def test_preprocessor_reports_unhealthy_past_its_memory_cap() -> None:
    preprocessor = Preprocessor.func_or_class()
    preprocessor.memory_cap = 2 * resident_bytes()
    preprocessor.check_health()
    preprocessor.memory_cap = resident_bytes() // 2
    with pytest.raises(RuntimeError, match="above its cap"):
        preprocessor.check_health()
    assert preprocessor.decode_slots >= 1


def test_deadline_middleware_answers_json_504_past_the_deadline_and_503_when_full() -> None:
    app = FastAPI()
    app.add_middleware(DeadlineMiddleware)
    app.state.limits = {"request_deadline_s": 0.2, "max_in_flight": 1}
    gate = asyncio.Event()

    @app.get("/slow")
    async def slow() -> dict:
        await asyncio.sleep(5)
        return {}

    @app.get("/wait")
    async def wait() -> dict:
        await gate.wait()
        return {"waited": True}

    @app.get("/quick")
    async def quick() -> dict:
        return {}

    @app.get("/health")
    async def health() -> dict:
        return {"ok": True}

    with TestClient(app) as client:
        late = client.get("/slow")
        assert late.status_code == 504 and late.json()["error"]["code"] == "deadline_exceeded"
        app.state.limits = {"request_deadline_s": 30, "max_in_flight": 1}
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(client.get, "/wait")
            for _ in range(1000):  # until the waiting request holds the one slot
                if first.done():  # it arrived while a probe held the slot, and was refused: send it again
                    first = pool.submit(client.get, "/wait")
                busy = client.get("/quick")
                if busy.status_code == 503:
                    break
                time.sleep(0.01)
            assert busy.json()["error"]["code"] == "overloaded" and busy.headers["Retry-After"] == "1"
            assert client.get("/health").status_code == 200  # probes are never refused
            client.portal.call(gate.set)
            assert first.result().json() == {"waited": True}


@pytest.mark.ray
def test_memory_cap_falls_back_to_the_default_in_a_driver(ray_cluster) -> None:
    # Only a replica has assigned resources; asking from a driver (this process, with Ray up) must not fail.
    from genart.serve.deployments import memory_cap

    assert memory_cap(12345) == 12345
    test_preprocessor_reports_unhealthy_past_its_memory_cap()


def test_a_model_scores_the_preprocessors_result_as_it_scores_its_tensor(tmp_path: Path) -> None:
    """The ingress hands a model the Preprocessor's whole result (a chained DeploymentResponse) instead of the
    one tensor it used to pick out and forward: the answers must be the same."""
    from genart.serve.deployments import ModelDeployment
    from tests.conftest import untrained_artifact

    artifact = untrained_artifact(tmp_path, "m", "tiny_residual", seed=0, threshold=0.4)
    model = ModelDeployment.func_or_class("m", str(artifact))
    batched = ModelDeployment.func_or_class.infer.__wrapped__  # @serve.batch needs a replica: batches of one

    async def infer(item: tuple) -> dict:
        return (await batched(model, [item]))[0]

    model.infer = infer
    other = InputSpec(input_size=24, crop_policy="resize").to_dict()  # another model's input, prepared too
    specs = {model.key: model.loaded.spec.to_dict(), spec_key(other): other}

    async def both(data: bytes) -> tuple[dict, dict]:
        prepared = prepare_image(data, specs)
        return await model.score(prepared), await model.predict(model.key, prepared.tensors[model.key])

    for seed in range(3):
        data = image_bytes((90, 70), seed=seed)
        chained, direct = asyncio.run(both(data))
        header = chained.pop("image")
        assert chained.keys() == direct.keys()
        assert chained["probability"] == pytest.approx(direct["probability"], abs=1e-6)
        assert {k: v for k, v in chained.items() if k not in ("probability", "latency_ms")} == {
            k: v for k, v in direct.items() if k not in ("probability", "latency_ms")
        }
        assert (header.width, header.height, header.tensors) == (90, 70, {})
        assert header.sha256 == prepare_image(data, specs).sha256
    assert model.usage()["images"] == 6 and model.usage()["cpu_s"] > 0

    unusable = asyncio.run(model.score(prepare_image(b"not an image", specs)))
    assert unusable["error"] == "unprocessable" and unusable["detail"]
    stale = asyncio.run(model.score(prepare_image(image_bytes(seed=9), {spec_key(other): other})))
    assert stale == {"error": "stale_spec", "spec_key": model.key}


def test_the_metric_tally_adds_counts_keeps_observations_and_starts_empty_after_a_drain() -> None:
    from genart.serve.metrics import Tally

    tally = Tally()
    for label in ("ai", "ai", "nature"):
        tally.count("predictions", label=label, model="ensemble")
    tally.observe("stage_latency", 3.0, stage="total")
    tally.observe("stage_latency", 5.0, stage="total")
    counts, observed = tally.drain()
    assert counts == {
        ("predictions", (("label", "ai"), ("model", "ensemble"))): 2.0,
        ("predictions", (("label", "nature"), ("model", "ensemble"))): 1.0,
    }
    total = (("stage", "total"),)
    assert observed == [("stage_latency", 3.0, total), ("stage_latency", 5.0, total)]
    assert tally.drain() == ({}, [])


@pytest.mark.parametrize("path", ["serve_config.yaml", "jobs/serve/wild.yaml"])
def test_the_config_files_give_the_replicas_the_apps_serve_settings(path: str) -> None:
    import yaml

    from genart.serve.app import SERVE_ENV

    app = yaml.safe_load((Path(__file__).parents[2] / path).read_text())["applications"][0]
    assert app["runtime_env"]["env_vars"] == SERVE_ENV


def test_an_ingress_layouts_environment_sets_its_variables_and_clears_the_others() -> None:
    from genart.serve.app import INGRESS_ENV, ingress_environment

    base = {"PATH": "/bin", **INGRESS_ENV["haproxy"]}  # every haproxy variable, left in the shell
    assert ingress_environment("proxy", base) == {"PATH": "/bin"}  # a haproxy shell's leftovers removed
    assert ingress_environment("haproxy", {"PATH": "/bin"}) == {"PATH": "/bin", **INGRESS_ENV["haproxy"]}
    with pytest.raises(ValueError, match="unknown ingress 'nginx'"):
        ingress_environment("nginx", base)
