import json
import statistics
from pathlib import Path

import pytest

from genart.bench import data as bench_data

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.ray
def test_data_benchmark_measures_both_pipelines_interleaved_on_generated_and_real_images(
    tmp_path: Path, tiny_tree: Path, ray_cluster
) -> None:
    results = bench_data.main(
        ["--images-per-class", "2", "--size", "48", "--epochs", "2", "--repeats", "2", "--processes", "1",
         "--batch-size", "4", "--real", str(tiny_tree), "--real-config",
         str(ROOT / "jobs/configs/real-lite0.yaml"), "--out", str(tmp_path)]
    )  # fmt: skip
    assert list(results["cases"]) == ["generated", "real"]
    for case in results["cases"].values():
        for side in ("dataloader", "ray_data"):
            assert len(case[side]["epochs"]) == 2 and all(len(r) == 2 for r in case[side]["epochs"])
            assert case[side]["median"] > 0
            assert all(len(r) == 2 and all(s >= 0 for s in r) for r in case[side]["first_batch_s"])
            start = [r[0] for r in case[side]["first_batch_s"]]  # the run's first batch: its start-up
            assert case[side]["first_batch_s_median"] == statistics.median(start) > 0
            whole = [2 / (1 / a + 1 / b) for a, b in case[side]["epochs"]]  # images over time, both epochs
            assert case[side]["median"] == pytest.approx(statistics.median(whole))
        assert case["ratio"]["ratio"] == case["ray_data"]["median"] / case["dataloader"]["median"]
    assert "resize to 224 px" in results["cases"]["real"]["description"]
    assert json.loads((tmp_path / "data.json").read_text())["cases"]["real"]["images"] > 0
    report = (tmp_path / "data.md").read_text()
    assert "Ray Data / DataLoader, whole-run medians" in report and "| real |" in report
    assert "first batch, s" in report and (tmp_path / "data_throughput.png").stat().st_size > 0


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


def test_the_serve_layout_is_every_process_but_the_forward_passes_and_the_client() -> None:
    from genart.bench.serve import layout_cpu, requests_at

    cpu = {"ServeReplica:genart:m0": 10.0, "ProxyActor": 3.0, "raylet": 1.0, "load driver (this process)": 6}
    assert layout_cpu(cpu, forward_ms=8.0) == pytest.approx(6.0)
    assert [requests_at(c, 64) for c in (1, 4, 16, 64)] == [12, 16, 64, 128]


HAPROXY_APP = """
import json, sys
from pathlib import Path

import httpx

from genart.bench.harness import ServeApp, bench_artifacts, bench_images
from genart.bench.serve import serve_processes
from genart.models.allocator import ALLOCATOR_ENV

root = Path(sys.argv[1])
env = {"DATABASE_URL": f"sqlite:///{root}/db.sqlite", "GENART_DATA_DIR": str(root / "data")}
with ServeApp(bench_artifacts(root, size=32), env, ingress="haproxy") as app:
    # the first request warms the replicas: give it time on a busy machine (httpx's default is 5 s)
    answer = httpx.post(
        f"{app.base}/predict", files={"file": ("x.png", bench_images(1, 48)[0], "image/png")}, timeout=120
    )
    processes = serve_processes()
    roles = sorted(processes)
    environ = {  # what each replica process was started with
        role: dict(
            kv.split("=", 1) for kv in Path(f"/proc/{pids[0]}/environ").read_text().split(chr(0)) if "=" in kv
        )
        for role, pids in processes.items()
        if role.startswith("ServeReplica")
    }
allocator = {role: {k: env.get(k) for k in ALLOCATOR_ENV} for role, env in environ.items()}
out = {"status": answer.status_code, "body": answer.json(), "roles": roles, "allocator": allocator}
print(json.dumps(out))
"""


@pytest.mark.slow
def test_the_haproxy_ingress_layout_serves_predictions_through_haproxy(tmp_path: Path) -> None:
    # Its own process: ServeApp starts a local Ray with the layout's environment (the shared test cluster has
    # Ray's default layout).
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", HAPROXY_APP, str(tmp_path)], capture_output=True, text=True, timeout=400
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["status"] == 200 and out["body"]["label"] in ("ai", "nature"), out
    # HAProxy and the actor that configures it run (Serve keeps an idle fallback ProxyActor beside them)
    assert {"haproxy", "HAProxyManager"} <= set(out["roles"]), out["roles"]
    # the model replicas were started with the allocator's settings (genart.models.allocator), the others not
    from genart.models.allocator import ALLOCATOR_ENV

    allocator = {role.rsplit(":", 1)[-1]: env for role, env in out["allocator"].items()}
    assert allocator["m0"] == allocator["m1"] == ALLOCATOR_ENV, allocator
    assert set(allocator["Preprocessor"].values()) == set(allocator["EnsembleIngress"].values()) == {None}
