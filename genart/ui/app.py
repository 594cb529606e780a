"""The genart web demo (``genart ui``): a Streamlit page that is a client of the HTTP API and nothing else.

Every number on the page is one the API answered; the page never loads a model. The API's address, key and
timeout come from ``GENART_API_URL``, ``GENART_API_KEY`` and ``GENART_API_TIMEOUT_S``. Answers are kept in
the session so that a rerun (a click anywhere) does not classify the same file again.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pandas as pd
import streamlit as st

from genart.serve.client import IMAGE_SUFFIXES, GenartClient, csv_text, result_row
from genart.ui import present

MODES = ("Single image", "Batch upload", "From URL")
IMAGE_TYPES = sorted(s.lstrip(".") for s in IMAGE_SUFFIXES)
BATCH_CHUNK = 8
# A batch stops at these: every further request would fail the same way.
STOPPING = {"unreachable", "timeout", "unauthorized", "bad_response"}
TRANSIENT = {"unreachable", "timeout", "bad_response", "unavailable"}


@dataclass(frozen=True)
class Api:
    """The API this page talks to, and every call to it, guarded: failures come back as error bodies."""

    client: GenartClient
    url: str
    timeout_s: float

    def ask(self, call: Callable[[GenartClient], dict[str, Any]]) -> dict[str, Any]:
        return present.guarded(lambda: call(self.client), self.url, self.timeout_s)


def _remembered(slot: str, key: str, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """The answer for ``key``, asking the API only when the slot holds another key."""
    held = st.session_state.get(slot)
    if held is None or held[0] != key:
        held = (key, compute())
        st.session_state[slot] = held
    return held[1]


def _file_key(name: str, data: bytes) -> str:
    return f"{name}:{hashlib.sha256(data).hexdigest()}"


def _transient(error: Any) -> bool:
    """Whether asking again may get another answer: the API down, slow, or not ready."""
    return isinstance(error, dict) and (error.get("code") in TRANSIENT or (error.get("status") or 0) >= 500)


def _show_error(error: Any, retry_slot: str | None = None) -> None:
    """The error in words; a 'Try again' button only where trying again can help."""
    st.error(present.error_text(error))
    if retry_slot and _transient(error) and st.button("Try again", key=f"retry-{retry_slot}"):
        st.session_state.pop(retry_slot, None)
        st.rerun()


# -- the sidebar --------------------------------------------------------------------------------------------
def sidebar(api: Api) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The API's health and the deployed models; returns both for the main page's notices."""
    described: list[dict[str, Any]] = []
    with st.sidebar:
        st.markdown("### genart")
        health = api.ask(lambda c: c.health())
        st.html(f"<div>API {present.health_badge(health)}</div>")
        st.caption(api.url)
        if "error" in health:
            st.error(present.error_text(health["error"]))
        else:
            with st.expander("Health of each part", expanded=health.get("status") != "ok"):
                for name, part in health.get("parts", {}).items():
                    st.markdown(f"{'✓' if part.get('ok') else '✗'} `{name}`")
        st.markdown("**Deployed models**")
        if health.get("error", {}).get("code") in STOPPING:
            st.caption("unknown while the API does not answer")
        else:
            models = api.ask(lambda c: c.models())
            if "error" in models:
                st.warning(present.error_text(models["error"]))
            else:
                st.caption(
                    f"ensemble rule **{models['rule']}**, threshold **{present.fmt_p(models['threshold'])}**"
                )
                described = models["models"]
                for m in described:
                    st.markdown(
                        f"**{m['name']}** {present.version_text(m['version'])}  \n"
                        f"{m['architecture']} · threshold {present.fmt_p(m['threshold'])} · "
                        f"weight {m['weight']:g}  \n{present.training_text(m)}"
                    )
        st.button("Refresh", key="refresh")
    return health, described


# -- one answer ---------------------------------------------------------------------------------------------
def feedback(api: Api, prediction: dict[str, Any]) -> None:
    """'This was right / wrong': POST /feedback with the true label. A failed call keeps the buttons."""
    rid, predicted = prediction["request_id"], prediction["label"]
    given = st.session_state.setdefault("feedback", {})
    answer = given.get(rid)
    if answer is not None and "error" not in answer:
        verdict = "right" if answer["correct"] else "wrong"
        st.success(f"Thank you: recorded that the image is {answer['label']}, so the API was {verdict}.")
        return
    st.caption("Was it right? Your answer is stored with this prediction and feeds the online accuracy.")
    right, wrong = st.columns(2)
    truth = None
    if right.button("This was right", key=f"right-{rid}", width="stretch"):
        truth = predicted
    if wrong.button("This was wrong", key=f"wrong-{rid}", width="stretch"):
        truth = "nature" if predicted == "ai" else "ai"
    if truth is not None:
        given[rid] = api.ask(lambda c: c.feedback(rid, truth))
        st.rerun()
    if answer is not None:
        st.error(present.error_text(answer["error"]))


def show_prediction(
    api: Api, answer: dict[str, Any], image: Any, caption: str, retry_slot: str | None
) -> None:
    """An answer: the image, the verdict, the gauge, one bar per model and the feedback buttons."""
    if "error" in answer:
        _show_error(answer["error"], retry_slot)
        return
    left, right = st.columns([1, 1.2], gap="large")
    with left:
        if image is not None:
            st.image(image, caption=caption, width="stretch")
        else:
            st.caption(caption)
    with right:
        st.html(present.verdict_html(answer))
        st.html(present.gauge_html(answer["probability"], answer["threshold"]))
        st.markdown("**Each model's P(ai)** (tick: its own threshold)")
        st.html(present.model_bars_html(answer["models"]))
        st.caption(
            f"{answer['width']}×{answer['height']} px · {answer['latency_ms']:.0f} ms · "
            f"request `{answer['request_id']}`"
        )
        feedback(api, answer)


# -- the modes ----------------------------------------------------------------------------------------------
def single_mode(api: Api) -> None:
    upload = st.file_uploader("An image to classify", type=IMAGE_TYPES, key="single_file")
    if upload is None:
        st.caption("JPEG, PNG, WebP, BMP, GIF or TIFF. The file goes to the API and nowhere else.")
        return
    data = upload.getvalue()
    answer = _remembered(
        "single_answer",
        _file_key(upload.name, data),
        lambda: api.ask(lambda c: c.predict_bytes(data, upload.name)),
    )
    show_prediction(api, answer, present.preview(data), upload.name, "single_answer")


def _classify_chunk(api: Api, files: list[tuple[str, bytes]]) -> list[dict[str, Any]] | dict[str, Any]:
    """Answers for a chunk through ``/batch-predict``, or the error that should stop the batch."""
    answer = api.ask(lambda c: c.predict_batch_bytes(files))
    if "results" in answer:
        return [item.get("prediction") or {"error": item.get("error")} for item in answer["results"]]
    error = answer["error"]
    if error.get("code") in STOPPING or _transient(error):
        return answer
    if error.get("code") == "batch_too_large" and len(files) > 1:
        half = len(files) // 2
        first, second = _classify_chunk(api, files[:half]), _classify_chunk(api, files[half:])
        if isinstance(first, dict):
            return first
        if isinstance(second, dict):
            return second
        return first + second
    # Every image failed (or the body was refused as a whole): ask one by one for each file's own error.
    return [api.ask(lambda c, n=name, d=data: c.predict_bytes(d, n)) for name, data in files]


def batch_mode(api: Api) -> None:
    uploads = st.file_uploader(
        "Images to classify", type=IMAGE_TYPES, accept_multiple_files=True, key="batch_files"
    )
    if not uploads:
        st.caption(f"Drop many files at once; they go to the API {BATCH_CHUNK} at a time.")
        return
    files = [(u.name, u.getvalue()) for u in uploads]
    keys = [_file_key(name, data) for name, data in files]
    # Answers are kept for the session, except failures that asking again may cure.
    rows: dict[str, dict[str, Any]] = st.session_state.setdefault("batch_rows", {})
    fresh: dict[str, dict[str, Any]] = {}
    todo = [i for i, k in enumerate(keys) if k not in rows]
    bar = st.progress(1.0 if not todo else 0.0, text=f"{len(files)} images classified")
    stopped = None
    for start in range(0, len(todo), BATCH_CHUNK):
        chunk = todo[start : start + BATCH_CHUNK]
        answers = _classify_chunk(api, [files[i] for i in chunk])
        if isinstance(answers, dict):
            stopped = answers["error"]
            break
        for i, answer in zip(chunk, answers, strict=True):
            row = {"thumbnail": present.thumbnail_uri(files[i][1]), **result_row(files[i][0], answer)}
            (fresh if _transient(answer.get("error")) else rows)[keys[i]] = row
        done = start + len(chunk)
        bar.progress(done / len(todo), text=f"{done} of {len(todo)} new images classified")
    if stopped:
        bar.empty()
        st.error(present.error_text(stopped))
        st.button("Try again", key="retry-batch")  # a click reruns the page, which asks for what is missing
    shown = [rows.get(k) or fresh[k] for k in keys if k in rows or k in fresh]
    if not shown:
        return
    if not stopped:
        bar.progress(1.0, text=f"{len(shown)} images classified")
    results_table(shown)


def results_table(rows: list[dict[str, Any]]) -> None:
    ok = [r for r in rows if not r["error"]]
    ai = sum(r["label"] == "ai" for r in ok)
    st.markdown(
        f"**{len(ok)}** classified, **{len(rows) - len(ok)}** failed; **{ai}** lean AI-generated. "
        "Click a column's header to sort."
    )
    frame = pd.DataFrame(rows).rename(columns={"input": "file"})
    models = [c for c in frame.columns if c.startswith("p_")]
    columns = ["thumbnail", "file", "label", "probability", "error", *models, "threshold", "generator"]
    config = {
        "thumbnail": st.column_config.ImageColumn("image", width="small"),
        "probability": st.column_config.ProgressColumn("P(ai)", min_value=0.0, max_value=1.0, format="%.3f"),
        "threshold": st.column_config.NumberColumn("threshold", format="%.3f"),
        "error": st.column_config.TextColumn("error", width="medium"),
        **{c: st.column_config.NumberColumn(c.removeprefix("p_"), format="%.3f") for c in models},
    }
    st.dataframe(
        frame, column_order=[c for c in columns if c in frame.columns], column_config=config, hide_index=True,
        row_height=56, placeholder="", key="batch_table",
    )  # fmt: skip
    table = [{k: v for k, v in r.items() if k != "thumbnail"} for r in rows]
    st.download_button(
        "Download CSV", csv_text(table), file_name="genart-results.csv", mime="text/csv", key="batch_csv"
    )


def url_mode(api: Api) -> None:
    st.caption(
        "The API fetches the image itself, with its safety rules: http(s) only, no private, loopback or "
        "cloud-metadata addresses (after redirects too), a size cap and a timeout."
    )
    with st.form("url_form", border=False):
        url = st.text_input("Image URL", placeholder="https://example.com/photo.jpg", key="url_text")
        sent = st.form_submit_button("Classify", key="url_send")
    url = url.strip()
    if sent and url:
        st.session_state["url_answer"] = (url, api.ask(lambda c: c.predict_url(url)))
    elif sent:
        st.warning("Paste the address of an image first.")
    held = st.session_state.get("url_answer")
    if held:
        shown_url, answer = held
        # The preview is the browser's own fetch, so only of an http(s) address the API accepted.
        accepted = "error" not in answer and shown_url.lower().startswith(("http://", "https://"))
        show_prediction(api, answer, shown_url if accepted else None, shown_url, retry_slot=None)


# -- the page -----------------------------------------------------------------------------------------------
def main() -> None:
    st.set_page_config(page_title="genart: is this image AI-generated?", layout="wide")
    st.html(present.CSS)
    url = os.environ.get("GENART_API_URL", "http://127.0.0.1:8000")
    timeout_s = float(os.environ.get("GENART_API_TIMEOUT_S", "30"))
    with GenartClient(url, api_key=os.environ.get("GENART_API_KEY") or None, timeout_s=timeout_s) as client:
        api = Api(client, url, timeout_s)
        health, models = sidebar(api)
        st.title("Is this image AI-generated?")
        notice = present.generated_notice(models)
        if notice:
            st.warning(notice)
        st.markdown(present.SUMMARY)
        with st.expander("What the detector can and cannot tell you"):
            st.markdown(present.LIMITS)
        if "error" in health:
            st.warning(present.error_text(health["error"]))
        elif not health.get("ready"):
            st.warning("The API answers but is not ready yet: its models are loading. Try again shortly.")
        mode = st.radio("Mode", MODES, horizontal=True, key="mode", label_visibility="collapsed")
        {"Single image": single_mode, "Batch upload": batch_mode, "From URL": url_mode}[mode](api)


if __name__ == "__main__":
    main()
