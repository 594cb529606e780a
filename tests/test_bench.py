import json
from pathlib import Path

import pytest

from genart.bench import data as bench_data


@pytest.mark.ray
def test_data_benchmark_measures_both_pipelines_side_by_side(tmp_path: Path, ray_cluster) -> None:
    results = bench_data.main(
        [
            "--images-per-class",
            "2",
            "--size",
            "48",
            "--epochs",
            "2",
            "--processes",
            "1",
            "--out",
            str(tmp_path),
        ]
    )
    assert len(results["torch_dataloader_img_s"]) == len(results["ray_data_img_s"]) == 2
    assert results["steady_ratio_ray_over_torch"] > 0
    assert json.loads((tmp_path / "data.json").read_text())["images"] == results["images"] > 0
    assert "ratio Ray / DataLoader" in (tmp_path / "data.md").read_text()
