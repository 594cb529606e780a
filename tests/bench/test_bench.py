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


def test_serve_benchmark_ceiling_and_plain_app_run_the_same_models(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from genart.bench import serve as bench_serve
    from genart.bench.harness import bench_artifacts, bench_images

    artifacts = bench_artifacts(tmp_path, size=32)
    images = bench_images(4, 48)
    ceiling = bench_serve.ceiling(artifacts, images, batch=2)
    assert ceiling["img_s"] > 0 and ceiling["batch"] == 2
    client = TestClient(bench_serve.plain_app([str(a) for a in artifacts]))
    answer = client.post("/predict", files={"file": ("x.png", images[0], "image/png")})
    assert answer.status_code == 200 and 0 <= answer.json()["probability"] <= 1


def test_hottest_functions_from_collapsed_stacks(tmp_path: Path) -> None:
    from genart.bench.serve import hottest_functions

    raw = tmp_path / "p.txt"
    raw.write_text(
        "main (a.py:1);serve (b.py:2);forward (/x/timm/model.py:9) 6\n"
        "main (a.py:1);select (/usr/lib/selectors.py:4) 3\n"
        "main (a.py:1);serve (b.py:2);forward (/x/timm/model.py:9) 1\n"
        "garbage\n"
    )
    hot = hottest_functions(raw)
    assert hot[0] == ("forward (model.py:9)", 0.7) and hot[1] == ("select (selectors.py:4)", 0.3)
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert hottest_functions(empty) == []
