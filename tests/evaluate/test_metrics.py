import numpy as np
import pandas as pd
import pytest

from genart.evaluate.metrics import (
    binary_metrics,
    choose_threshold,
    expected_calibration_error,
    fit_temperature,
    per_generator,
)


def test_binary_metrics_match_hand_counts() -> None:
    y = np.array([1, 1, 1, 0, 0, 0, 0, 0])
    p = np.array([0.9, 0.8, 0.3, 0.6, 0.2, 0.1, 0.1, 0.0])
    m = binary_metrics(y, p, threshold=0.5)
    # tp=2, fn=1, fp=1, tn=4
    assert m["accuracy"] == pytest.approx(6 / 8)
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 3)
    assert m["detection_rate"] == pytest.approx(2 / 3) and m["false_positive_rate"] == pytest.approx(1 / 5)
    assert 0.8 < m["roc_auc"] <= 1.0


def test_one_class_folders_report_rates_not_auc() -> None:
    m = binary_metrics(np.zeros(4), np.array([0.1, 0.7, 0.2, 0.9]), threshold=0.5)
    assert np.isnan(m["roc_auc"]) and np.isnan(m["detection_rate"])
    assert m["false_positive_rate"] == 0.5


def test_per_generator_has_one_row_each_and_all() -> None:
    frame = pd.DataFrame(
        {"generator": ["a", "a", "b", "b"], "target": [1, 0, 1, 0], "prob": [0.9, 0.1, 0.4, 0.6]}
    )
    table = per_generator(frame, threshold=0.5)
    assert list(table.index) == ["a", "b", "all"]
    assert (
        table.loc["a", "accuracy"] == 1.0 and table.loc["b", "accuracy"] == 0.0 and table.loc["all", "n"] == 4
    )


def test_threshold_is_chosen_on_data_not_half() -> None:
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 500)
    p = np.concatenate(
        [rng.uniform(0.0, 0.3, 500), rng.uniform(0.2, 0.4, 500)]
    )  # a shifted, well-ranked model
    threshold = choose_threshold(y, p)
    assert 0.2 <= threshold <= 0.3
    assert binary_metrics(y, p, threshold)["accuracy"] > binary_metrics(y, p, 0.5)["accuracy"]
    assert choose_threshold(np.ones(3), np.array([0.2, 0.3, 0.4])) == 0.5


def test_threshold_at_a_false_positive_rate_is_the_lowest_within_it() -> None:
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 1000)
    p = np.concatenate([rng.beta(2, 5, 1000), rng.beta(5, 2, 1000)])
    youden = choose_threshold(y, p)
    for max_fpr in (0.2, 0.05, 0.01):
        t = choose_threshold(y, p, max_fpr=max_fpr)
        fpr = (p[y == 0] >= t).mean()
        assert fpr <= max_fpr
        below = p[(y == 0) & (p < t)].max()  # one step lower would call one more real image AI
        assert (p[y == 0] >= below).mean() > max_fpr
    assert choose_threshold(y, p, max_fpr=0.01) > choose_threshold(y, p, max_fpr=0.05) > youden


def test_temperature_scaling_fixes_overconfidence() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 4000)
    true_logit = np.where(y == 1, 1.0, -1.0) + rng.normal(0, 1.5, len(y))
    overconfident = np.stack([np.zeros_like(true_logit), true_logit * 4], axis=1)  # 4x too sharp
    temperature = fit_temperature(overconfident, y)
    assert 3.0 < temperature < 5.5

    def probs(t: float) -> np.ndarray:
        z = overconfident / t
        return 1 / (1 + np.exp(-(z[:, 1] - z[:, 0])))

    assert expected_calibration_error(y, probs(temperature)) < expected_calibration_error(y, probs(1.0)) / 2
    assert fit_temperature(overconfident[:10], np.ones(10)) == 1.0


def test_ece_is_zero_for_perfectly_calibrated_bins() -> None:
    y = np.array([1] * 8 + [0] * 2 + [0] * 10)
    p = np.array([0.8] * 10 + [0.0] * 10)
    assert expected_calibration_error(y, p, bins=5) == pytest.approx(0.0, abs=1e-9)
    assert np.isnan(expected_calibration_error(np.array([]), np.array([])))
