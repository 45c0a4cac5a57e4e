"""bench/compare.py (every defense in one table) and the figures it measures: BRISQUE, identity, cost."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    path = ROOT / "bench" / "compare.py"
    spec = importlib.util.spec_from_file_location("bench_compare", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _astronaut() -> np.ndarray:
    from skimage import data

    return data.astronaut()


# ------------------------------------------------------------------------------------------------ BRISQUE


def test_brisque_matches_opencv_and_rises_with_noise_and_blur():
    import cv2

    from anti_i2v.brisque import brisque, brisque_features

    a = _astronaut()
    clean = brisque(a)
    # reference scores of OpenCV's own cv2.quality.QualityBRISQUE_compute (opencv-contrib-python-headless
    # 4.14.0.94, same model files) on these exact images: our features reproduce it to about 0.01
    assert clean == pytest.approx(0.4944, abs=0.05)
    blurred = [brisque(cv2.GaussianBlur(a, (0, 0), r)) for r in (1, 2, 4)]
    assert blurred == pytest.approx([35.415, 57.654, 71.548], abs=0.05)
    x = torch.from_numpy(a).permute(2, 0, 1).float() / 255.0
    g = torch.Generator().manual_seed(0)
    noisy = [brisque((x + s * torch.randn(x.shape, generator=g)).clamp(0, 1)) for s in (0.02, 0.05, 0.1)]
    scores = [clean] + noisy
    assert scores == sorted(scores) and noisy[0] > clean + 5, scores  # more noise, worse (higher) score
    assert blurred == sorted(blurred) and blurred[0] > clean + 20
    f = brisque_features(a)
    assert f.shape == (36,) and f.dtype == np.float32 and np.isfinite(f).all()
    # a tensor and the same 8-bit numpy image give the same score
    assert brisque(x) == pytest.approx(clean, abs=1e-6)


def test_brisque_flat_image_small_image_and_missing_model(tmp_path, monkeypatch):
    from anti_i2v.brisque import BrisqueModelError, brisque, brisque_video, find_brisque_dir

    assert math.isnan(brisque(torch.full((3, 32, 32), 0.5)))
    assert brisque_video(torch.full((2, 3, 32, 32), 0.5)) == {"per_frame": [None, None], "mean": None}
    with pytest.raises(ValueError, match="at least 16x16"):
        brisque(torch.rand(3, 8, 40))
    with pytest.raises(BrisqueModelError, match="opencv-data"):
        find_brisque_dir(tmp_path)
    monkeypatch.setenv("ANTI_I2V_BRISQUE_DIR", str(tmp_path))
    assert find_brisque_dir() != tmp_path  # an empty folder is passed over for the system one


# ----------------------------------------------------------------------------------------- identity, cost


def test_video_identity_of_real_faces_and_of_noise():
    from anti_i2v.video_metrics import jpeg_roundtrip, video_identity

    photo = torch.from_numpy(_astronaut()).permute(2, 0, 1).float().div(255.0).unsqueeze(0)
    photo = torch.nn.functional.interpolate(photo, size=(256, 256), mode="bilinear", antialias=True)
    frames = torch.cat([photo, jpeg_roundtrip(photo, 75)])
    same = video_identity(frames, photo)
    assert same["face_rate"] == 1.0
    assert 0.9 <= same["identity"] <= 1.0  # the same face (JPEG q75 measured 0.985 in the field notes)
    noise = video_identity(torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)), photo)
    assert noise == {"identity": None, "face_rate": 0.0}


def test_cost_meter_reports_median_step_and_peak_memory():
    from anti_i2v.video_metrics import CostMeter

    ticks = iter([0.0, 5.0, 5.5, 6.5, 7.0])  # a clock: start, then four iterations (the first one slow: setup)
    with CostMeter("cpu", interval_s=0.001, clock=lambda: next(ticks)) as meter:
        for _ in range(4):
            meter.callback()
        big = torch.ones(64 * 2**20 // 4)  # 64 MiB, written, so resident
    f = meter.figures()
    del big
    assert f["iterations"] == 4 and f["memory_kind"].startswith("cpu")
    assert f["s_per_iter"] == pytest.approx(0.5, abs=1e-12)  # median of 0.5, 1.0, 0.5: the 5 s setup left out
    assert f["peak_mem_mb"] >= 48, f


# ------------------------------------------------------------------------------------------------ bench

ROW_FIGS = {
    "photo": {"psnr_db", "ssim", "ciede2000", "linf_255"},
    "video": {"psnr_db", "ssim", "latent_mse", "latent_relative", "brisque", "identity", "face_rate"},
    "video_jpeg": {"psnr_db", "ssim", "latent_mse", "latent_relative", "brisque", "identity", "face_rate"},
    "cost": {"s_per_iter", "peak_mem_mb", "iterations"},
}


@pytest.mark.timeout(600)
def test_tiny_run_has_every_method_in_its_space_and_in_dsp(tmp_path, capsys):
    from anti_i2v.methods import METHOD_NAMES, get_method

    b = _bench()
    out = tmp_path / "cmp"
    eps = 6.0
    report = b.main(["--families", "cogvideox", "--steps", "2", "--eps", str(eps), "--size", "32",
                     "--gen-steps", "1", "--frames", "1", "--strict", "--out", str(out)])
    printed = capsys.readouterr().out
    assert json.loads((out / "compare.json").read_text()) == json.loads(json.dumps(report))
    md = (out / "compare.md").read_text()
    assert md in printed
    assert "NOT real image-to-video models" in report["note"]
    assert {"Q-Align (video quality)", "ISM (identity similarity)", "DINO (subject consistency)"} == set(
        report["stand_ins"])

    (fam,) = report["families"]
    rows = report["families"][fam]["rows"]
    expected = [("none", None)] + [(n, s) for n, s, _ in b.rows_of(list(METHOD_NAMES), ["own", "dsp"])]
    assert [(r["method"], r["space"]) for r in rows] == expected
    for name in METHOD_NAMES:  # every method in its paper space and in DSP, the own space first
        spaces = [r["space"] for r in rows if r["method"] == name]
        own = get_method(name).space
        assert spaces == ([own] if own == "dsp" else [own, "dsp"]), (name, spaces)
    for row in rows:
        assert row["error"] is None
        for section, figs in ROW_FIGS.items():
            assert set(row[section]) == figs, (row["method"], section)
        for section in ("video", "video_jpeg"):
            v = row[section]
            ident = v["identity"]
            assert ident is None or -1.0 <= ident <= 1.0
            assert v["face_rate"] is None or 0.0 <= v["face_rate"] <= 1.0
            assert v["brisque"] is None or 0.0 <= v["brisque"] <= 100.0
            assert v["latent_relative"] >= 0 and v["latent_mse"] >= 0
    none = rows[0]
    # the clean photo regenerates the reference exactly: zero drift (the generation is deterministic)
    for section in ("video", "video_jpeg"):
        assert none[section]["psnr_db"] == "inf" and none[section]["ssim"] == pytest.approx(1.0, abs=1e-6)
        assert none[section]["latent_mse"] == 0 and none[section]["latent_relative"] == 0
    assert none["photo"]["psnr_db"] == "inf" and none["photo"]["ciede2000"] == 0
    for row in rows[1:]:
        assert row["settings"]["steps"] == 2 and row["settings"]["eps"] == eps
        assert row["photo"]["linf_255"] <= eps + 1e-3, row["method"]
        psnr = row["photo"]["psnr_db"]
        assert psnr == "inf" or psnr >= 20 * math.log10(255 / eps) - 1e-3  # L-inf bounds the MSE
        for section in ("video", "video_jpeg"):
            p = row[section]["psnr_db"]
            assert p == "inf" or (isinstance(p, float) and math.isfinite(p) and p > 0)
            assert -1.0 <= row[section]["ssim"] <= 1.0
        c = row["cost"]
        assert c["iterations"] == 2 and c["s_per_iter"] > 0 and c["peak_mem_mb"] >= 0
        assert row["loss"] is not None
    # the Markdown table: one header per family, one line per row
    assert f"**{fam}**" in md and md.count("| none |") == 1
    for name, space in expected[1:]:
        assert any(line.startswith(f"| {name} | {space}") for line in md.splitlines()), (name, space)
    assert report["plot"] == "compare.png"  # matplotlib is a test dependency
    assert (out / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_failing_method_is_recorded_and_the_run_goes_on(tmp_path, monkeypatch):
    import anti_i2v.methods as methods

    def broken(*args, **kwargs):  # a stub standing in for a method that raises
        raise RuntimeError("boom")

    b = _bench()
    monkeypatch.setattr(methods, "run_method", broken)
    name = methods.METHOD_NAMES[0]
    argv = ["--families", "wan21", "--methods", name, "--spaces", "own", "--size", "32", "--gen-steps", "1",
            "--frames", "1", "--no-plot", "--no-faces"]
    report = b.main(argv + ["--out", str(tmp_path)])
    none, row = report["families"]["wan21"]["rows"]
    assert none["error"] is None and none["video"]["latent_relative"] == 0
    assert row["method"] == name and row["error"] == "RuntimeError: boom"
    assert row["video"]["psnr_db"] is None and row["cost"]["s_per_iter"] is None
    assert f"| {name} |" in (tmp_path / "compare.md").read_text() and "| error |" in (tmp_path / "compare.md").read_text()
    with pytest.raises(RuntimeError, match="boom"):
        b.main(argv + ["--strict", "--out", str(tmp_path)])


def test_bad_arguments_exit(tmp_path):
    b = _bench()
    for argv in (["--families", "nope"], ["--methods", "glaze"], ["--spaces", "hsv"], ["--steps", "0"],
                 ["--steps", "many"], ["--eps", "0"], ["--eps", "x"], ["--size", "8"], ["--jpeg-quality", "0"]):
        with pytest.raises(SystemExit):
            b.main(argv + ["--out", str(tmp_path)])
