"""The Serve application end to end: `genart serve up` deploys a config to a real Ray cluster through its
dashboard (as `serve deploy` does), and every test talks HTTP to it, with predictions stored in the real
PostgreSQL at DATABASE_URL."""

from __future__ import annotations

import base64
import concurrent.futures
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool
from typer.testing import CliRunner

from genart.cli import app as cli
from tests.conftest import image_bytes, png_bomb
from tests.serve.conftest import API_KEY, MAX_UPLOAD, Live, PostgresServer

pytestmark = [pytest.mark.ray, pytest.mark.db, pytest.mark.slow]


def _upload(data: bytes, name: str = "x.png") -> dict[str, Any]:
    return {"files": {"file": (name, data, "image/png")}}


# -- the API -------------------------------------------------------------------------------------------------
def test_health_reports_every_part_ready_without_an_api_key(live: Live) -> None:
    response = httpx.get(f"{live.api}/health", timeout=30)
    body = response.json()
    assert response.status_code == 200, body
    assert body["status"] == "ok" and body["ready"] and body["live"]
    assert set(body["parts"]) == {"preprocessor", "model:detector", "model:attributor", "store"}
    assert body["parts"]["store"]["detail"]["migrated"] is True


def test_predict_returns_the_ensemble_of_calibrated_member_probabilities(live: Live) -> None:
    with live.client() as client:
        response = client.post("/predict", **_upload(image_bytes((80, 60), seed=1)))
    body = response.json()
    assert response.status_code == 200, body
    members = {m["name"]: m for m in body["models"]}
    assert set(members) == {"detector", "attributor"}
    assert body["probability"] == pytest.approx(
        (members["detector"]["probability"] + members["attributor"]["probability"]) / 2
    )
    assert body["threshold"] == pytest.approx(0.5)  # the members' own thresholds, 0.4 and 0.6, averaged
    assert body["label"] == ("ai" if body["probability"] >= body["threshold"] else "nature")
    assert body["generator"] in {"imagenet_ai_0419_biggan", "imagenet_glide"}
    assert 0 <= body["generator_probability"] <= 1
    assert body["width"] == 80 and body["height"] == 60 and len(body["request_id"]) >= 32
    assert set(body["model_versions"]) == {"detector", "attributor"}


def test_predict_accepts_base64_json_with_the_same_answer_as_multipart(live: Live) -> None:
    data = image_bytes((64, 64), seed=2)
    with live.client() as client:
        multipart = client.post("/predict", **_upload(data)).json()
        as_json = client.post(
            "/predict", json={"image": base64.b64encode(data).decode(), "filename": "a.png"}
        )
    assert as_json.status_code == 200, as_json.text
    assert as_json.json()["probability"] == pytest.approx(multipart["probability"], abs=1e-6)
    assert as_json.json()["sha256"] == multipart["sha256"]


def test_predict_fetches_an_allowed_url_and_refuses_a_redirect_to_cloud_metadata(
    live: Live, image_server: str
) -> None:
    with live.client() as client:
        fetched = client.post("/predict", json={"url": f"{image_server}/img.png"})
        redirected = client.post("/predict", json={"url": f"{image_server}/to-metadata"})
        private = client.post("/predict", json={"url": "http://10.0.0.1/x.png"})
    assert fetched.status_code == 200, fetched.text
    assert fetched.json()["source"] == "url"
    assert redirected.status_code == 400 and redirected.json()["error"]["code"] == "url_refused"
    assert "169.254.169.254" in redirected.json()["error"]["message"]
    assert private.status_code == 400 and "private" in private.json()["error"]["message"]


BAD_UPLOADS = {
    "not_an_image": (b"hello, I am a text file", 422, "invalid_image"),
    "truncated_jpeg": (image_bytes((64, 64), "JPEG")[:300], 422, "invalid_image"),
    "zero_bytes": (b"", 422, "invalid_image"),
    "decompression_bomb": (png_bomb(), 422, "invalid_image"),
    "over_the_size_cap": (b"\x89PNG" + b"\0" * (MAX_UPLOAD + 10), 413, "payload_too_large"),
}


@pytest.mark.parametrize("case", list(BAD_UPLOADS))
def test_predict_rejects_bad_uploads_with_a_4xx_json_error(live: Live, case: str) -> None:
    data, status, code = BAD_UPLOADS[case]
    with live.client() as client:
        response = client.post("/predict", **_upload(data))
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["message"]


BAD_REQUESTS = {
    "wrong_field": (lambda: {"files": {"image": ("x.png", image_bytes(), "image/png")}}, 400, "bad_request"),
    "wrong_content_type": (lambda: {"content": b"abc", "headers": {"Content-Type": "text/plain"}}, 415, None),
    "json_with_url_and_image": (lambda: {"json": {"url": "http://a.example/x", "image": "AAAA"}}, 422, None),
    "json_not_base64": (lambda: {"json": {"image": "not base64 at all!"}}, 400, "bad_request"),
    "json_malformed": (lambda: {"content": b"{", "headers": {"Content-Type": "application/json"}}, 422, None),
    "url_not_http": (lambda: {"json": {"url": "file:///etc/passwd"}}, 400, "url_refused"),
    "url_loopback_name": (lambda: {"json": {"url": "http://metadata.google.internal/"}}, None, None),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_predict_rejects_malformed_requests_with_a_4xx_json_error(live: Live, case: str) -> None:
    make, status, code = BAD_REQUESTS[case]
    with live.client() as client:
        response = client.post("/predict", **make())
    assert 400 <= response.status_code < 500, response.text
    if status:
        assert response.status_code == status, response.text
    if code:
        assert response.json()["error"]["code"] == code


def test_a_chunked_body_over_the_cap_gets_413(live: Live) -> None:
    def chunks():  # a well-formed multipart start, then a file that never ends, with no Content-Length
        yield b'--x\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n'
        for _ in range(MAX_UPLOAD // 65536 + 4):
            yield b"\0" * 65536

    with live.client() as client:
        response = client.post(
            "/predict", content=chunks(), headers={"Content-Type": "multipart/form-data; boundary=x"}
        )
    assert response.status_code == 413, response.text


def test_batch_predict_answers_per_image_and_refuses_empty_or_oversized_batches(live: Live) -> None:
    good = [("files", (f"{i}.png", image_bytes(seed=10 + i), "image/png")) for i in range(2)]
    broken = [("files", ("broken.jpg", b"\xff\xd8\xff garbage", "image/jpeg"))]
    with live.client() as client:
        mixed = client.post("/batch-predict", files=good + broken)
        empty = client.post("/batch-predict", data={"other": "x"})
        too_many = client.post("/batch-predict", files=good * 3)
    assert mixed.status_code == 200, mixed.text
    body = mixed.json()
    assert (body["succeeded"], body["failed"]) == (2, 1)
    assert body["results"][2]["error"]["code"] == "invalid_image"
    assert empty.status_code == 422 and empty.json()["error"]["code"] == "invalid_request"
    assert too_many.status_code == 400 and too_many.json()["error"]["code"] == "batch_too_large"


def test_api_key_guards_everything_but_health(live: Live) -> None:
    with live.client(key=None) as anonymous, live.client(key="wrong") as wrong:
        assert anonymous.post("/predict", **_upload(image_bytes())).status_code == 401
        assert anonymous.get("/models").status_code == 401
        assert anonymous.get("/docs").status_code == 401
        assert wrong.post("/feedback", json={"request_id": "x", "label": "ai"}).status_code == 401
        assert anonymous.get("/health").status_code == 200
    bearer = httpx.get(f"{live.api}/models", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30)
    assert bearer.status_code == 200


def test_models_and_openapi_describe_what_is_deployed(live: Live) -> None:
    with live.client() as client:
        models = client.get("/models").json()
        schema = client.get("/openapi.json").json()
    assert {m["name"] for m in models["models"]} == {"detector", "attributor"}
    trained = {m["name"]: m["trained_on"] for m in models["models"]}
    assert trained["detector"]["generated"] is True and trained["attributor"] == {}  # not recorded
    attributor = next(m for m in models["models"] if m["name"] == "attributor")
    assert attributor["classes"][1:] == ["imagenet_ai_0419_biggan", "imagenet_glide"]
    assert models["threshold"] == pytest.approx(0.5)
    assert {"/predict", "/batch-predict", "/health", "/models", "/feedback"} <= set(schema["paths"])
    assert {"multipart/form-data", "application/json"} <= set(
        schema["paths"]["/predict"]["post"]["requestBody"]["content"]
    )


def test_feedback_is_stored_with_the_prediction_and_unknown_ids_get_404(live: Live) -> None:
    with live.client() as client:
        prediction = client.post("/predict", **_upload(image_bytes(seed=30))).json()
        truth = "nature" if prediction["label"] == "ai" else "ai"
        answer = client.post("/feedback", json={"request_id": prediction["request_id"], "label": truth})
        unknown = client.post("/feedback", json={"request_id": "no-such-request", "label": "ai"})
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"request_id": prediction["request_id"], "label": truth,
                             "predicted": prediction["label"], "correct": False}  # fmt: skip
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "not_found"
    engine = create_engine(live.pg_url, poolclass=NullPool)
    deadline = time.monotonic() + 30
    row = None
    while time.monotonic() < deadline and (row is None or row.feedback_label is None):
        with engine.connect() as connection:
            row = connection.execute(
                text("SELECT label, feedback_label FROM predictions WHERE request_id = :r"),
                {"r": prediction["request_id"]},
            ).first()
        time.sleep(0.3)
    engine.dispose()
    assert row is not None and row.feedback_label == truth and row.label == prediction["label"]


def test_prometheus_metrics_count_predictions_and_stage_latency(live: Live) -> None:
    with live.client() as client:
        assert client.post("/predict", **_upload(image_bytes(seed=40))).status_code == 200
    # The ingress hands its tallies to Ray's metrics once a second and Ray exports them on its own period, so
    # a metric's name can be scraped before its series: wait for the series themselves.
    wanted = ('model="ensemble"', "ray_genart_predictions_total", 'stage="decode"', 'stage="model:detector"')
    deadline = time.monotonic() + 60
    text_ = ""
    while time.monotonic() < deadline:
        text_ = httpx.get(live.metrics, timeout=10).text
        if all(w in text_ for w in wanted):
            break
        time.sleep(2)
    assert [w for w in wanted if w not in text_] == []


# -- operations ----------------------------------------------------------------------------------------------
def test_genart_predict_through_the_api_stores_one_row_per_image(live: Live, tmp_path: Path) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(5):
        (folder / f"{i}.png").write_bytes(image_bytes(seed=100 + i))
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff nope")
    before = live.settled()
    args = ["predict", str(folder), "--url", live.api, "--api-key", API_KEY, "--batch-size", "4"]
    result = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "r.csv")])
    assert result.exit_code == 0, result.output
    assert "5 classified, 1 failed" in result.output
    assert len((tmp_path / "r.csv").read_text().strip().splitlines()) == 7  # header + 6
    assert live.wait_stored(before + 5) == before + 5


def test_serve_status_reports_the_running_application(live: Live) -> None:
    result = CliRunner().invoke(
        cli, ["serve", "status", "--url", live.api, "--dashboard-port", str(live.dashboard_port)]
    )
    assert result.exit_code == 0, result.output
    assert "application genart: RUNNING" in result.output and '"status": "ok"' in result.output


def test_a_new_user_config_swaps_a_model_without_downtime(live: Live) -> None:
    stop = threading.Event()
    codes: list[int] = []

    def traffic() -> None:
        with live.client() as client:
            while not stop.is_set():
                codes.append(client.post("/predict", **_upload(image_bytes(seed=len(codes)))).status_code)

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        workers = [pool.submit(traffic) for _ in range(2)]
        time.sleep(1)
        detector = next(d for d in live.config["applications"][0]["deployments"] if d["name"] == "detector")
        detector["user_config"]["artifact"] = str(live.artifacts["detector_v2"])
        live.redeploy()
        with live.client() as client:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                versions = {m["name"]: m["version"] for m in client.get("/models").json()["models"]}
                if versions["detector"] == "7":
                    break
                time.sleep(0.5)
        time.sleep(1)
        stop.set()
        for worker in workers:
            worker.result()
    assert versions["detector"] == "7"
    assert codes and set(codes) == {200}, f"{len(codes)} requests, codes {sorted(set(codes))}"
    with live.client() as client:
        after = client.post("/predict", **_upload(image_bytes(seed=7))).json()
    assert after["model_versions"]["detector"] == "7" and after["threshold"] == pytest.approx((0.3 + 0.6) / 2)


def test_an_ensemble_artefact_sets_the_served_rule_weights_and_threshold(live: Live, tmp_path: Path) -> None:
    from genart.models.ensemble import EnsembleSpec, save_ensemble

    members = [str(live.artifacts["detector_v2"]), str(live.artifacts["attributor"])]
    spec = EnsembleSpec(members=members, rule="weighted", weights=[0.8, 0.2], threshold=0.123)
    ingress = next(d for d in live.config["applications"][0]["deployments"] if d["name"] == "EnsembleIngress")
    ingress["user_config"] = {"ensemble": str(save_ensemble(spec, tmp_path / "ens"))}
    try:
        live.redeploy()
        with live.client() as client:
            deadline = time.monotonic() + 60
            while client.get("/models").json()["threshold"] != pytest.approx(0.123):
                assert time.monotonic() < deadline, "the ingress never took the ensemble's threshold"
                time.sleep(0.5)
            answer = client.post("/predict", **_upload(image_bytes(seed=11))).json()
        scores = {m["name"]: m["probability"] for m in answer["models"]}
        assert answer["threshold"] == pytest.approx(0.123)
        assert answer["probability"] == pytest.approx(
            0.8 * scores["detector"] + 0.2 * scores["attributor"], abs=1e-6
        )
        assert answer["label"] == ("ai" if answer["probability"] >= 0.123 else "nature")
        # A weight of 0 under `weighted`: that model is not asked (its score could not move P(ai)).
        ingress["user_config"] = {
            "ensemble": None,
            "rule": "weighted",
            "weights": {"detector": 1.0, "attributor": 0.0},
        }
        live.redeploy()
        deadline = time.monotonic() + 60
        with live.client() as client:
            while True:
                answer = client.post("/predict", **_upload(image_bytes(seed=12))).json()
                if [m["name"] for m in answer["models"]] == ["detector"]:
                    break
                assert time.monotonic() < deadline, f"the zero-weight model is still asked: {answer}"
                time.sleep(0.5)
        assert answer["rule"] == "weighted"
        assert answer["probability"] == pytest.approx(answer["models"][0]["probability"], abs=1e-9)
    finally:
        ingress["user_config"] = {
            "ensemble": None,
            "rule": "mean",
            "weights": {"detector": 1.0, "attributor": 1.0},
        }
        live.redeploy()
    with live.client() as client:
        deadline = time.monotonic() + 60
        while client.get("/models").json()["threshold"] != pytest.approx((0.3 + 0.6) / 2):
            assert time.monotonic() < deadline, (
                "without an ensemble the members' thresholds did not come back"
            )
            time.sleep(0.5)


def test_no_prediction_is_lost_while_the_database_is_down(
    live: Live, postgres_server: PostgresServer
) -> None:
    before = live.settled()
    served = 0
    postgres_server.control("stop")
    try:
        with live.client() as client:
            for i in range(12):
                response = client.post("/predict", **_upload(image_bytes(seed=500 + i)))
                assert response.status_code == 200, response.text
                served += 1
            health = httpx.get(f"{live.api}/health", timeout=30).json()
        assert health["status"] == "degraded" and not health["parts"]["store"]["ok"]
        assert health["parts"]["store"]["detail"]["buffered"] >= 1
    finally:
        postgres_server.control("start")
    assert live.wait_stored(before + served, timeout_s=90) == before + served
