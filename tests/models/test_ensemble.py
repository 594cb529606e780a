"""The ensemble rule, its artefact and the serving defaults taken from it (no Ray, no model)."""

from pathlib import Path

import numpy as np
import pytest

from genart.models.ensemble import (
    EnsembleSpec,
    combine,
    contributing_members,
    default_threshold,
    ensemble_defaults,
    ensemble_verdict,
    fit_weights,
    member_names,
    save_ensemble,
)


def test_mean_weighted_and_vote_rules() -> None:
    probs = np.array([[0.9, 0.2, 0.6], [0.5, 0.4, 0.1]])
    np.testing.assert_allclose(combine(probs, "mean"), [0.7, 0.3, 0.35])
    np.testing.assert_allclose(combine(probs, "weighted", [3, 1]), [0.8, 0.25, 0.475])
    np.testing.assert_allclose(combine(probs, "vote", member_thresholds=[0.5, 0.45]), [1.0, 0.0, 0.5])
    with pytest.raises(ValueError, match="positive sum"):
        combine(probs, "weighted", [0, 0])
    with pytest.raises(ValueError, match="unknown ensemble rule"):
        combine(probs, "median")  # type: ignore[arg-type]


def test_fitted_weights_favour_the_informative_member() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    good = np.clip(y * 0.8 + 0.1 + rng.normal(0, 0.05, 400), 0, 1)
    noise = rng.uniform(0, 1, 400)
    weights = fit_weights(np.stack([good, noise]), y)
    assert weights[0] > 0.8 and abs(sum(weights) - 1) < 1e-6


def test_a_member_under_the_minimum_weight_is_dropped_and_the_rest_refitted() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    a, b = (np.clip(y * 0.4 + 0.3 + rng.normal(0, 0.2, 400), 0.01, 0.99) for _ in range(2))
    noise = rng.uniform(0, 1, 400)
    kept = fit_weights(np.stack([a, b, noise]), y)
    assert kept[2] == 0.0 and min(kept[:2]) > 0.2  # two informative members share; noise is out exactly
    assert fit_weights(np.stack([a, b, noise]), y, min_weight=max(kept) - 0.01) == [1.0, 0.0, 0.0]
    assert contributing_members("weighted", fit_weights(np.stack([a, noise]), y), 2) == [0]


def test_ensemble_spec_checks_lengths() -> None:
    with pytest.raises(ValueError, match="weights has 1 entries for 2 members"):
        EnsembleSpec(members=["a", "b"], weights=[1.0])


def test_the_serving_ingress_takes_its_defaults_from_an_ensemble_artefact(tmp_path: Path) -> None:
    save_ensemble(
        EnsembleSpec(members=["a", "b"], rule="weighted", weights=[0.7, 0.3], threshold=0.42), tmp_path / "e"
    )
    assert ensemble_defaults(str(tmp_path / "e"), ["lite0", "residual"]) == {
        "rule": "weighted",
        "threshold": 0.42,
        "weights": {"lite0": 0.7, "residual": 0.3},
    }
    assert ensemble_defaults(f"file://{tmp_path / 'e'}", ["x", "y"])["threshold"] == 0.42
    with pytest.raises(ValueError, match=r"has 2 members .* serves 1 models"):
        ensemble_defaults(str(tmp_path / "e"), ["lite0"])
    with pytest.raises(FileNotFoundError, match="no ensemble at"):
        ensemble_defaults(str(tmp_path / "missing"), ["lite0", "residual"])


@pytest.mark.parametrize("rule", ["mean", "weighted", "vote"])
def test_the_ingress_combines_members_with_the_evaluation_rule(rule: str) -> None:
    probs, thresholds, weights = [0.9, 0.2, 0.7], [0.5, 0.3, 0.8], [2.0, 1.0, 1.0]
    p, _ = ensemble_verdict(probs, thresholds, weights, rule, None)
    expected = combine(np.array(probs)[:, None], rule, weights=weights, member_thresholds=thresholds)[0]
    assert p == pytest.approx(expected)


def test_default_threshold_averages_member_thresholds_like_their_probabilities() -> None:
    assert default_threshold("mean", [0.4, 0.6], [3.0, 1.0]) == pytest.approx(0.5)
    assert default_threshold("weighted", [0.4, 0.6], [3.0, 1.0]) == pytest.approx(0.45)
    assert default_threshold("vote", [0.1, 0.9], [1.0, 1.0]) == 0.5
    assert ensemble_verdict([0.9], [0.7], [1.0], "mean", 0.95) == pytest.approx((0.9, 0.95))


def test_member_names_number_only_the_repeated_names() -> None:
    assert member_names(["tiny", "residual", "tiny"]) == ["tiny#0", "residual", "tiny#2"]
    assert member_names(["a", "b"]) == ["a", "b"]


def test_a_weighted_ensemble_runs_only_members_with_weight(monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    import pandas as pd

    import genart.models.predict
    from genart.models.ensemble import LoadedEnsemble

    scores = {"clip": [0.9, 0.2, 0.7], "lite0": [0.6, 0.4, 0.5], "residual": [0.5, 0.5, 0.5]}
    ran: list[str] = []

    def fake_predict_rows(model, rows, degrade=None, **kwargs):
        ran.append(model.meta.name)
        return pd.DataFrame({"path": rows["path"], "prob": scores[model.meta.name], "logit_0": 0.0})

    monkeypatch.setattr(genart.models.predict, "predict_rows", fake_predict_rows)
    members = [
        types.SimpleNamespace(meta=types.SimpleNamespace(name=n, classes=["nature", "ai"])) for n in scores
    ]
    rows = pd.DataFrame({"path": ["a", "b", "c"]})

    spec = EnsembleSpec(members=list(scores), rule="weighted", weights=[0.75, 0.0, 0.25], threshold=0.5)
    assert spec.contributing() == [0, 2]
    out = LoadedEnsemble("e", spec, members).predict_rows(rows)
    assert ran == ["clip", "residual"]  # the zero-weight member is not run
    # the same P(ai) as combining all three, the weight-0 member too
    np.testing.assert_allclose(
        out["prob"], combine(np.array(list(scores.values())), "weighted", spec.weights)
    )
    assert [c for c in out.columns if c.startswith("prob_")] == ["prob_0_clip", "prob_2_residual"]
    assert (out["pred_class"] == ["ai", "nature", "ai"]).all()

    ran.clear()
    for rule in ("mean", "vote"):  # every member counts under the other rules
        spec = EnsembleSpec(members=list(scores), rule=rule, member_thresholds=[0.5, 0.5, 0.5])
        assert spec.contributing() == [0, 1, 2]
        out = LoadedEnsemble("e", spec, members).predict_rows(rows)
        np.testing.assert_allclose(
            out["prob"], combine(np.array(list(scores.values())), rule, None, [0.5] * 3)
        )
    assert ran == ["clip", "lite0", "residual"] * 2


def test_with_no_positive_weight_every_member_is_asked_and_combine_refuses() -> None:
    from genart.models.ensemble import contributing_members

    assert contributing_members("weighted", [0.0, -1.0], 2) == [0, 1]
    assert contributing_members("weighted", None, 3) == [0, 1, 2]
    with pytest.raises(ValueError, match="positive sum"):
        combine(np.array([[0.2], [0.9]]), "weighted", [0.0, -1.0])
