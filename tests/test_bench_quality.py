"""bench/quality.py: the quality / efficacy trade-off benchmark, in its tiny mode, and its pure helpers."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    path = ROOT / "bench" / "quality.py"
    spec = importlib.util.spec_from_file_location("bench_quality", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


IMAGE_FIGS = {"psnr_db", "ssim", "ciede2000_mean", "ciede2000_p95", "mean_abs_dL", "share_at_budget", "linf_255"}
DRIFT_FIGS = {"psnr_db", "ssim", "latent_mse", "latent_relative"}


def _grey(h=24, w=32, level=0.5):
    return torch.full((1, 3, h, w), level)


def test_image_figures_of_no_change_and_of_sign_noise():
    b = _bench()
    x = b.eff.quantize(_grey() + 0.2 * torch.rand(1, 3, 24, 32, generator=torch.Generator().manual_seed(0)))
    same = b.image_figures(x, x, 8)
    assert same["psnr_db"] == math.inf and same["ssim"] == pytest.approx(1.0, abs=1e-5)
    assert same["ciede2000_mean"] == 0 and same["mean_abs_dL"] == 0 and same["share_at_budget"] == 0
    noisy = b.eff.quantize(b.eff.sign_noise(x, 8, 1))  # no clipping: every channel moves by exactly 8/255
    f = b.image_figures(noisy, x, 8)
    assert f["share_at_budget"] == 1.0 and f["linf_255"] == pytest.approx(8, abs=1e-6)
    assert f["psnr_db"] == pytest.approx(20 * math.log10(255 / 8), abs=1e-3)
    assert 0 < f["ciede2000_mean"] <= f["ciede2000_p95"] and f["mean_abs_dL"] > 0
    # a change of eps - 1 is not "at the budget"; eps - 0.5 rounds onto the grid at eps or eps - 1
    assert b.image_figures(x + 7 / 255, x, 8)["share_at_budget"] == 0.0


def test_blur_is_deterministic_and_smooths():
    b = _bench()
    x = b.eff.quantize(torch.rand(1, 3, 20, 30, generator=torch.Generator().manual_seed(1)))
    y = b.blur(x, 1.0)
    assert y.shape == x.shape and torch.equal(y, b.blur(x, 1.0))
    assert float(y.std()) < float(x.std())


def test_goal_check_interpolates_rgb_at_equal_ciede2000():
    b = _bench()
    good = {"psnr_db": 40.0, "ssim": 0.97, "ciede2000_mean": 3.0, "mean_abs_dL": 0.1}
    curve = [(4.0, 0.4), (2.0, 0.2)]  # any order
    g = b.goal_check(good, 0.31, curve)
    assert g["disruption_vs_rgb"]["rgb_at_equal_ciede2000"] == pytest.approx(0.3, abs=1e-6)
    assert g["disruption_vs_rgb"]["pass"] is True and g["ciede2000_mean"]["pass"] is False and g["pass"] is False
    g = b.goal_check(dict(good, ciede2000_mean=1.0), 0.09, curve)  # below the curve: anchored at the origin
    assert g["disruption_vs_rgb"]["rgb_at_equal_ciede2000"] == pytest.approx(0.1, abs=1e-6)
    assert g["disruption_vs_rgb"]["pass"] is False and g["psnr_db"]["pass"] is True
    g = b.goal_check(dict(good, ciede2000_mean=2.0), 0.25, curve)
    assert g["pass"] is True
    g = b.goal_check(dict(good, ciede2000_mean=9.0), 0.41, curve)  # beyond the curve: its last point
    assert g["disruption_vs_rgb"]["rgb_at_equal_ciede2000"] == pytest.approx(0.4, abs=1e-6) and g["disruption_vs_rgb"]["pass"]
    g = b.goal_check(dict(good, ciede2000_mean=2.0), 0.25, None)  # rgb not run: not checked, not failed
    assert g["disruption_vs_rgb"]["pass"] is None and g["pass"] is True


def test_default_method_follows_the_preset():
    b = _bench()
    from anti_i2v.protect import PRESETS

    cfg, loop, preset, ignored = b.default_method(None, 3)
    assert preset == PRESETS["default"]
    assert cfg.eps == preset["eps"] and loop.steps == preset["steps"] and loop.step_size == preset["step_size"]
    assert loop.seed == 3
    for key, value in preset.items():  # every key reaches the dataclass that has it, or is reported as ignored
        if key not in ignored:
            assert getattr(cfg, key, getattr(loop, key, None)) == value, key
    assert b.default_method(5, 0)[1].steps == 5


@pytest.mark.timeout(300)
def test_quick_run_has_every_figure_for_every_method(tmp_path, capsys):
    b = _bench()
    out = tmp_path / "q"
    report = b.main(["--quick", "--size", "48", "--out", str(out)])
    printed = capsys.readouterr().out
    on_disk = json.loads((out / "quality.json").read_text())
    assert on_disk == json.loads(json.dumps(report))
    assert "NOT real image-to-video models" in report["note"] and "latent_relative after JPEG" in report["disruption"]

    spaces = list(b.offered_spaces())
    s = report["settings"]
    assert s["spaces"] == spaces and s["photos"] == ["astronaut"] and len(s["families"]) == 1
    budgets = [f"{e:g}" for e in s["budgets"]]
    default_eps = f"{report['default']['perturbation']['eps']:g}"
    methods = set(b.methods_of(spaces)) | {"uniform_noise", "sign_noise", "default"}
    (fam,) = s["families"]
    res = report["results"]["astronaut"][fam]
    assert set(res) == methods
    for m, per_budget in res.items():
        assert list(per_budget) == ([default_eps] if m == "default" else budgets), m
        for e, entry in per_budget.items():
            eps = float(e)
            img = entry["image"]
            assert set(img) == IMAGE_FIGS, m
            assert set(entry["efficacy"]) == {"none", "jpeg", "blur"}
            for cond, drift in entry["efficacy"].items():
                assert set(drift) >= DRIFT_FIGS, (m, cond)
                assert drift["latent_relative"] >= 0 and drift["latent_mse"] >= 0
            assert img["linf_255"] <= eps + 1e-3, (m, e)
            assert 0 <= img["share_at_budget"] <= 1 and 0 <= img["mean_abs_dL"] and 0 <= img["ciede2000_mean"]
            assert -1 <= img["ssim"] <= 1
            psnr = img["psnr_db"]
            assert psnr == "inf" or psnr >= 20 * math.log10(255 / eps) - 1e-3, (m, e)  # L-inf bounds the MSE
            if m == "sign_noise":
                # every channel at +-eps except where clipping at 0 / 1 stops all three of a pixel's channels
                # (about 1/8 of the astronaut's few black pixels): share within 5 % of 1
                assert img["share_at_budget"] >= 0.95, img
                assert psnr <= 20 * math.log10(255 / eps) + 1.5
            if m == "uniform_noise":
                p = 1 - (1 - 0.5 / eps) ** 3  # a channel rounds onto +-eps with probability 0.5 / eps
                assert abs(img["share_at_budget"] - p) < 0.06, (img, p)
            if m != "default" and m not in ("uniform_noise", "sign_noise"):
                assert entry["loss"] is not None and entry["protect_seconds"] >= 0
    # more budget, more change, for the controls
    for m in ("uniform_noise", "sign_noise"):
        ps = [res[m][e]["image"]["psnr_db"] for e in budgets]
        assert ps == sorted(ps, reverse=True)
    for cond in ("jpeg", "blur"):
        assert set(report["transform_alone"]["astronaut"][fam][cond]) >= DRIFT_FIGS

    goal = report["summary"]["goal"]["astronaut"][fam]
    for k in ("psnr_db", "ssim", "ciede2000_mean", "mean_abs_dL", "disruption_vs_rgb"):
        assert k in goal
    assert isinstance(goal["pass"], bool)
    if "rgb" in spaces:
        assert isinstance(goal["disruption_vs_rgb"]["pass"], bool)
        assert goal["disruption_vs_rgb"]["rgb_at_equal_ciede2000"] >= 0
    assert f"astronaut/{fam}" in printed and ("PASS" in printed or "FAIL" in printed)
    for m in methods:
        assert m in printed
    if report["plot"]:
        assert (out / "quality.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_arguments_exit(tmp_path):
    b = _bench()
    for argv in (["--photos", "lena"], ["--families", "nope"], ["--spaces", "xyz"], ["--budgets", "0"],
                 ["--budgets", "a,b"], ["--default-steps", "many"]):
        with pytest.raises(SystemExit):
            b.main(argv + ["--quick", "--out", str(tmp_path)])


@pytest.mark.timeout(300)
def test_parallel_tasks_give_the_same_figures(tmp_path):
    b = _bench()
    argv = ["--quick", "--photos", "astronaut,camera", "--size", "32", "--spaces", "rgb", "--budgets", "8",
            "--steps", "1", "--no-plot"]
    par = b.main(argv + ["--jobs", "2", "--out", str(tmp_path / "par")])
    seq = b.main(argv + ["--jobs", "1", "--out", str(tmp_path / "seq")])

    def strip(d):
        return {k: strip(v) for k, v in d.items() if k != "protect_seconds"} if isinstance(d, dict) else d

    assert strip(par["results"]) == strip(seq["results"]) and par["summary"] == seq["summary"]
    assert set(par["results"]) == {"astronaut", "camera"}
