import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from genart.cli import app
from genart.evaluate.card import build_card


def _report(
    folder: Path, name: str, split: str, auc: float, per_gen: dict, jpeg75: float | None = None
) -> Path:
    folder.mkdir(parents=True)
    overall = {"n": 100, "accuracy": 0.9, "roc_auc": auc, "detection_rate": 0.9, "false_positive_rate": 0.1}
    (folder / "metrics.json").write_text(
        json.dumps({"name": name, "split": split, "threshold": 0.5, **overall})
    )
    pd.DataFrame.from_dict({**per_gen, "all": overall}, orient="index").to_csv(folder / "per_generator.csv")
    if jpeg75 is not None:
        pd.DataFrame(
            {"clean": [0.9], "jpeg96": [0.9], "jpeg75": [jpeg75], "half": [0.8]}, index=["all"]
        ).to_csv(folder / "robustness.csv")
    return folder


def test_card_tables_and_goals(tmp_path: Path) -> None:
    nan = float("nan")
    ai_folder = {"n": 10, "accuracy": 0.8, "roc_auc": nan, "detection_rate": 0.8, "false_positive_rate": nan}
    photos = {"n": 20, "accuracy": 0.95, "roc_auc": nan, "detection_rate": nan, "false_positive_rate": 0.05}
    folders = [
        _report(tmp_path / "ens-test", "ens", "test", 0.99, {}, jpeg75=0.88),
        _report(tmp_path / "ens-sample", "ens", "all", 0.90, {"sd": ai_folder, "photos": photos}, jpeg75=0.7),
        _report(
            tmp_path / "meta-sample", "baseline-metadata", "all", 0.75, {"sd": ai_folder, "photos": photos}
        ),
    ]
    card = build_card(folders, primary="ens")
    assert list(card.overall["data"]) == ["in-source test", "out-of-source (all)", "out-of-source (all)"]
    assert card.folders.loc["sd", "measure"] == "detection rate"
    assert card.folders.loc["photos", "measure"] == "false-positive rate"
    assert card.folders.loc["photos", "ens"] == pytest.approx(0.05)
    goals = {g.text.split(": ", 1)[1]: g for g in card.goals}
    assert goals["in-source test ROC-AUC >= 0.97"].met
    assert goals["in-source accuracy lost to a JPEG q75 re-save <= 0.05"].met  # 0.9 - 0.88
    assert goals["out-of-source (all) ROC-AUC >= 0.85"].met
    above = next(g for k, g in goals.items() if "above the better baseline" in k)
    assert above.value == pytest.approx(0.15) and above.met
    lost = goals["out-of-source (all) accuracy lost to a JPEG q75 re-save <= 0.05"]
    assert lost.value == pytest.approx(0.2) and not lost.met
    half = goals["in-source accuracy lost to half size <= 0.05"]  # 0.9 - 0.8
    assert half.value == pytest.approx(0.1) and not half.met
    assert "out-of-source (all) accuracy lost to half size <= 0.05" in goals

    result = CliRunner().invoke(
        app, ["card", *map(str, folders), "--primary", "ens", "--out", str(tmp_path / "c.md")]
    )
    assert result.exit_code == 0, result.output
    assert "NOT met" in result.output and "| photos" in (tmp_path / "c.md").read_text()
    missing = CliRunner().invoke(app, ["card", str(tmp_path), "--out", str(tmp_path / "x.md")])
    assert missing.exit_code == 2 and "not an evaluation report" in missing.output
    unknown = CliRunner().invoke(app, ["card", *map(str, folders), "--primary", "nope"])
    assert unknown.exit_code == 2 and "no report of 'nope'" in unknown.output
