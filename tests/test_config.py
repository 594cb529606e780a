from pathlib import Path

import pytest
from pydantic import ValidationError

from genart.config import GenartConfig, ServeConfig, Settings, load_config, parse_overrides


def test_defaults_are_a_valid_cpu_config() -> None:
    config = load_config(environ={})
    assert config == GenartConfig()
    assert config.train.cpus_per_worker < 1  # leaves CPU for Ray Data on a 2-core machine


def test_yaml_then_env_then_cli_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  name: lite0\ntrain:\n  lr: 0.01\n  epochs: 3\n")
    config = load_config(
        path,
        overrides=["train.epochs=7", "data.generators=[imagenet_glide]"],
        environ={"GENART__TRAIN__LR": "0.5", "GENART__TRAIN__EPOCHS": "5", "UNRELATED": "x"},
    )
    assert config.model.name == "lite0"
    assert config.train.lr == 0.5  # env beats YAML
    assert config.train.epochs == 7  # CLI beats env
    assert config.data.generators == ["imagenet_glide"]


def test_unknown_keys_and_bad_values_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="lrr"):
        load_config(overrides=["train.lrr=1"], environ={})
    with pytest.raises(ValidationError):
        load_config(overrides=["train.epochs=0"], environ={})
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="mapping"):
        load_config(path, environ={})


@pytest.mark.parametrize(
    "override",
    ["tune.optimizer=[adam]", "tune.schedule=[cosin]", "train.optimizer=sgdd", "model.crop_policy=cut"],
)
def test_a_typo_in_a_vocabulary_fails_when_the_config_is_loaded(override: str) -> None:
    with pytest.raises(ValidationError, match="Input should be"):
        load_config(overrides=[override], environ={})
    with pytest.raises(ValidationError, match="Input should be 'mean', 'weighted' or 'vote'"):
        ServeConfig.model_validate({"models": [{"name": "a"}], "rule": "median"})


def test_parse_overrides_needs_key_and_value() -> None:
    assert parse_overrides(["a.b.c=1", "a.d=x"]) == {"a": {"b": {"c": 1}, "d": "x"}}
    with pytest.raises(ValueError, match=r"section\.key=value"):
        parse_overrides(["nonsense"])


def test_settings_read_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert Settings().database_url == "sqlite:///genart.db"
    assert Settings().mlflow_tracking_uri == "sqlite:///mlflow.db"
    monkeypatch.setenv("DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1/test")
    assert Settings().database_url.startswith("postgresql+psycopg")


@pytest.mark.parametrize(
    "path", sorted(Path(__file__).parents[1].joinpath("jobs", "configs").glob("*.yaml")), ids=lambda p: p.name
)
def test_every_shipped_experiment_config_is_valid(path: Path) -> None:
    from genart.models.zoo import get_entry

    config = load_config(path, environ={})
    get_entry(config.model.name)  # a zoo model
    assert config.train.probe_epochs < config.train.epochs
