"""THE ensemble rule, shared by evaluation and the serving ingress; ensemble artefacts; serving defaults.

An ensemble artefact is a directory with ``ensemble.json``: the member artefacts (paths or MLflow URIs),
the rule (``mean``, ``weighted`` or ``vote``), the weights, each member's own threshold (for ``vote``)
and the ensemble's decision threshold, chosen on validation data.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, Field, model_validator
from scipy.optimize import minimize

from genart.config import EnsembleRule
from genart.models.predict import is_ai, label_for

__all__ = [
    "ENSEMBLE_FILE",
    "MIN_WEIGHT",
    "EnsembleMeta",
    "EnsembleSpec",
    "LoadedEnsemble",
    "combine",
    "contributing_members",
    "default_threshold",
    "ensemble_defaults",
    "ensemble_verdict",
    "fit_weights",
    "is_ensemble",
    "load_ensemble",
    "load_model_or_ensemble",
    "member_names",
    "save_ensemble",
]

ENSEMBLE_FILE = "ensemble.json"


class EnsembleSpec(BaseModel):
    """The contents of ``ensemble.json``."""

    members: list[str] = Field(min_length=1)
    rule: EnsembleRule = "mean"
    weights: list[float] | None = None
    member_thresholds: list[float] | None = None
    threshold: float = 0.5
    #: How ``threshold`` was chosen on the fit split: None, Youden's J; else the lowest threshold whose
    #: false-positive rate is at most this (``genart ensemble --max-fpr``).
    threshold_max_fpr: float | None = None
    metrics: dict[str, float] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _lengths_match(self) -> EnsembleSpec:
        for name in ("weights", "member_thresholds"):
            value = getattr(self, name)
            if value is not None and len(value) != len(self.members):
                raise ValueError(f"{name} has {len(value)} entries for {len(self.members)} members")
        return self

    def contributing(self) -> list[int]:
        """The members that can move P(ai) (:func:`contributing_members`)."""
        return contributing_members(self.rule, self.weights, len(self.members))


def contributing_members(rule: str, weights: list[float] | None, count: int) -> list[int]:
    """The positions of the ``count`` members that can move P(ai) under ``rule``: under ``weighted``, those
    with a positive weight (a weight of 0, or a negative one, which :func:`combine` clips to 0, leaves a
    member's scores out of the sum exactly, so its model need not run); under the other rules, and when no
    weight is positive (:func:`combine` then refuses), all of them."""
    if rule != "weighted" or weights is None:
        return list(range(count))
    return [i for i, w in enumerate(weights) if w > 0] or list(range(count))


def combine(
    probs: np.ndarray,
    rule: EnsembleRule = "mean",
    weights: list[float] | np.ndarray | None = None,
    member_thresholds: list[float] | np.ndarray | None = None,
) -> np.ndarray:
    """Combine members' P(ai), shaped (members, images), into the ensemble's P(ai), shaped (images,).

    ``mean`` averages; ``weighted`` averages with non-negative weights (normalised); ``vote`` is the share
    of members whose probability reaches their own threshold.
    """
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim == 1:
        probs = probs[:, None]
    members = probs.shape[0]
    if rule == "mean":
        return probs.mean(axis=0)
    if rule == "weighted":
        w = np.ones(members) if weights is None else np.clip(np.asarray(weights, dtype=np.float64), 0, None)
        if w.sum() <= 0:
            raise ValueError("ensemble weights must have a positive sum")
        return (w[:, None] * probs).sum(axis=0) / w.sum()
    if rule == "vote":
        t = (
            np.full(members, 0.5)
            if member_thresholds is None
            else np.asarray(member_thresholds, dtype=np.float64)
        )
        return is_ai(probs, t[:, None]).mean(axis=0)
    raise ValueError(f"unknown ensemble rule {rule!r}: use mean, weighted or vote")


#: A fitted weight below this is set to 0 (and the others refitted): such a member moves P(ai) by less than
#: 0.01, and at a weight of 0 evaluation and serving need not run its model (:func:`contributing_members`).
MIN_WEIGHT = 0.01


def _fit_simplex(probs: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Weights on the simplex (a softmax of free parameters) minimising the log loss of the weighted mean."""

    def loss(z: np.ndarray) -> float:
        w = np.exp(z - z.max())
        p = np.clip((w[:, None] * probs).sum(0) / w.sum(), 1e-6, 1 - 1e-6)
        return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))

    z = minimize(loss, np.zeros(len(probs)), method="Nelder-Mead", options={"xatol": 1e-4, "fatol": 1e-7}).x
    w = np.exp(z - z.max())
    return w / w.sum()


def fit_weights(probs: np.ndarray, y: np.ndarray, min_weight: float = MIN_WEIGHT) -> list[float]:
    """Weights (summing to 1) that minimise the log loss of the weighted mean on validation data.

    A softmax parametrisation never reaches 0 exactly, so a member the data does not want ends at a weight
    like 0.002; members under ``min_weight`` are dropped (weight 0) and the rest refitted.
    """
    probs = np.clip(np.asarray(probs, dtype=np.float64), 1e-6, 1 - 1e-6)
    y = np.asarray(y, dtype=np.float64)
    active = np.arange(len(probs))
    while True:
        w = _fit_simplex(probs[active], y) if len(active) > 1 else np.ones(1)
        keep = w >= min_weight
        if keep.all():
            break
        active = active[keep]
    weights = np.zeros(len(probs))
    weights[active] = w
    return weights.round(6).tolist()


def member_names(names: list[str]) -> list[str]:
    """Members' names made unique for tables and columns: a repeated name gets ``#<position>``."""
    return [f"{n}#{i}" if names.count(n) > 1 else n for i, n in enumerate(names)]


def default_threshold(rule: str, thresholds: list[float], weights: list[float]) -> float:
    """The members' own thresholds, averaged the way their probabilities are (``vote``: a majority)."""
    if rule == "vote":
        return 0.5
    w = np.asarray(weights if rule == "weighted" else [1.0] * len(thresholds), dtype=np.float64)
    if w.sum() <= 0:
        w = np.ones(len(thresholds))
    return float(np.dot(w, thresholds) / w.sum())


def ensemble_verdict(
    probs: list[float], thresholds: list[float], weights: list[float], rule: str, threshold: float | None
) -> tuple[float, float]:
    """The ensemble's P(ai) for one image by :func:`combine`, and the threshold in force (the given one, else
    :func:`default_threshold`)."""
    p = float(combine(np.asarray(probs)[:, None], rule, weights=weights, member_thresholds=thresholds)[0])
    t = default_threshold(rule, thresholds, weights) if threshold is None else threshold
    return p, t


def save_ensemble(spec: EnsembleSpec, path: str | Path) -> Path:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / ENSEMBLE_FILE).write_text(spec.model_dump_json(indent=2))
    return path


def load_ensemble(path: str | Path) -> EnsembleSpec:
    file = Path(path) / ENSEMBLE_FILE
    if not file.exists():
        raise FileNotFoundError(f"no ensemble at {path}: expected {file}")
    return EnsembleSpec.model_validate(json.loads(file.read_text()))


def is_ensemble(path: str | Path) -> bool:
    return (Path(path) / ENSEMBLE_FILE).is_file()


def ensemble_defaults(path: str, model_names: list[str]) -> dict[str, Any]:
    """rule, weights ({model: weight}, members matched to models by position) and threshold from an
    ensemble artefact, for the serving ingress; ValueError when it does not fit the app's models."""
    spec = load_ensemble(str(path).removeprefix("file://"))
    if len(spec.members) != len(model_names):
        raise ValueError(
            f"ensemble {path} has {len(spec.members)} members ({spec.members}) but the app serves "
            f"{len(model_names)} models ({model_names}); list them in the same order"
        )
    defaults: dict[str, Any] = {"rule": spec.rule, "threshold": spec.threshold}
    if spec.weights is not None:
        defaults["weights"] = dict(zip(model_names, spec.weights, strict=True))
    return defaults


@dataclass
class EnsembleMeta:
    """What evaluation reads from a model's ``meta``, for an ensemble."""

    name: str
    threshold: float
    classes: list[str]
    temperature: float = 1.0


class LoadedEnsemble:
    """An ensemble artefact with its members loaded. It evaluates like one model: ``genart evaluate`` and
    :func:`genart.models.predict.predict_rows` take it where they take a :class:`LoadedModel`."""

    def __init__(self, path: str | Path, spec: EnsembleSpec, members: list) -> None:
        for member, source in zip(members, spec.members, strict=True):
            if len(member.meta.classes) != 2:
                raise ValueError(
                    f"ensemble member {source} is an attribution model; members must be detectors"
                )
        self.path, self.spec, self.members = Path(path), spec, members
        self.meta = EnsembleMeta(
            name=self.path.name, threshold=spec.threshold, classes=list(members[0].meta.classes)
        )

    def predict_rows(self, rows, degrade: str | None = None, **kwargs):
        """Each contributing member's predictions combined by the ensemble's rule: ``prob``, one
        ``prob_<i>_<member>`` per member that ran, and ``pred_class`` at the ensemble's threshold. Members
        with a fitted weight of 0 are not run (:meth:`EnsembleSpec.contributing`): the result is the same."""
        from genart.models.predict import predict_rows

        active = self.spec.contributing()
        preds = [predict_rows(self.members[i], rows, degrade=degrade, **kwargs) for i in active]
        out = preds[0].drop(columns=[c for c in preds[0].columns if c.startswith("logit_")])
        probs = np.stack([p["prob"].to_numpy() for p in preds])
        for row, i in enumerate(active):
            out[f"prob_{i}_{self.members[i].meta.name}"] = probs[row]

        def pick(values: list[float] | None) -> list[float] | None:
            return None if values is None else [values[i] for i in active]

        out["prob"] = combine(
            probs, self.spec.rule, pick(self.spec.weights), pick(self.spec.member_thresholds)
        )
        out["pred_class"] = label_for(out["prob"].to_numpy(), self.meta.threshold)
        return out


def load_model_or_ensemble(path_or_uri: str | Path):
    """An ensemble directory (with ``ensemble.json``) as a :class:`LoadedEnsemble`, anything else as an
    artefact (:func:`genart.models.artifact.load_artifact`)."""
    from genart.models.artifact import load_artifact

    if is_ensemble(path_or_uri):
        spec = load_ensemble(path_or_uri)
        return LoadedEnsemble(path_or_uri, spec, [load_artifact(m) for m in spec.members])
    return load_artifact(path_or_uri)
