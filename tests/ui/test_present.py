"""What the web demo shows, without Streamlit or a server: readable errors, the verdict card, the gauge, the
bars and the CSV, all built from API answers."""

from __future__ import annotations

import csv
import io
import xml.etree.ElementTree as ET
from typing import Any

import httpx
import pytest

from genart.serve.client import csv_text, result_row, write_csv
from genart.ui import present
from tests.conftest import image_bytes

PREDICTION: dict[str, Any] = {
    "request_id": "r1",
    "label": "ai",
    "probability": 0.81234,
    "threshold": 0.5,
    "rule": "mean",
    "models": [
        {"name": "lite0", "version": "3", "probability": 0.9, "threshold": 0.4, "latency_ms": 3.0},
        {"name": "<b>x</b>", "version": "abc", "probability": 0.72468, "threshold": 0.6, "latency_ms": 2.0},
    ],
    "generator": "imagenet_glide",
    "generator_probability": 0.61,
    "latency_ms": 9.5,
    "width": 64,
    "height": 48,
}


def test_verdict_card_states_label_probability_and_threshold_and_escapes_what_came_from_outside() -> None:
    card = present.verdict_html({**PREDICTION, "generator": "<script>x</script>"})
    assert 'data-label="ai" data-probability="0.812"' in card
    assert "Leans AI-generated" in card and "threshold <b>0.500</b>" in card and "(mean of 2 models)" in card
    assert "<script>" not in card and "&lt;script&gt;" in card
    assert "strong evidence" in card


@pytest.mark.parametrize(
    ("p", "t", "words"),
    [(0.55, 0.5, "weak evidence"), (0.25, 0.5, "moderate"), (0.99, 0.5, "strong"), (0.45, 0.5, "weak")],
)
def test_evidence_grows_with_the_distance_from_the_threshold(p: float, t: float, words: str) -> None:
    assert words in present.evidence(p, t)


@pytest.mark.parametrize(("p", "t"), [(0.0, 0.5), (0.3, 0.5), (0.5, 0.5), (1.0, 0.02)])
def test_gauge_is_well_formed_svg_coloured_by_the_side_of_the_threshold(p: float, t: float) -> None:
    svg = present.gauge_svg(p, t)
    root = ET.fromstring(svg)
    paths = root.findall(".//{http://www.w3.org/2000/svg}path")
    assert len(paths) == (1 if p == 0 else 2)
    if p:
        assert paths[1].get("stroke") == (present.AI_COLOUR if p >= t else present.NATURE_COLOUR)
    assert f">{present.fmt_p(p)}<" in svg and f"threshold {present.fmt_p(t)}" in svg
    assert present.gauge_html(p, t).startswith('<img class="ga-gauge" src="data:image/svg+xml;base64,')


def test_model_bars_show_each_models_probability_and_threshold_escaped() -> None:
    bars = present.model_bars_html(PREDICTION["models"])
    assert "width:90.0%" in bars and "left:calc(40.0% - 1px)" in bars and ">0.900<" in bars
    assert "&lt;b&gt;x&lt;/b&gt; <small>abc</small>" in bars and "<small>v3</small>" in bars
    assert bars.count("ga-bar-fill ga-ai") == 2  # 0.9 >= 0.4 and 0.725 >= 0.6


ERRORS = {
    "url_refused": (
        {"code": "url_refused", "message": "http://10.0.0.1/ is a private address", "status": 400},
        "The API did not use this URL (400 url_refused): http://10.0.0.1/ is a private address. The API only",
    ),
    "unauthorized": (
        {"code": "unauthorized", "message": "missing or wrong API key", "status": 401},
        "The API refused this request (401 unauthorized): missing or wrong API key. Start the page with",
    ),
    "too_large": (
        {
            "code": "payload_too_large",
            "message": "request body is larger than the 20-byte limit.",
            "status": 413,
        },
        "The API refused this request (413 payload_too_large): request body is larger than the 20-byte "
        "limit. Send a smaller",
    ),
    "loading": (
        {"code": "unavailable", "message": "models not loaded yet", "status": 503},
        "The API refused this request (503 unavailable): models not loaded yet. The models are still loading",
    ),
    "down": (
        {"code": "unreachable", "message": "nothing answers at http://h:1"},
        "The API is not reachable: nothing answers at http://h:1. Start it with `genart serve up`",
    ),
    "odd": ("boom", "The API answered with an error: boom"),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_errors_read_as_sentences_that_say_what_to_do(case: str) -> None:
    error, start = ERRORS[case]
    assert present.error_text(error).startswith(start)


def _raise(exc: Exception) -> Any:
    def call() -> dict[str, Any]:
        raise exc

    return call


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (httpx.ConnectError("refused"), "unreachable"),
        (httpx.ReadTimeout("slow"), "timeout"),
        (httpx.RemoteProtocolError("cut"), "unreachable"),
        (ValueError("Expecting value"), "bad_response"),
    ],
)
def test_guarded_turns_network_failures_into_error_bodies(exc: Exception, code: str) -> None:
    answer = present.guarded(_raise(exc), "http://h:1", 2.0)
    assert answer["error"]["code"] == code and "http://h:1" in answer["error"]["message"]
    assert present.guarded(lambda: {"ok": 1}, "http://h:1", 2.0) == {"ok": 1}


def test_health_badge_says_the_state_in_a_word() -> None:
    assert "ready" in present.health_badge({"status": "ok"})
    assert "degraded" in present.health_badge({"status": "degraded"})
    assert "not ready" in present.health_badge({"status": "unavailable"})
    assert "unreachable" in present.health_badge({"error": {"code": "unreachable"}})


def test_thumbnails_and_previews_only_for_decodable_images() -> None:
    uri = present.thumbnail_uri(image_bytes((300, 200)), side=64)
    assert uri and uri.startswith("data:image/jpeg;base64,")
    assert present.thumbnail_uri(b"not an image") is None
    assert max(present.preview(image_bytes((1200, 300)), max_side=400).size) == 400


def test_the_pages_csv_has_the_columns_of_genart_predict_out(tmp_path: Any) -> None:
    rows = [
        result_row("a.png", PREDICTION),
        result_row("b.png", {"error": {"code": "invalid_image", "message": "cannot identify image"}}),
    ]
    text = csv_text(rows)
    assert write_csv(rows, tmp_path / "r.csv").read_bytes() == text.encode()
    parsed = list(csv.DictReader(io.StringIO(text)))
    assert [r["input"] for r in parsed] == ["a.png", "b.png"]
    assert parsed[0]["p_lite0"] == "0.9" and parsed[1]["error"] == "cannot identify image"


def test_a_page_says_when_its_models_learned_from_generated_data() -> None:
    generated = {
        "name": "lite0",
        "trained_on": {"data": "sample", "images": 980, "families": ["a"], "generated": True},
    }
    real = {"name": "clip_b16", "trained_on": {"data": "wild", "images": 5140, "families": ["dalle3", "flux"],
                                                "generated": False}}  # fmt: skip
    assert present.generated_notice([real]) is None
    notice = present.generated_notice([real, generated])
    assert "generated sample data" in notice and "lite0" in notice and "clip_b16" not in notice
    assert present.training_text(real) == "trained on wild: 5140 images, 2 families"
    assert present.training_text({"name": "old"}) == "training data not recorded"
