"""Leave-one-source-out: groups, what leaves with a group, and the per-group ROC-AUC."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression

from genart.evaluate.loso import LosoResult, leave_one_source_out, loso_groups, write_loso


def _rows(n=40):
    rows = []
    for family in ("flux", "sdxl", "tiny"):
        for i in range(n if family != "tiny" else 5):
            rows.append({"label": "ai", "family": family, "source": f"repo_{family}", "x": 1.0 + i % 3})
    for source in ("faces", "scenes"):
        for i in range(n):
            rows.append({"label": "nature", "family": "real", "source": source, "x": -1.0 - i % 3})
    # reconstructions of the faces photos: ai, but they carry their photo's source
    for _ in range(10):
        rows.append({"label": "ai", "family": "taef2", "source": "faces", "x": 1.5})
    return pd.DataFrame(rows)


def test_groups_pool_small_ones_per_class():
    groups = loso_groups(_rows(), min_size=20)
    assert set(groups) == {"ai/flux", "ai/sdxl", "ai/other", "nature/faces", "nature/scenes"}
    assert (groups[_rows()["family"] == "tiny"] == "ai/other").all()


def test_each_group_is_scored_by_a_model_that_never_saw_it(tmp_path):
    rows = _rows()
    seen: dict[str, set[int]] = {}

    def fit_score(train, score):
        seen[tuple(score)] = set(train)
        model = LogisticRegression().fit(rows.loc[train, ["x"]], rows.loc[train, "label"] == "ai")
        return model.predict_proba(rows.loc[score, ["x"]])[:, 1]

    result = leave_one_source_out(rows, fit_score, min_size=20, progress=False)
    assert result.scores["prob"].notna().all()
    faces = set(np.flatnonzero(rows["source"] == "faces"))
    held_faces = next(train for score, train in seen.items() if set(score) <= faces and len(score) == 40)
    assert not held_faces & faces  # the photos and their reconstructions left together
    assert result.table.loc["ai/flux", "roc_auc"] == 1.0  # separable on x
    assert set(result.summary()) >= {"loso_mean_auc", "loso_min_auc", "loso_min_group"}
    report = write_loso(result, tmp_path)
    assert "Mean ROC-AUC" in report.read_text() and (tmp_path / "loso.png").exists()


def test_a_group_the_others_cannot_explain_scores_low():
    rows = _rows()
    rows.loc[rows["source"] == "scenes", "x"] = 2.0  # these photos look like the fakes
    result = leave_one_source_out(
        rows,
        lambda tr, sc: (
            LogisticRegression()
            .fit(rows.loc[tr, ["x"]], rows.loc[tr, "label"] == "ai")
            .predict_proba(rows.loc[sc, ["x"]])[:, 1]
        ),
        progress=False,
    )
    assert result.table.loc["nature/scenes", "roc_auc"] < 0.5
    assert result.table.loc["nature/scenes", "flagged_ai"] > 0.5


def test_compare_ranks_by_held_out_sources_when_a_loso_figure_is_recorded(tmp_path):
    from genart.evaluate.compare import _decision
    from genart.models.artifact import ArtifactMeta, read_meta, record_metrics, save_artifact
    from genart.models.zoo import build_model, get_entry

    model, spec = build_model("tiny", pretrained=False)
    meta = ArtifactMeta(
        name="tiny", timm_id=get_entry("tiny").timm_id, input=spec.to_dict(), metrics={"test_roc_auc": 0.9}
    )
    path = save_artifact(model, meta, tmp_path / "a")
    record_metrics(path, {"loso_mean_auc": 0.81, "loso_min_group": "ai/sd2"})
    assert read_meta(path).metrics == {"test_roc_auc": 0.9, "loso_mean_auc": 0.81, "loso_min_group": "ai/sd2"}
    metrics = pd.DataFrame(
        {
            "accuracy": [0.99, 0.80, 0.95],
            "roc_auc": [0.999, 0.85, 0.99],
            "loso_mean_auc": [0.70, 0.88, np.nan],
        },
        index=["in_source_star", "transfers", "ensemble(mean)"],
    )
    lines = _decision(metrics, ["in_source_star", "transfers"], speed=False)
    assert lines[0].startswith("Best single model: **transfers**, LOSO mean ROC-AUC 0.880")
    without = _decision(metrics.drop(columns="loso_mean_auc"), ["in_source_star", "transfers"], speed=False)
    assert without[0].startswith("Best single model: **in_source_star**, ROC-AUC 0.999")


def test_pairs_split_a_family_figure_by_photo_source_and_name_what_costs_most(tmp_path):
    rows = _rows()
    sdxl = rows["family"] == "sdxl"
    rows.loc[sdxl, "x"] = np.where(np.arange(40) % 2, -0.5, -2.5)  # half above the scenes, half below
    rows.loc[rows["source"] == "scenes", "x"] = -1.0
    rows.loc[(rows["source"] == "faces") & (rows["label"] == "nature"), "x"] = -3.0  # below every sdxl image
    rows = pd.concat([rows, rows[rows["source"] == "scenes"].assign(source="studio")], ignore_index=True)
    score = rows["x"].to_numpy()  # a fixed rule, so each side's out-of-source score is known
    result = leave_one_source_out(rows, lambda tr, sc: 1 / (1 + np.exp(-score[sc])), progress=False)
    pairs = result.pairs()
    assert list(pairs.columns) == ["nature/faces", "nature/scenes", "nature/studio"]
    assert pairs.loc["ai/sdxl"].tolist() == [1.0, 0.5, 0.5]
    assert pairs.loc["ai/flux", "nature/scenes"] == 1.0
    sizes = result.table.loc[pairs.columns, "n"]
    for family in pairs.index:  # a family's figure is its row, weighted by the photo sources' sizes
        weighted = (pairs.loc[family] * sizes).sum() / sizes.sum()
        assert result.table.loc[family, "roc_auc"] == pytest.approx(weighted)
    report = write_loso(result, tmp_path).read_text()
    confused = [line for line in report.splitlines() if line.startswith("- ai/")]
    assert confused == [
        "- ai/sdxl (0.667): costs most against scenes 0.50 (n=40), studio 0.50 (n=40), faces 1.00 (n=40)"
    ]  # fmt: skip
    assert (tmp_path / "loso_pairs.png").exists() and (tmp_path / "loso_pairs.csv").exists()


def test_pairs_leave_out_groups_that_were_never_scored():
    scores = pd.DataFrame(
        {
            "group": ["ai/a", "ai/a", "ai/b", "nature/p", "nature/q", "nature/q"],
            "target": [1, 1, 1, 0, 0, 0],
            "prob": [0.9, 0.4, np.nan, 0.2, 0.6, 0.1],
        }
    )
    pairs = LosoResult(table=pd.DataFrame(), scores=scores).pairs()
    assert list(pairs.index) == ["ai/a"] and list(pairs.columns) == ["nature/p", "nature/q"]
    assert pairs.loc["ai/a"].tolist() == [1.0, 0.75]
