"""`minigpt_med.ray.Predictor` on Ray Data: two actors answer a folder as direct `generate` calls
do, a corrupt file gets an error row and every other row is answered; `ray_archive.py` writes
Parquet. Ray is required under CI (scripts/test-python.sh installs it); elsewhere the test is
skipped when it is not installed."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys

import pytest

import minigpt_med as mm

if os.environ.get("CI") != "true":
    pytest.importorskip("ray")
import ray  # noqa: E402  (under CI a missing Ray is a failure, not a skip)

ROOT = pathlib.Path(__file__).resolve().parents[2]
TINY = ROOT / "tests" / "fixtures" / "tiny"


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    d = tmp_path_factory.mktemp("archive")
    for name in ["ct_nlst.png", "cxr_rsna.jpg", "synthetic_gradient.png"]:
        shutil.copy(TINY / "images" / name, d / name)
    (d / "sub").mkdir()
    shutil.copy(TINY / "images" / "ct_nlst.png", d / "sub" / "again.png")
    (d / "broken.png").write_bytes(b"\x89PNG not really")
    return d


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


def test_two_actors_answer_a_folder_as_generate(archive, local_ray):
    from minigpt_med.ray import Predictor

    ds = ray.data.read_binary_files(str(archive), include_paths=True)
    ds = ds.map_batches(
        Predictor,
        fn_constructor_kwargs={"model_dir": str(TINY), "task": "refer", "prompt": "the left lung", "max_new_tokens": 8},
        concurrency=2,
        # Half a CPU each: two actors holding both CPUs would leave none for the file reads.
        num_cpus=0.5,
        batch_size=2,
    )
    rows = {pathlib.Path(r["path"]).name: r for r in ds.take_all()}
    assert sorted(rows) == ["again.png", "broken.png", "ct_nlst.png", "cxr_rsna.jpg", "synthetic_gradient.png"]
    assert "bytes" not in rows["ct_nlst.png"]
    model = mm.Model.load_dir(TINY, progress=False)
    for name in ["ct_nlst.png", "cxr_rsna.jpg", "synthetic_gradient.png", "again.png"]:
        path = archive / ("sub" if name == "again.png" else "") / name
        want = model.generate(path, task="refer", prompt="the left lung", max_new_tokens=8)
        r = rows[name]
        assert r["error"] is None, r["error"]
        assert list(r["token_ids"]) == want.token_ids, name
        assert r["text"] == want.text
    broken = rows["broken.png"]
    assert "ImageError" in broken["error"] and broken["text"] is None and list(broken["token_ids"]) == []


def test_per_row_tasks(local_ray):
    from minigpt_med.ray import Predictor

    ct = str(TINY / "images" / "ct_nlst.png")
    ds = ray.data.from_items([
        {"path": ct, "task": "vqa", "prompt": "Is it normal?"},
        {"path": ct, "instruction": "[detection] tumor"},
        {"path": ct, "task": "vqa"},
    ])
    rows = ds.map_batches(Predictor, fn_constructor_kwargs={"model_dir": str(TINY), "max_new_tokens": 6},
                          concurrency=1, num_cpus=0.5, batch_size=3).take_all()
    model = mm.Model.load_dir(TINY, progress=False)
    assert list(rows[0]["token_ids"]) == model.generate(ct, task="vqa", prompt="Is it normal?", max_new_tokens=6).token_ids
    assert list(rows[1]["token_ids"]) == model.generate(ct, task="detection", prompt="tumor", max_new_tokens=6).token_ids
    assert "needs a question" in rows[2]["error"]


def test_the_archive_example_writes_parquet(archive, tmp_path, local_ray):
    import pyarrow.parquet as pq

    out = tmp_path / "results"
    ray.shutdown()  # the example starts its own
    subprocess.run([sys.executable, str(ROOT / "examples" / "python" / "ray_archive.py"), str(archive),
                    "--model-dir", str(TINY), "--task", "report", "--out", str(out), "--max-new-tokens", "5",
                    "--cpus-per-actor", "0.5", "--actors", "2"], check=True, timeout=600)
    table = pq.read_table(out).to_pylist()
    assert len(table) == 5
    model = mm.Model.load_dir(TINY, progress=False)
    ct = next(r for r in table if r["path"].endswith("/ct_nlst.png"))
    assert ct["token_ids"] == model.generate(archive / "ct_nlst.png", max_new_tokens=5).token_ids
    assert sum(r["error"] is not None for r in table) == 1
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
