"""What the web demo shows, as pure functions: API answers in, text, HTML and table rows out.

The page (``app.py``) only calls the API and puts these on screen, so everything here is testable without
Streamlit or a server. Every string that came from outside (file names, model names, error messages) is
escaped before it goes into HTML.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Callable
from typing import Any

import httpx

__all__ = [
    "CSS",
    "LIMITS",
    "SUMMARY",
    "ApiCall",
    "error_text",
    "evidence",
    "fmt_p",
    "gauge_html",
    "gauge_svg",
    "guarded",
    "health_badge",
    "model_bars_html",
    "preview",
    "thumbnail_uri",
    "verdict_html",
    "verdict_title",
    "version_text",
]

ApiCall = Callable[[], dict[str, Any]]

SUMMARY = (
    "The detector gives the **probability** that an image is AI-generated, calibrated on held-out images "
    "of the generators it was trained on. Treat it as evidence, not a verdict."
)

LIMITS = """\
- **A probability, not a fact.** The label only says which side of the threshold the probability fell on. \
Near the threshold the models cannot tell.
- **Known generators only.** It learnt the generators in its training data; a new generator can look \
"real" to it.
- **Heavy JPEG re-compression, resizing, screenshots and filters** wipe out the traces it looks for and \
push scores towards "real photo". So does a photo of a screen or a print.
- **Small images** (under about 200 px a side) carry little evidence.
- **Partly edited photos** (inpainting, AI retouching) can score either way.
- It cannot say who made an image or why. Do not use it as the only evidence in a decision about a person.
"""

VERDICT_TITLE = {"ai": "Leans AI-generated", "nature": "Leans real photo"}

CSS = """
<style>
[data-testid="stMainBlockContainer"] {max-width: 1060px; padding-top: 3rem;}
.ga-note {font-size: .92rem; opacity: .85;}
.ga-verdict {border: 1px solid rgba(100, 116, 139, .35); border-left-width: 6px; border-radius: 10px;
  padding: .8rem 1rem; margin-bottom: .6rem;}
.ga-verdict.ga-ai {border-left-color: #c2410c; background: rgba(234, 88, 12, .07);}
.ga-verdict.ga-nature {border-left-color: #0f766e; background: rgba(13, 148, 136, .07);}
.ga-verdict-title {font-size: 1.45rem; font-weight: 650; line-height: 1.25; margin: 0;}
.ga-verdict-line {font-size: .95rem; margin: .3rem 0 0 0; font-variant-numeric: tabular-nums;}
.ga-verdict-hint {font-size: .85rem; opacity: .75; margin: .25rem 0 0 0;}
.ga-gauge {display: block; width: 100%; max-width: 280px; margin: .2rem auto .4rem auto;}
.ga-bars {margin: .2rem 0 .6rem 0;}
.ga-bar {display: grid; grid-template-columns: minmax(6rem, 34%) 1fr 3.2rem; gap: .6rem; align-items: center;
  font-size: .9rem; margin: .35rem 0;}
.ga-bar-name {overflow: hidden; text-overflow: ellipsis; white-space: nowrap;}
.ga-bar-name small {opacity: .65;}
.ga-bar-track {position: relative; height: .7rem; border-radius: .35rem;
  background: rgba(100, 116, 139, .18);}
.ga-bar-fill {position: absolute; left: 0; top: 0; bottom: 0; border-radius: .35rem;}
.ga-bar-fill.ga-ai {background: #c2410c;}
.ga-bar-fill.ga-nature {background: #0f766e;}
.ga-bar-tick {position: absolute; top: -.2rem; bottom: -.2rem; width: 2px; background: #334155;}
.ga-bar-value {text-align: right; font-variant-numeric: tabular-nums;}
.ga-badge {display: inline-block; padding: .1rem .55rem; border-radius: 1rem; font-size: .85rem;
  font-weight: 600;}
.ga-badge.ga-ok {background: rgba(13, 148, 136, .15); color: #0f766e;}
.ga-badge.ga-degraded {background: rgba(202, 138, 4, .18); color: #854d0e;}
.ga-badge.ga-down {background: rgba(220, 38, 38, .13); color: #b91c1c;}
[data-testid="stAppDeployButton"] {display: none;}
@media (max-width: 640px) {
  [data-testid="stMainBlockContainer"] {padding: 3.6rem .9rem 2rem .9rem;}
  [data-testid="stMainBlockContainer"] h1 {font-size: 1.85rem;}
  .ga-verdict-title {font-size: 1.2rem;}
  .ga-bar {grid-template-columns: minmax(4.5rem, 30%) 1fr 2.8rem; font-size: .85rem;}
}
</style>
"""

AI_COLOUR, NATURE_COLOUR = "#c2410c", "#0f766e"


GENERATED_NOTICE = (
    "**The models behind this page were trained on genart's generated sample data**, not on real photos or "
    "real generator output ({names}). Their verdicts on your images mean nothing about real-world "
    "accuracy: serve models trained on real data (`make wild`) for that."
)


def training_text(model: dict[str, Any]) -> str:
    """One line on what a served model learned from, for the sidebar."""
    trained = model.get("trained_on") or {}
    if not trained:
        return "training data not recorded"
    families = trained.get("families", [])
    kind = "generated sample data" if trained.get("generated") else f"{len(families)} families"
    return f"trained on {trained.get('data', '?')}: {trained.get('images', '?')} images, {kind}"


def generated_notice(models: list[dict[str, Any]]) -> str | None:
    """The page's warning when any served model learned only from the generated sample data."""
    names = [m["name"] for m in models if (m.get("trained_on") or {}).get("generated")]
    return GENERATED_NOTICE.format(names=", ".join(names)) if names else None


def fmt_p(p: float) -> str:
    """How every probability is shown on the page (and what the browser test compares with)."""
    return f"{p:.3f}"


def verdict_title(label: str) -> str:
    return VERDICT_TITLE.get(label, label)


def evidence(probability: float, threshold: float) -> str:
    """How far the probability is from the threshold, in words: the honest reading of one answer."""
    gap = abs(probability - threshold)
    if gap < 0.1:
        return "close to the threshold: weak evidence either way"
    if gap < 0.3:
        return "moderate evidence"
    return "strong evidence, within what the models have seen"


def verdict_html(prediction: dict[str, Any]) -> str:
    """The verdict card: title, label, P(ai) and the threshold in use."""
    label, p, t = prediction["label"], prediction["probability"], prediction["threshold"]
    kind = "ga-ai" if label == "ai" else "ga-nature"
    generator = ""
    if prediction.get("generator"):
        generator = (
            f" · likely generator <b>{html.escape(prediction['generator'])}</b>"
            f" ({fmt_p(prediction.get('generator_probability') or 0.0)})"
        )
    return (
        f'<div class="ga-verdict {kind}" data-testid="genart-verdict" data-label="{html.escape(label)}"'
        f' data-probability="{fmt_p(p)}">'
        f'<p class="ga-verdict-title">{html.escape(verdict_title(label))}</p>'
        f'<p class="ga-verdict-line">label <b class="ga-label">{html.escape(label)}</b> · '
        f'P(ai) = <b class="ga-probability">{fmt_p(p)}</b> · threshold <b>{fmt_p(t)}</b>'
        f" ({html.escape(prediction.get('rule', 'mean'))} of {len(prediction.get('models', []))} models)"
        f"{generator}</p>"
        f'<p class="ga-verdict-hint">{html.escape(evidence(p, t))}. The label is <i>ai</i> when '
        f"P(ai) ≥ the threshold.</p></div>"
    )


def _point(p: float, r: float, cx: float = 110, cy: float = 110) -> tuple[float, float]:
    angle = math.pi * (1 - min(max(p, 0.0), 1.0))
    return cx + r * math.cos(angle), cy - r * math.sin(angle)


def _arc(p0: float, p1: float, r: float) -> str:
    (x0, y0), (x1, y1) = _point(p0, r), _point(p1, r)
    return f"M {x0:.2f} {y0:.2f} A {r} {r} 0 0 1 {x1:.2f} {y1:.2f}"


def gauge_svg(probability: float, threshold: float) -> str:
    """A half-circle gauge of the calibrated P(ai), with the threshold as a tick across the arc."""
    colour = AI_COLOUR if probability >= threshold else NATURE_COLOUR
    r = 86
    filled = f'<path d="{_arc(0, probability, r)}" stroke="{colour}" />' if probability > 0.001 else ""
    (tx0, ty0), (tx1, ty1) = _point(threshold, r - 13), _point(threshold, r + 13)
    return (
        '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 220 146" width="440" height="292" '
        'font-family="system-ui, -apple-system, Segoe UI, Roboto, sans-serif">'
        '<g fill="none" stroke-width="16" stroke-linecap="butt">'
        f'<path d="{_arc(0, 1, r)}" stroke="rgba(100,116,139,.2)" />{filled}</g>'
        f'<line x1="{tx0:.2f}" y1="{ty0:.2f}" x2="{tx1:.2f}" y2="{ty1:.2f}" stroke="#1e293b"'
        ' stroke-width="3"/>'
        f'<text x="110" y="100" font-size="30" font-weight="650" text-anchor="middle" fill="{colour}">'
        f"{fmt_p(probability)}</text>"
        '<text x="110" y="120" font-size="11" text-anchor="middle" fill="#64748b">P(AI-generated)</text>'
        '<text x="110" y="139" font-size="10" text-anchor="middle" fill="#475569">'
        f"tick: threshold {fmt_p(threshold)}</text>"
        '<text x="24" y="128" font-size="10" text-anchor="middle" fill="#64748b">0</text>'
        '<text x="196" y="128" font-size="10" text-anchor="middle" fill="#64748b">1</text>'
        "</svg>"
    )


def gauge_html(probability: float, threshold: float) -> str:
    """The gauge as an image: Streamlit's HTML sanitiser keeps ``<img>`` with a data URI, not inline SVG."""
    svg = base64.b64encode(gauge_svg(probability, threshold).encode()).decode()
    alt = f"gauge: P(ai) {fmt_p(probability)}, threshold {fmt_p(threshold)}"
    return f'<img class="ga-gauge" src="data:image/svg+xml;base64,{svg}" alt="{alt}">'


def version_text(version: Any) -> str:
    """``v3`` for a number, the string itself for a hash or a tag."""
    text = str(version)
    return f"v{text}" if text.isdigit() else text


def model_bars_html(models: list[dict[str, Any]]) -> str:
    """One bar per deployed model: its own calibrated P(ai), with its own threshold as a tick."""
    rows = []
    for m in models:
        p, t = m["probability"], m["threshold"]
        kind = "ga-ai" if p >= t else "ga-nature"
        name, version = html.escape(m["name"]), html.escape(version_text(m["version"]))
        rows.append(
            '<div class="ga-bar">'
            f'<span class="ga-bar-name">{name} <small>{version}</small></span>'
            '<span class="ga-bar-track">'
            f'<span class="ga-bar-fill {kind}" style="width:{p * 100:.1f}%"></span>'
            f'<span class="ga-bar-tick" style="left:calc({t * 100:.1f}% - 1px)" title="threshold {fmt_p(t)}">'
            "</span></span>"
            f'<span class="ga-bar-value">{fmt_p(p)}</span></div>'
        )
    return f'<div class="ga-bars">{"".join(rows)}</div>'


def health_badge(health: dict[str, Any]) -> str:
    """The API's state in a word, from ``GET /health`` or a guarded call's error."""
    if "error" in health:
        return '<span class="ga-badge ga-down">unreachable</span>'
    status = health.get("status", "unavailable")
    kind = {"ok": "ga-ok", "degraded": "ga-degraded"}.get(status, "ga-down")
    text = {"ok": "ready", "degraded": "degraded", "unavailable": "not ready"}.get(status, status)
    return f'<span class="ga-badge {kind}">{html.escape(text)}</span>'


def guarded(call: ApiCall, api: str, timeout_s: float) -> dict[str, Any]:
    """Run one API call; a network failure becomes an ``{"error": ...}`` body like the API's own errors."""
    try:
        return call()
    except httpx.TimeoutException:
        return {"error": {"code": "timeout", "message": f"no answer from {api} within {timeout_s:g} s"}}
    except httpx.ConnectError:
        return {"error": {"code": "unreachable", "message": f"nothing answers at {api}"}}
    except httpx.HTTPError as exc:
        return {"error": {"code": "unreachable", "message": f"talking to {api} failed: {exc}"}}
    except ValueError as exc:  # a body that is not JSON, e.g. a proxy's error page
        return {"error": {"code": "bad_response", "message": f"{api} sent a body that is not JSON ({exc})"}}


HEADS = {
    "unreachable": "The API is not reachable",
    "timeout": "The API did not answer in time",
    "bad_response": "The API sent an answer this page cannot read",
}

ADVICE = {
    "unauthorized": "Start the page with the API's key: GENART_API_KEY=... genart ui.",
    "unreachable": "Start it with `genart serve up`, or point the page at it with `genart ui --api URL`.",
    "timeout": "Try again in a moment: it may be busy, or still loading its models.",
    "url_refused": "The API only fetches public http(s) images; download the image and upload it instead.",
    "payload_too_large": "Send a smaller file (re-saving it smaller changes what the detector sees, though).",
    "url_fetch_failed": "The API could not get an image from that address; check it in a browser.",
    "invalid_image": "Check that the file is a complete image (JPEG, PNG, WebP, ...).",
    "unavailable": "The models are still loading or being swapped; try again shortly.",
}


def error_text(error: Any) -> str:
    """A readable sentence from an error body (``{"code", "message", "status"}``), with what to do next."""
    if not isinstance(error, dict):
        return f"The API answered with an error: {error}"
    code = str(error.get("code") or "error")
    message = str(error.get("message") or "no message").rstrip(".")
    status = error.get("status")
    if code in HEADS:
        head = HEADS[code]
    elif code.startswith("url_"):
        head = f"The API did not use this URL ({status} {code})"
    else:
        head = (
            f"The API refused this request ({status} {code})" if status else "The API answered with an error"
        )
    advice = ADVICE.get(code) or (ADVICE["unavailable"] if status == 503 else "")
    return f"{head}: {message}." + (f" {advice}" if advice else "")


def preview(data: bytes, max_side: int = 900) -> Any:
    """A PIL image small enough to show, or None when the bytes are not a decodable image."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.width * image.height > Image.MAX_IMAGE_PIXELS:
                return None
            image.thumbnail((max_side, max_side))
            return image.convert("RGB")
    except Exception:  # anything PIL cannot read is the API's to judge, not the page's
        return None


def thumbnail_uri(data: bytes, side: int = 96) -> str | None:
    """A small JPEG as a ``data:`` URI for the results table, or None when the file is not an image."""
    image = preview(data, side)
    if image is None:
        return None
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()
