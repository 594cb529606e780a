"""The preprocessing-budget benchmark: both paths on harmless and hostile bytes, its sandbox's wire format,
and a whole run over a two-file corpus."""

import io
import json
from pathlib import Path

import pytest

from genart.bench import budget, hostile
from genart.config import MAX_IMAGE_PIXELS, DecodeLimits
from tests.conftest import image_bytes

#: 81 Mpx (1-bit, so small to build): above the old pixel cap and the budget's, under Pillow's own bomb check.
HUGE = hostile.png(9_000, 9_000, bit_depth=1, color_type=0)


@pytest.mark.parametrize("run", [budget.run_budgeted, budget.run_unbudgeted], ids=["budgeted", "unbudgeted"])
def test_both_paths_prepare_an_ordinary_image_for_every_model_input_and_refuse_a_huge_claim(run) -> None:
    status, detail = run(image_bytes((48, 40)), budget.SPEC_SETS["mixed"])
    assert status == "accepted" and detail == str([(3, 224, 224)] * len(budget.SPEC_SETS["mixed"]))
    assert run(HUGE, budget.SPEC_SETS["resize"])[0] == "refused"
    assert run(b"not an image at all", budget.SPEC_SETS["resize"])[0] == "error"


def test_the_unbudgeted_path_has_the_old_pixel_cap_alone_and_the_budget_refuses_what_it_let_through() -> None:
    assert budget.run_unbudgeted(HUGE, budget.SPEC_SETS["resize"]) == ("refused", f"max_pixels: {9_000**2}")
    strip = hostile.png(74_000, 1, bit_depth=1, color_type=0)  # 74,000 pixels, under the old cap
    assert MAX_IMAGE_PIXELS > 74_000  # so the unbudgeted path would decode it and resize it to 224 px high
    status, detail = budget.run_budgeted(strip, budget.SPEC_SETS["resize"])
    assert status == "refused" and detail.split(":")[0] in DecodeLimits.model_fields


def test_requests_and_answers_cross_the_sandbox_pipe_whole_and_a_closed_pipe_ends_it() -> None:
    stream = io.BytesIO()
    budget._send(stream, ("budgeted", HUGE, budget.SPEC_SETS["mixed"]))
    budget._send(stream, {"status": "accepted"})
    stream.seek(0)
    assert budget._receive(stream) == ("budgeted", HUGE, budget.SPEC_SETS["mixed"])
    assert budget._receive(stream) == {"status": "accepted"}
    with pytest.raises(EOFError):
        budget._receive(stream)


def test_a_cell_shows_status_detail_peak_and_time_or_dashes_for_a_killed_child() -> None:
    assert budget._cell(budget.Measurement("accepted", "[(3, 224, 224)]", 1234.4, 0.5)) == (
        "accepted ([(3, 224, 224)]), 1,234 MB, 0.50 s"
    )
    assert budget._cell(budget.Measurement("killed", "child ended with status 9", None, None)) == (
        "killed (child ended with status 9), -, -"
    )


def test_main_measures_each_case_both_ways_in_the_sandbox_and_writes_the_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    small = image_bytes((48, 40))
    cases = [hostile.HostileCase("small", small, "none"), hostile.HostileCase("huge", HUGE, "81 Mpx")]
    monkeypatch.setattr(hostile, "corpus", lambda: cases)
    budget.main(["--out", str(tmp_path), "--specs", "resize"])
    results = json.loads((tmp_path / "budget.json").read_text())
    rows = {row["case"]: row for row in results["cases"]}
    assert list(rows) == ["small", "huge"] and rows["small"]["bytes"] == len(small)
    assert results["specs"] == budget.SPEC_SETS["resize"]
    for path in ("unbudgeted", "budgeted"):
        assert rows["small"][path]["status"] == "accepted" and rows["huge"][path]["status"] == "refused"
        assert rows["small"][path]["peak_mb"] is not None and rows["small"][path]["wall_s"] is not None
    peaks = [row["budgeted"]["peak_mb"] for row in rows.values()]
    assert results["max_budgeted_peak_mb"] == max(peaks)
    report = (tmp_path / "budget.md").read_text()
    assert report.startswith("# Preprocessing budget: hostile files (resize model inputs)")
    assert (
        f"| small | {len(small):,} | accepted (" in report and f"| huge | {len(HUGE):,} | refused (" in report
    )


def test_help_describes_the_run(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        budget.main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert exit_.value.code == 0 and "without and with the decoding budget" in out and "--zygote" not in out
