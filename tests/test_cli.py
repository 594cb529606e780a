import logging
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from genart.cli import QUIET_RAY_DATA, app

runner = CliRunner()


def invoke(*args: str):
    result = runner.invoke(app, list(args), catch_exceptions=False)
    return result


@pytest.mark.parametrize(
    "command", [[], ["data"], ["data", "synth"], ["data", "index"], ["data", "split"], ["data", "report"]]
)
def test_every_command_has_help(command: list[str]) -> None:
    result = invoke(*command, "--help")
    assert result.exit_code == 0 and "Usage" in result.output


def test_data_commands_chain_from_synth_to_report(tmp_path: Path) -> None:
    root, manifest = tmp_path / "g", tmp_path / "m.parquet"
    result = invoke(
        "data", "synth", "--out", str(root), "--images-per-class", "4", "--size", "48", "--workers", "1"
    )
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in root.iterdir() if p.is_dir())[0] == "imagenet_ai_0419_biggan"
    assert invoke("data", "index", str(root), "--out", str(manifest), "--workers", "1").exit_code == 0
    result = invoke("data", "split", str(manifest))
    assert result.exit_code == 0 and "sha256 in two splits: 0" in result.output
    split = tmp_path / "m.split.parquet"
    result = invoke("data", "report", str(split), "--out", str(tmp_path / "report"))
    assert result.exit_code == 0
    assert "format alone predicts the label" in result.output  # the default formats copy the benchmark's trap
    assert (tmp_path / "report" / "report.md").exists()
    config = tmp_path / "tiny.yaml"
    config.write_text(
        "model: {name: tiny, pretrained: false, input_size: 32, canonical_jpeg: 90, sized_views: 1}\n"
    )
    result = invoke("data", "report", str(split), "--out", str(tmp_path / "after"), "--config", str(config))
    assert result.exit_code == 0, result.output
    report = (tmp_path / "after" / "report.md").read_text()
    assert "Shortcuts after the transform" in report and "training transform" in report
    assert "class-matched eval view" in report  # the view the head is fitted on, when it is


def test_data_commands_fail_clearly_on_bad_input(tmp_path: Path) -> None:
    result = invoke("data", "index", str(tmp_path / "missing"))
    assert result.exit_code == 2 and "not a directory" in result.output
    result = invoke("data", "split", str(tmp_path / "missing.parquet"))
    assert result.exit_code == 2 and "genart data index" in result.output
    result = invoke("data", "report", str(tmp_path / "missing.parquet"))
    assert result.exit_code == 2
    result = invoke("data", "synth", "--out", str(tmp_path / "x"), "--images-per-class", "0")
    assert result.exit_code == 2 and "error:" in result.output


def test_train_fails_clearly_without_data_or_with_a_bad_config(tmp_path: Path) -> None:
    result = invoke("train", "--no-track")
    assert result.exit_code == 2 and "--data MANIFEST" in result.output
    result = invoke("train", "--data", str(tmp_path / "m.parquet"), "--set", "train.epochz=3")
    assert result.exit_code == 2 and "bad configuration" in result.output
    result = invoke("train", "--data", str(tmp_path / "m.parquet"), "--no-track")
    assert result.exit_code == 2 and "no manifest" in result.output


def test_ray_data_console_is_quiet_unless_training_is_verbose(monkeypatch, tmp_path: Path) -> None:
    from ray.data._internal.logging import configure_logging

    monkeypatch.delenv("RAY_DATA_LOGGING_CONFIG", raising=False)
    invoke("data", "split", str(tmp_path / "missing.parquet"))  # any command: the callback sets it
    assert os.environ["RAY_DATA_LOGGING_CONFIG"] == QUIET_RAY_DATA
    try:
        configure_logging()  # what every Ray worker does when it imports ray.data, reading the variable
        logger = logging.getLogger("ray.data")
        handlers = {handler.name: handler for handler in logger.handlers}
        assert handlers["console"].level == logging.WARNING  # the terminal: warnings and errors
        assert "file" in handlers and logger.level == logging.DEBUG  # the session's ray-data.log: everything
    finally:
        monkeypatch.delenv("RAY_DATA_LOGGING_CONFIG")
        configure_logging()  # Ray Data's own default again
    assert logging.getLogger("ray.data").handlers[-1].level == logging.INFO

    monkeypatch.setenv("RAY_DATA_LOGGING_CONFIG", QUIET_RAY_DATA)
    invoke("train", "--verbose", "--data", str(tmp_path / "m.parquet"), "--no-track")  # fails: no manifest
    assert "RAY_DATA_LOGGING_CONFIG" not in os.environ
    monkeypatch.setenv("RAY_DATA_LOGGING_CONFIG", "mine.yaml")  # a user's own configuration stays
    invoke("train", "--verbose", "--data", str(tmp_path / "m.parquet"), "--no-track")
    assert os.environ["RAY_DATA_LOGGING_CONFIG"] == "mine.yaml"


def test_serve_up_offers_exactly_the_ingress_layouts_the_app_knows() -> None:
    from typing import get_args

    from genart import cli
    from genart.config import IngressLayout
    from genart.serve.app import INGRESS_ENV

    assert get_args(cli.IngressLayout) == get_args(IngressLayout) == tuple(INGRESS_ENV)


@pytest.mark.parametrize("exact", [True, False])
def test_weights_clip_says_how_this_cpu_runs_the_int8_encoder(
    monkeypatch, tmp_path: Path, exact: bool
) -> None:
    monkeypatch.setattr("genart.models.clip.download_clip", lambda dest: tmp_path / "clip_encoder.int8.onnx")
    monkeypatch.setattr("genart.models.clip.u8s8_is_exact", lambda: exact)
    out = invoke("weights", "clip").output
    assert "sha256 checked" in out
    assert ("runs as shipped" in out) is exact and ("splits its int8 weights" in out) is not exact
