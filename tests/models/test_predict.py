"""The inference rules: the one softmax with temperature, P(ai), the label rule, and the network loaders."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from genart.models.artifact import META_FILE, ArtifactMeta, load_artifact, save_artifact
from genart.models.predict import ai_probability, class_probabilities, is_ai, label_for
from genart.models.zoo import build_model, get_entry


def test_class_probabilities_are_a_softmax_of_the_logits_divided_by_the_temperature() -> None:
    logits = np.array([[2.0, 0.0, -1.0], [0.5, 0.5, 0.5]])
    probs = class_probabilities(logits, temperature=2.0)
    expected = np.exp(logits / 2.0) / np.exp(logits / 2.0).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(probs, expected, rtol=1e-6)
    np.testing.assert_allclose(class_probabilities(torch.tensor(logits), 2.0), expected, rtol=1e-6)


def test_ai_probability_is_one_minus_nature_also_for_attribution_models() -> None:
    logits = np.array([[0.0, 1.0, 2.0], [3.0, 0.0, 0.0]])
    np.testing.assert_allclose(ai_probability(logits), 1 - class_probabilities(logits)[:, 0], rtol=1e-6)
    sharp, soft = ai_probability([[0.0, 2.0]]), ai_probability([[0.0, 2.0]], temperature=4.0)
    assert 0.5 < soft[0] < sharp[0]


def test_the_label_rule_says_ai_at_the_threshold_and_above() -> None:
    assert is_ai(0.5, 0.5) and not is_ai(0.4999, 0.5)
    assert label_for(0.5, 0.5) == "ai" and label_for(0.2, 0.5) == "nature"
    np.testing.assert_array_equal(is_ai(np.array([0.1, 0.3, 0.9]), 0.3), [False, True, True])
    np.testing.assert_array_equal(label_for(np.array([0.1, 0.3]), 0.3), ["nature", "ai"])


def test_load_artifact_dispatches_on_the_kind_and_refuses_an_unknown_one(tmp_path: Path) -> None:
    model, spec = build_model("tiny", pretrained=False, input_size=48)
    meta = ArtifactMeta(name="tiny", timm_id=get_entry("tiny").timm_id, input=spec.to_dict())
    path = save_artifact(model, meta, tmp_path / "a")
    assert load_artifact(path).meta.kind == "timm"
    raw = json.loads((path / META_FILE).read_text())
    del raw["kind"]  # an artefact written before kinds existed still loads as timm
    (path / META_FILE).write_text(json.dumps(raw))
    assert load_artifact(path).meta.kind == "timm"
    (path / META_FILE).write_text(json.dumps({**raw, "kind": "onnx-clip"}))
    with pytest.raises(ValueError, match=r"kind 'onnx-clip'.*known: \['clip', 'timm'\]"):
        load_artifact(path)
