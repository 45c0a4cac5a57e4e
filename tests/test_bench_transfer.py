"""bench/transfer.py: the protect-on-one, verify-on-every-other matrix with the ensemble's row, on two tiny families."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
FIGS = {"psnr_db", "ssim", "latent_mse", "latent_relative", "over_noise", "white_box"}


def _bench():
    path = ROOT / "bench" / "transfer.py"
    spec = importlib.util.spec_from_file_location("bench_transfer", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.timeout(300)
def test_matrix_rows_columns_and_files(tmp_path, capsys):
    b = _bench()
    out = tmp_path / "t"
    threads = torch.get_num_threads()
    try:  # one thread: the tiny models' operations are too small to share (bench/quality.py measured the same)
        report = b.main(["--families", "cogvideox,svd", "--size", "32", "--steps", "1", "--gen-steps", "1",
                         "--ensemble-weights", "1,0.5", "--held-out", "--threads", "1", "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    printed = capsys.readouterr().out
    assert json.loads((out / "transfer.json").read_text()) == json.loads(json.dumps(report))
    assert "NOT real image-to-video models" in report["note"]
    # two families: one ensemble row (no held-out ensembles below three families), two noise controls
    assert report["columns"] == ["cogvideox", "svd"]
    assert report["rows"] == ["cogvideox", "svd", "ensemble", "ensemble-balanced", "uniform_noise", "sign_noise"]
    for row in report["rows"]:
        for col in report["columns"]:
            cell = report["matrix"][row][col]
            assert set(cell) == FIGS, (row, col)
            assert cell["white_box"] is (row == col)
            assert cell["latent_relative"] >= 0 and -1 <= cell["ssim"] <= 1
            assert cell["psnr_db"] == "inf" or cell["psnr_db"] > 0
        # the control is its own unit: exactly 1 against itself in every column
        assert report["matrix"]["uniform_noise"][col]["over_noise"] == pytest.approx(1.0, abs=1e-9)
    ens = report["protection"]["ensemble"]
    assert ens["members"] == ["cogvideox", "svd"] and ens["weights"] == [1.0, 0.5]
    assert set(ens["working_size"]) == {"cogvideox", "svd"} and set(ens["objective"]) == {"cogvideox", "svd"}
    for row in ("cogvideox", "svd", "ensemble"):
        p = report["protection"][row]
        assert p["linf_255"] <= 16 + 1e-3 and math.isfinite(p["loss"]["first"])
    md = (out / "transfer.md").read_text()
    assert md.count("| protected against | cogvideox | svd |") == 3 and "| ensemble |" in md
    assert "NOT real image-to-video models" in md and "**" in md  # white-box cells in bold
    lines = printed.splitlines()
    assert any(line.startswith("ensemble") for line in lines) and "*" in printed


def test_tables_from_a_report():
    b = _bench()

    def cell(v, wb):
        return {"latent_relative": v, "over_noise": v / 0.5, "psnr_db": 30.0, "ssim": 0.9, "latent_mse": v,
                "white_box": wb}

    report = {"columns": ["a", "b"], "rows": ["a", "b", "ensemble", "uniform_noise"], "note": "tiny",
              "seconds": 1.0, "machine": {"device": "cpu", "torch": "x", "threads": 1},
              "matrix": {r: {c: cell(0.25 if r == c else 0.125, r == c) for c in ("a", "b")}
                         for r in ("a", "b", "ensemble", "uniform_noise")}}
    md = b.markdown(report)
    assert "| a | **0.25** | 0.125 |" in md and "| ensemble | 0.125 | 0.125 |" in md and "| a | **0.5** | 0.25 |" in md
    text = b.text_matrix(report)
    assert "0.25*" in text and text.splitlines()[2].split()[0] == "a"


def test_bad_arguments_exit(tmp_path):
    b = _bench()
    for argv in (["--families", "nope"], ["--families", "svd,svd"], ["--steps", "0"], ["--size", "8"],
                 ["--families", "cogvideox,svd", "--ensemble-weights", "1"], ["--eps", "0"]):
        with pytest.raises(SystemExit):
            b.main(argv + ["--out", str(tmp_path)])
