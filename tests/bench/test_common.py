"""How repeated benchmark measurements become a result, or say why they are none: no Ray."""

import pytest

from genart.bench.common import interleave, ratio_verdict, repeat_summary


def test_interleave_runs_every_configuration_each_round_and_alternates_the_order() -> None:
    calls: list[str] = []

    def run(name: str):
        def measure() -> float:
            calls.append(name)
            return float(len(calls))

        return measure

    out = interleave({"a": run("a"), "b": run("b")}, repeats=3)
    assert calls == ["a", "b", "b", "a", "a", "b"]
    assert out == {"a": [1.0, 4.0, 5.0], "b": [2.0, 3.0, 6.0]}


def test_repeat_summary_gives_median_range_and_spread() -> None:
    s = repeat_summary([90.0, 100.0, 110.0])
    assert (s["median"], s["min"], s["max"]) == (100.0, 90.0, 110.0)
    assert s["spread"] == pytest.approx(0.2) and s["agree"]
    assert not repeat_summary([80.0, 100.0, 110.0])["agree"]
    assert not repeat_summary([100.0])["agree"]  # nothing to compare it with
    with pytest.raises(ValueError, match="no measurements"):
        repeat_summary([])


def test_ratio_of_agreeing_repeats_is_judged_against_the_goal() -> None:
    ray, torch = repeat_summary([95.0, 96.0, 94.0]), repeat_summary([100.0, 101.0, 99.0])
    met = ratio_verdict(ray, torch, 0.9, ("Ray Data", "DataLoader"))
    assert met["result"] and met["met"] and met["ratio"] == pytest.approx(0.95)
    assert met["text"] == "0.95 (goal >= 0.9: met)"
    missed = ratio_verdict(repeat_summary([50.0, 51.0]), torch, 0.9, ("Ray Data", "DataLoader"))
    assert missed["result"] and missed["met"] is False and "not met" in missed["text"]
    plain = ratio_verdict(repeat_summary([50.0, 50.0]), torch, None, ("haproxy", "proxy"))  # no goal
    assert plain["result"] and plain["met"] is None and plain["text"] == "0.50"


def test_repeats_that_disagree_by_more_than_20_percent_give_no_ratio() -> None:
    noisy = repeat_summary([30.0, 100.0, 60.0])
    verdict = ratio_verdict(noisy, repeat_summary([100.0, 100.0]), 0.9, ("Ray Data", "DataLoader"))
    assert not verdict["result"] and verdict["met"] is None
    assert verdict["text"].startswith("no result: Ray Data repeats disagree by 117% (more than 20%)")
    assert "DataLoader" not in verdict["text"]
    once = ratio_verdict(repeat_summary([100.0]), repeat_summary([100.0]), 0.9, ("Ray Data", "DataLoader"))
    assert not once["result"] and "Ray Data ran once; DataLoader ran once" in once["text"]
