"""A client of the HTTP API, used by ``genart predict`` and the web demo: files, folders and URLs in,
one result row per image out. It never loads a model."""

from __future__ import annotations

import csv
import io
import mimetypes
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx

__all__ = ["IMAGE_SUFFIXES", "GenartClient", "csv_text", "expand_inputs", "result_row", "write_csv"]

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


def expand_inputs(items: Iterable[str]) -> Iterator[str]:
    """Files as given, folders walked for images (sorted), http(s) URLs passed through."""
    for item in items:
        if item.startswith(("http://", "https://")):
            yield item
            continue
        path = Path(item)
        if path.is_dir():
            yield from (str(p) for p in sorted(path.rglob("*")) if p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            yield str(path)


class GenartClient:
    """Talks to ``/predict``, ``/batch-predict``, ``/health``, ``/models`` and ``/feedback``."""

    def __init__(self, api: str = "http://127.0.0.1:8000", api_key: str | None = None, timeout_s: float = 60):
        headers = {"X-API-Key": api_key} if api_key else {}
        self.api = api.rstrip("/")
        self.http = httpx.Client(base_url=self.api, headers=headers, timeout=timeout_s)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> GenartClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def health(self) -> dict[str, Any]:
        return self.http.get("/health").json()

    def models(self) -> dict[str, Any]:
        return self._json(self.http.get("/models"))

    def predict_bytes(self, data: bytes, filename: str = "image") -> dict[str, Any]:
        mime = mimetypes.guess_type(filename)[0] or "application/octet-stream"
        return self._json(self.http.post("/predict", files={"file": (filename, data, mime)}))

    def predict_url(self, url: str) -> dict[str, Any]:
        return self._json(self.http.post("/predict", json={"url": url}))

    def predict_batch_bytes(self, files: Sequence[tuple[str, bytes]]) -> dict[str, Any]:
        """``/batch-predict`` of in-memory ``(filename, data)`` pairs: the API's answer or its error."""
        parts = [
            ("files", (name, data, mimetypes.guess_type(name)[0] or "application/octet-stream"))
            for name, data in files
        ]
        return self._json(self.http.post("/batch-predict", files=parts))

    def feedback(self, request_id: str, label: str) -> dict[str, Any]:
        return self._json(self.http.post("/feedback", json={"request_id": request_id, "label": label}))

    def predict_many(self, inputs: Iterable[str], batch_size: int = 16) -> Iterator[dict[str, Any]]:
        """One row per input: files go through ``/batch-predict`` in batches, URLs through ``/predict``."""
        batch: list[str] = []
        for item in inputs:
            if item.startswith(("http://", "https://")):
                yield _row(item, self._safe(lambda u=item: self.predict_url(u)))
                continue
            batch.append(item)
            if len(batch) == batch_size:
                yield from self._batch(batch)
                batch = []
        if batch:
            yield from self._batch(batch)

    def _batch(self, paths: list[str]) -> Iterator[dict[str, Any]]:
        files = []
        rows: dict[int, dict[str, Any]] = {}
        for i, path in enumerate(paths):
            try:
                data = Path(path).read_bytes()
            except OSError as exc:
                rows[i] = _row(path, {"error": {"code": "unreadable", "message": str(exc)}})
                continue
            name = os.path.basename(path)
            files.append(
                (i, ("files", (name, data, mimetypes.guess_type(name)[0] or "application/octet-stream")))
            )
        if files:
            answer = self._safe(
                lambda: self._json(self.http.post("/batch-predict", files=[f for _, f in files]))
            )
            results = answer.get("results") if "results" in answer else [answer] * len(files)
            for (i, _), item in zip(files, results, strict=True):
                rows[i] = _row(paths[i], item.get("prediction") or {"error": item.get("error")})
        for i in range(len(paths)):
            yield rows[i]

    @staticmethod
    def _json(response: httpx.Response) -> dict[str, Any]:
        try:
            body = response.json()
        except ValueError:
            body = {"error": {"code": "bad_response", "message": response.text[:300]}}
        if response.status_code >= 400 and "error" not in body:
            body = {"error": {"code": str(response.status_code), "message": str(body)[:300]}}
        return body

    @staticmethod
    def _safe(call: Any) -> dict[str, Any]:
        try:
            return call()
        except httpx.HTTPError as exc:
            return {"error": {"code": "unreachable", "message": f"{exc.__class__.__name__}: {exc}"}}


def _row(source: str, answer: dict[str, Any]) -> dict[str, Any]:
    error = answer.get("error")
    if error:
        return {
            "input": source,
            "label": None,
            "probability": None,
            "error": error.get("message", str(error)),
        }
    return {
        "input": source,
        "label": answer["label"],
        "probability": answer["probability"],
        "threshold": answer["threshold"],
        **{f"p_{m['name']}": m["probability"] for m in answer.get("models", [])},
        "generator": answer.get("generator"),
        "request_id": answer["request_id"],
        "latency_ms": answer.get("latency_ms"),
        "error": None,
    }


def result_row(source: str, answer: dict[str, Any]) -> dict[str, Any]:
    """One flat result row (the CSV's) from a ``/predict`` answer or an ``{"error": ...}`` body."""
    return _row(source, answer)


def csv_text(rows: list[dict[str, Any]]) -> str:
    """The rows as CSV, with the union of their columns in first-seen order."""
    fields: list[str] = []
    for row in rows:
        fields += [k for k in row if k not in fields]
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def write_csv(rows: list[dict[str, Any]], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(csv_text(rows), newline="")
    return path
