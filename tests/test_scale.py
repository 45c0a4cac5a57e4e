"""Scale-out on Ray (``--ray``): a real local Ray cluster (2 CPU slots) with 2 workers on tiny models.

Outputs equal the single-process run's byte for byte; a worker SIGKILLed mid-photo costs only that photo's retry;
a driver killed mid-run is resumed by the same command; a bad photo is named as failed and the others go on.
One Ray cluster serves the whole module (started once, about 3 s).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import ray
from PIL import Image

from anti_i2v.cli import build_parser, main

STEPS = ["--steps", "3", "--quiet", "--demo"]
GOOD = ["p0", "p1", "p2", "p3"]


@pytest.fixture(scope="module")
def cluster():
    """A local Ray cluster in this process; yields its address (a driver subprocess joins it with --ray ADDRESS)."""
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("scale") / "in"
    d.mkdir()
    rng = np.random.default_rng(7)
    for name, (w, h) in zip(GOOD, [(53, 37), (40, 30), (64, 48), (33, 45)]):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(d / f"{name}.png")
    (d / "bad.png").write_bytes(b"this is not a png")
    return d


@pytest.fixture(scope="module")
def reference(folder, tmp_path_factory):
    """The single-process run's outputs (bytes per good photo)."""
    out = tmp_path_factory.mktemp("ref")
    assert main(["protect", str(folder), "--out", str(out), *STEPS]) == 1  # the bad photo fails
    return {n: (out / f"{n}.protected.png").read_bytes() for n in GOOD}


def _manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def _check_outputs(out: Path, reference: dict, folder: Path) -> None:
    """Every good photo's output equals the single-process one; nothing else (no temp file, no duplicate)."""
    for n in GOOD:
        assert (out / f"{n}.protected.png").read_bytes() == reference[n], n
        assert json.loads((out / f"{n}.report.json").read_text())["complete"]
    expected = {f"{n}{s}" for n in GOOD for s in (".protected.png", ".report.json")} | {"manifest.json"}
    assert {p.name for p in out.iterdir()} == expected
    assert sorted(p.name for p in folder.iterdir()) == ["bad.png"] + [f"{n}.png" for n in GOOD]


def test_two_workers_one_killed_mid_photo_equal_the_single_process_run(cluster, folder, reference, tmp_path,
                                                                      capsys):
    """2 workers protect the folder; the worker holding p1 is SIGKILLed mid-photo; a bad photo is in the folder."""
    from anti_i2v.cli import _collect
    from anti_i2v.scale import run_on_ray

    out = tmp_path / "out"
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    args = build_parser().parse_args(["protect", str(folder), "--out", str(out), *STEPS, "--ray", "local",
                                      "--workers", "2", "--test-step-delay", "0.4"])
    killed: list[int] = []

    def on_dispatch(name, worker):
        if name == "p1" and not killed:  # 3 steps x 0.4 s: a kill 0.5 s after dispatch lands mid-photo
            killed.append(worker["pid"])
            threading.Timer(0.5, os.kill, (worker["pid"], signal.SIGKILL)).start()

    assert run_on_ray(args, _collect(args.paths, False), out, on_dispatch=on_dispatch) == 1  # the bad photo
    err = capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # originals untouched
    _check_outputs(out, reference, folder)
    m = _manifest(out)
    assert m["finished"] and m["counts"] == {"done": 4, "skipped": 0, "failed": 1, "pending": 0, "running": 0}
    by = {p["name"]: p for p in m["photos"]}
    assert by["p1"]["status"] == "done" and by["p1"]["attempts"] == 2 and by["p1"]["pid"] != killed[0]
    for n in GOOD:
        rec = by[n]
        assert rec["status"] == "done" and rec["worker"] in ("w0", "w1") and rec["seconds"] > 0
        assert rec["attempts"] == (2 if n == "p1" else 1)
        assert rec["figures"]["linf_255"] <= 8.0 + 1e-6
    assert by["bad"]["status"] == "failed" and "cannot read the image" in by["bad"]["reason"]
    assert [w["id"] for w in m["workers"]] == ["w0", "w1"] and all(w["threads"] == 1 for w in m["workers"])
    assert sum(w["deaths"] for w in m["workers"]) == 1 and sum(w["done"] for w in m["workers"]) == 4
    assert "median s/photo" in err and "protected 4, skipped 0 already done, failed 1" in err
    assert f"error: {folder / 'bad.png'}: " in err


def test_rerun_after_the_driver_was_killed_resumes(cluster, folder, reference, tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "anti_i2v", "protect", str(folder), "--out", str(out), *STEPS,
           "--ray", cluster, "--workers", "1", "--test-step-delay", "0.4"]  # one worker: one model load
    driver = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not list(out.glob("*.report.json")):
            assert driver.poll() is None, driver.stderr.read()
            assert time.monotonic() < deadline, "the driver wrote no output in 240 s"
            time.sleep(0.2)
    finally:
        driver.kill()
        driver.wait()
    done_before = {p.name.split(".")[0]: p.stat().st_mtime_ns for p in out.glob("*.report.json")}
    assert 1 <= len(done_before) < 4
    time.sleep(1.0)  # the killed driver's workers are reaped by Ray
    done_before = {n: t for n, t in done_before.items() if (out / f"{n}.protected.png").exists()}
    assert main(["protect", str(folder), "--out", str(out), *STEPS, "--ray", cluster, "--workers", "2"]) == 1
    _check_outputs(out, reference, folder)
    m = _manifest(out)
    by = {p["name"]: p for p in m["photos"]}
    for n, mtime in done_before.items():  # finished before the kill: skipped, not redone
        assert by[n]["status"] == "skipped" and by[n]["figures"]["psnr_db"] > 0
        assert (out / f"{n}.report.json").stat().st_mtime_ns == mtime
    assert all(by[n]["status"] in ("done", "skipped") for n in GOOD) and by["bad"]["status"] == "failed"
    assert m["counts"]["done"] + m["counts"]["skipped"] == 4


def test_ctrl_c_on_the_driver_stops_the_workers_and_writes_the_manifest(cluster, folder, tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "anti_i2v", "protect", str(folder), "--out", str(out), *STEPS,
           "--ray", cluster, "--workers", "1", "--test-step-delay", "0.4"]
    # SIGINT handled as Ctrl-C even when the test runner itself was started with SIGINT ignored (a background job)
    driver = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 240
        while not list(out.glob("*.report.json")):
            assert driver.poll() is None, driver.stderr.read()
            assert time.monotonic() < deadline, "the driver wrote no output in 240 s"
            time.sleep(0.2)
        driver.send_signal(signal.SIGINT)
        err = driver.communicate(timeout=120)[1]
    finally:
        driver.kill()
    assert driver.returncode == 130, err
    assert "interrupted:" in err and "run the same command again to resume" in err and "Traceback" not in err
    m = _manifest(out)
    assert not m["finished"] and m["counts"]["running"] == 0 and m["counts"]["pending"] >= 1
    assert m["counts"]["done"] >= 1 and m["workers"][0]["pid"]
    assert not list(out.glob(".*.partial"))


def test_usage_errors(cluster, folder, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    assert main(["protect", str(folder), "--out", str(out), *STEPS, "--ray", "local", "--workers", "3"]) == 2
    assert "--workers 3: the cluster has 2 CPU(s)" in capsys.readouterr().err
    assert main(["protect", str(folder), "--out", str(out), *STEPS, "--ray", "local", "--workers", "2",
                 "--cpus-per-worker", "2"]) == 2
    assert "--workers 2 x --cpus-per-worker 2: the cluster has 2 CPU(s)" in capsys.readouterr().err
    assert main(["protect", str(folder), "--out", str(out), *STEPS, "--ray", "local", "--device", "cuda:1"]) == 2
    assert "each worker gets its own GPU" in capsys.readouterr().err
    assert main(["protect", str(folder), "--out", str(out), *STEPS, "--workers", "2"]) == 2
    assert "--workers needs --ray" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "ray", None)  # as if the extra were not installed
    assert main(["protect", str(folder), "--out", str(out), *STEPS, "--ray", "local"]) == 2
    assert "pip install 'comfyui-anti-i2v[ray]'" in capsys.readouterr().err
    assert not list(out.glob("*.png"))
