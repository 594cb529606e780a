"""The HTTP API's request and response bodies (pydantic), which are also its OpenAPI schema."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

from genart.models.predict import label_for

__all__ = [
    "BatchItem",
    "BatchPrediction",
    "ErrorBody",
    "Feedback",
    "FeedbackResult",
    "Health",
    "ModelInfo",
    "ModelScore",
    "ModelsReport",
    "PartHealth",
    "PredictJSON",
    "Prediction",
]

Label = Literal["ai", "nature"]


class PredictJSON(BaseModel):
    """``POST /predict`` as JSON: exactly one of ``url`` or ``image`` (base64)."""

    url: str | None = Field(None, max_length=2048, description="http(s) URL of an image on a public host")
    image: str | None = Field(None, description="the image file, base64-encoded")
    filename: str | None = Field(None, max_length=255)

    @model_validator(mode="after")
    def _exactly_one(self) -> PredictJSON:
        if (self.url is None) == (self.image is None):
            raise ValueError("send exactly one of 'url' or 'image'")
        return self


class ModelScore(BaseModel):
    name: str
    version: str
    probability: float = Field(description="this model's calibrated P(ai)")
    threshold: float
    latency_ms: float
    generator: str | None = None
    generator_probability: float | None = None


class Prediction(BaseModel):
    request_id: str
    label: Label
    probability: float = Field(
        description="the ensemble's calibrated probability that the image is AI-generated"
    )
    threshold: float = Field(description="label is 'ai' when probability >= threshold")
    rule: str
    models: list[ModelScore]
    model_versions: dict[str, str]
    generator: str | None = Field(
        None, description="most likely generator, when an attribution model is deployed"
    )
    generator_probability: float | None = None
    latency_ms: float
    source: Literal["upload", "url"]
    filename: str | None = None
    sha256: str
    width: int
    height: int

    @classmethod
    def from_scores(
        cls,
        scores: dict[str, dict[str, Any]],
        probability: float,
        threshold: float,
        rule: str,
        **fields: Any,
    ) -> Prediction:
        """The answer for one image from each model's score (``probability``, ``threshold``, ``version``,
        ``latency_ms``, and for an attribution model ``generator`` and ``generator_probability``) and the
        ensemble's verdict; ``fields`` are the request's (request_id, latency_ms, source, filename, sha256,
        width, height). The label is the label rule's; the generator, the most likely one among the
        attribution models'."""
        attributed = [s for s in scores.values() if s.get("generator")]
        best = max(attributed, key=lambda s: s["generator_probability"]) if attributed else None
        return cls(
            label=label_for(probability, threshold),
            probability=probability,
            threshold=threshold,
            rule=rule,
            models=[
                ModelScore(name=name, **{k: v for k, v in s.items() if k in ModelScore.model_fields})
                for name, s in scores.items()
            ],
            model_versions={name: s["version"] for name, s in scores.items()},
            generator=best["generator"] if best else None,
            generator_probability=best["generator_probability"] if best else None,
            **fields,
        )


class ErrorBody(BaseModel):
    code: str
    message: str
    status: int


class BatchItem(BaseModel):
    filename: str | None = None
    prediction: Prediction | None = None
    error: ErrorBody | None = None


class BatchPrediction(BaseModel):
    results: list[BatchItem]
    succeeded: int
    failed: int


class PartHealth(BaseModel):
    ok: bool
    detail: dict[str, Any] = Field(default_factory=dict)


class Health(BaseModel):
    status: Literal["ok", "degraded", "unavailable"] = Field(
        description="ok: ready; degraded: serving, but the store is buffering; unavailable: not ready"
    )
    live: bool = True
    ready: bool
    parts: dict[str, PartHealth]


class ModelInfo(BaseModel):
    name: str
    version: str
    source: str
    architecture: str
    classes: list[str]
    input: dict[str, Any]
    threshold: float
    temperature: float
    weight: float
    metrics: dict[str, Any]
    trained_on: dict[str, Any] = Field(
        default_factory=dict,
        description="what it learned from: data name, image count, families, whether generated sample data",
    )
    created_at: str | None = None


class ModelsReport(BaseModel):
    rule: str
    threshold: float
    models: list[ModelInfo]


class Feedback(BaseModel):
    request_id: str = Field(min_length=1, max_length=64)
    label: Label = Field(description="the true label of the image that request classified")


class FeedbackResult(BaseModel):
    request_id: str
    label: Label
    predicted: Label
    correct: bool
