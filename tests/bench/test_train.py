"""The training benchmark's driver: the plain PyTorch loop it compares with, and its report, with the Ray
Train runs replaced by given rates (Ray Train itself is tested in tests/train)."""

from pathlib import Path

import pytest
import ray

from genart.bench import train


def _steady(rates: list[float]) -> float:
    return sum(rates[1:]) / len(rates[1:])


def test_main_compares_steady_epochs_of_one_and_two_workers_with_the_plain_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ray_rates = {1: [1.0, 9.0], 2: [2.0, 15.0]}  # epoch 1: start-up
    calls = []

    def ray_train(manifest: Path, config, workers: int, epochs: int, storage: Path) -> list[float]:
        calls.append((workers, config.model.name, config.model.input_size, config.train.batch_size, epochs))
        return ray_rates[workers]

    monkeypatch.setattr(train, "_ray_train", ray_train)
    monkeypatch.setattr(ray, "init", lambda **kwargs: None)  # the session's Ray, if any, stays up
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    argv = ["--model", "tiny", "--size", "32", "--images-per-class", "2", "--epochs", "2",
            "--batch-size", "4"]  # fmt: skip
    results = train.main([*argv, "--out", str(tmp_path)])
    assert calls == [(workers, "tiny", 32, 4, 2) for workers in (1, 2)]
    plain = results["plain_pytorch_img_s"]
    assert len(plain) == 2 and all(rate > 0 for rate in plain)  # the real loop, one rate per epoch
    assert results["ratio_1_worker_over_plain"] == pytest.approx(9.0 / _steady(plain))
    assert results["ratio_2_workers_over_plain"] == pytest.approx(15.0 / _steady(plain))
    assert results["ratio_2_over_1_worker"] == pytest.approx(15.0 / 9.0)  # epoch 2 only
    assert results["images"] > 0 and results["ray_train_2_workers_img_s"] == ray_rates[2]
    report = (tmp_path / "train.md").read_text()
    assert f"| Ray Train, 2 workers (DDP) | 15.0 | {15.0 / _steady(plain):.2f} |" in report
    assert "tiny at 32 px" in report and "2 epochs (first excluded)" in report
    assert (tmp_path / "train.json").exists() and (tmp_path / "train_workers.png").stat().st_size > 0


def test_one_epoch_is_its_own_steady_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(train, "_plain_loop", lambda manifest, config, epochs: [10.0])
    monkeypatch.setattr(
        train, "_ray_train", lambda manifest, config, workers, epochs, storage: [5.0 * workers]
    )
    monkeypatch.setattr(ray, "init", lambda **kwargs: None)
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    results = train.main(["--model", "tiny", "--size", "32", "--images-per-class", "2", "--epochs", "1",
                          "--out", str(tmp_path)])  # fmt: skip
    assert results["ratio_1_worker_over_plain"] == pytest.approx(0.5)
    assert results["ratio_2_workers_over_plain"] == pytest.approx(1.0)


def test_help_says_what_is_compared(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        train.main(["--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0 and "Ray Train with 1 and 2 workers" in out and "--images-per-class" in out
