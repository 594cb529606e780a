"""The web demo under Streamlit's AppTest: each mode against the real API, and against an API that is down,
too slow or given the wrong key. What the page shows must be what the API answers."""

from __future__ import annotations

import csv
import io
import socket
from collections.abc import Callable, Iterator
from typing import Any

import pandas as pd
import pytest

from genart.ui.present import fmt_p, version_text
from tests.conftest import image_bytes
from tests.ui.conftest import DOWN, LiveApi, page_text, shown_verdict

Page = Callable[..., Any]


def _csv_rows(data: bytes) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(data.decode())))


# -- against the running API --------------------------------------------------------------------------------
@pytest.mark.ray
@pytest.mark.slow
def test_sidebar_shows_the_apis_health_and_the_deployed_models(page: Page, live_api: LiveApi) -> None:
    at = page(live_api.url, live_api.key)
    sidebar = "\n".join(
        str(e.value) for kind in ("markdown", "caption", "html") for e in getattr(at.sidebar, kind)
    )
    assert "ready" in sidebar and live_api.url in sidebar
    assert "**detector** " in sidebar and "**attributor** " in sidebar
    assert "ensemble rule **mean**, threshold **0.500**" in sidebar  # the members' 0.4 and 0.6, averaged
    assert "trained on sample: 98 images, generated sample data" in sidebar
    warnings = " ".join(str(w.value) for w in at.warning)
    assert "trained on genart's generated sample data" in warnings and "detector" in warnings
    assert "probability" in page_text(at) and "JPEG re-compression" in page_text(at)


@pytest.mark.ray
@pytest.mark.slow
def test_single_image_shows_the_apis_verdict_each_model_and_records_feedback(
    page: Page, live_api: LiveApi
) -> None:
    data = image_bytes((96, 80), seed=11)
    at = page(live_api.url, live_api.key)
    at.file_uploader(key="single_file").set_value(("photo.png", data, "image/png")).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    with live_api.client() as client:
        answer = client.predict_bytes(data, "photo.png")
    text = page_text(at)
    assert shown_verdict(text) == (answer["label"], fmt_p(answer["probability"]))
    assert f"threshold <b>{fmt_p(answer['threshold'])}</b>" in text
    for model in answer["models"]:
        assert (
            f">{model['name']} <small>{version_text(model['version'])}" in text
            and f">{fmt_p(model['probability'])}</span>" in text
        )
    assert f"gauge: P(ai) {fmt_p(answer['probability'])}, threshold {fmt_p(answer['threshold'])}" in text
    assert "96×80 px" in text

    at.button(key=next(b.key for b in at.button if b.key.startswith("wrong-"))).click().run()
    truth = "nature" if answer["label"] == "ai" else "ai"
    assert [s.value for s in at.success] == [
        f"Thank you: recorded that the image is {truth}, so the API was wrong."
    ]
    assert not [b for b in at.button if b.key.startswith(("right-", "wrong-"))]  # one answer per request


@pytest.mark.ray
@pytest.mark.slow
def test_batch_upload_tables_every_file_with_the_apis_answers_and_offers_a_csv(
    page: Page, live_api: LiveApi, served: dict[str, bytes]
) -> None:
    files = [(f"img{i}.png", image_bytes((64, 48), seed=20 + i)) for i in range(4)]
    files.insert(2, ("broken.png", b"\x89PNG\r\n\x1a\n not really"))  # five: more than the API's cap of four
    at = page(live_api.url, live_api.key)
    at.radio(key="mode").set_value("Batch upload").run()
    at.file_uploader(key="batch_files").set_value([(n, d, "image/png") for n, d in files]).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert at.progress[0].value == 100

    table = at.dataframe[0].value
    assert list(table["file"]) == [n for n, _ in files]
    assert table["thumbnail"].str.startswith("data:image/jpeg;base64,").sum() == 4
    broken = table.set_index("file").loc["broken.png"]
    assert pd.isna(broken["label"]) and "image" in broken["error"]
    with live_api.client() as client:
        for name, data in files:
            if name != "broken.png":
                answer = client.predict_bytes(data, name)
                row = table.set_index("file").loc[name]
                assert row["label"] == answer["label"]
                assert fmt_p(row["probability"]) == fmt_p(answer["probability"])
    assert "**4** classified, **1** failed" in page_text(at)
    csv_rows = _csv_rows(served[at.download_button(key="batch_csv").proto.url])
    assert [r["input"] for r in csv_rows] == [n for n, _ in files] and "thumbnail" not in csv_rows[0]


@pytest.mark.ray
@pytest.mark.slow
def test_from_url_classifies_what_the_api_fetched_and_shows_its_refusal(
    page: Page, live_api: LiveApi, image_server: str
) -> None:
    at = page(live_api.url, live_api.key)
    at.radio(key="mode").set_value("From URL").run()
    at.text_input(key="url_text").input(f"{image_server}/img.png")
    at.button(key="url_send").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    with live_api.client() as client:
        answer = client.predict_url(f"{image_server}/img.png")
    assert shown_verdict(page_text(at)) == (answer["label"], fmt_p(answer["probability"]))

    at.text_input(key="url_text").input("http://10.0.0.1/photo.jpg")
    at.button(key="url_send").click().run()
    with live_api.client() as client:
        refusal = client.predict_url("http://10.0.0.1/photo.jpg")["error"]
    assert refusal["code"] == "url_refused"
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and refusal["message"].rstrip(".") in errors[0]
    assert errors[0].startswith("The API did not use this URL (400 url_refused)")
    assert "Try again" not in [b.label for b in at.main.button]  # the same URL would be refused again


@pytest.mark.ray
@pytest.mark.slow
def test_a_wrong_api_key_is_explained_not_thrown(page: Page, live_api: LiveApi) -> None:
    at = page(live_api.url, "not-the-key")
    assert "ready" in page_text(at)  # /health needs no key
    assert any("401 unauthorized" in w.value and "GENART_API_KEY" in w.value for w in at.sidebar.warning)
    at.file_uploader(key="single_file").set_value(("a.png", image_bytes(), "image/png")).run()
    assert not at.exception
    assert any("missing or wrong API key" in e.value for e in at.error)


# -- against an API that is not there -----------------------------------------------------------------------
MODES = {
    "Single image": lambda at: at.file_uploader(key="single_file").set_value(
        ("a.png", image_bytes(), "image/png")
    ),
    "Batch upload": lambda at: at.file_uploader(key="batch_files").set_value(
        [("a.png", image_bytes(), "image/png"), ("b.png", image_bytes(seed=1), "image/png")]
    ),
    "From URL": lambda at: (
        at.text_input(key="url_text").input("https://example.com/a.png"),
        at.button(key="url_send").click(),
    ),
}


@pytest.mark.parametrize("mode", list(MODES))
def test_every_mode_says_the_api_is_down_in_words(page: Page, mode: str) -> None:
    at = page(DOWN)
    assert any(e.value.startswith("The API is not reachable: nothing answers at") for e in at.sidebar.error)
    at.radio(key="mode").set_value(mode).run()
    MODES[mode](at)
    at.run()
    assert not at.exception
    errors = [e.value for e in at.main.error]
    assert errors and all("The API is not reachable" in e and "genart serve up" in e for e in errors)
    assert "Traceback" not in page_text(at)
    if mode == "Single image":
        at.button(key="retry-single_answer").click().run()  # still down: asked again, told again
        assert not at.exception and any("not reachable" in e.value for e in at.main.error)


@pytest.fixture
def silent_api() -> Iterator[str]:
    """A port that accepts connections and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


def test_a_slow_api_times_out_with_a_readable_message(page: Page, silent_api: str) -> None:
    at = page(silent_api, timeout_s=1)
    MODES["Single image"](at)
    at.run()
    assert not at.exception
    errors = [e.value for e in at.main.error]
    assert errors == [
        f"The API did not answer in time: no answer from {silent_api} within 1 s. "
        "Try again in a moment: it may be busy, or still loading its models."
    ]
