"""The command line: outputs and reports, no-overwrite, resume, clear errors, loading a model folder."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anti_i2v.cli import main

FAST = ["--steps", "2", "--quiet"]


def _png(path: Path, size=(53, 37), mode="RGB", seed=0):
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, size=(size[1], size[0], len(mode)), dtype=np.uint8)
    Image.fromarray(arr if len(mode) > 1 else arr[..., 0], mode).save(path)
    return path


@pytest.fixture
def photos(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    _png(d / "a.png", (53, 37), seed=1)
    _png(d / "b.png", (40, 30), mode="RGBA", seed=2)
    (d / "notes.txt").write_text("not an image")
    return d


def _run(*argv):
    return main(["protect", *map(str, argv)])


class TestCLI:
    def test_folder_outputs_reports_and_budget(self, photos, tmp_path, capsys):
        out = tmp_path / "out"
        before = {p.name: p.read_bytes() for p in photos.iterdir()}
        assert _run(photos, "--out", out, "--demo", "--surrogate", "cogvideox", "--eps", "8", *FAST) == 0
        assert "DEMO MODE" in capsys.readouterr().err
        assert {p.name: p.read_bytes() for p in photos.iterdir()} == before  # originals untouched
        for name, size in (("a", (53, 37)), ("b", (40, 30))):
            img = Image.open(out / f"{name}.protected.png")
            assert img.size == size and img.mode == "RGB"
            rep = json.loads((out / f"{name}.report.json").read_text())
            assert rep["complete"] and rep["demo"] and rep["steps_done"] == 2
            assert rep["saved_png"]["linf_255"][0] <= 8.0 + 1e-6
            orig = np.asarray(Image.open(photos / f"{name}.png").convert("RGB"), dtype=np.int16)
            diff = np.abs(np.asarray(img, dtype=np.int16) - orig).max()
            assert diff <= 8
        assert "alpha channel dropped" in " ".join(json.loads((out / "b.report.json").read_text())["notes"])

    def test_no_overwrite_and_resume(self, photos, tmp_path, capsys):
        out = tmp_path / "out"
        out.mkdir()
        # a finished photo from an earlier (interrupted) run is kept as is and skipped
        (out / "a.protected.png").write_bytes(b"earlier")
        (out / "a.report.json").write_text("{}")
        assert _run(photos, "--out", out, "--demo", *FAST) == 0
        assert (out / "a.protected.png").read_bytes() == b"earlier"
        assert (out / "b.protected.png").exists()
        assert "skipped 1" in capsys.readouterr().err
        # an output without its report is never overwritten silently
        (out / "b.report.json").unlink()
        assert _run(photos, "--out", out, "--demo", *FAST) == 1
        assert "--overwrite" in capsys.readouterr().err
        assert _run(photos, "--out", out, "--demo", "--overwrite", *FAST) == 0
        assert (out / "a.protected.png").read_bytes() != b"earlier"
        assert not list(out.glob("*.partial"))

    def test_same_seed_same_result(self, photos, tmp_path):
        a, b = tmp_path / "o1", tmp_path / "o2"
        for o in (a, b):
            assert _run(photos / "a.png", "--out", o, "--demo", "--seed", "3", *FAST) == 0
        assert (a / "a.protected.png").read_bytes() == (b / "a.protected.png").read_bytes()

    @pytest.mark.parametrize(
        "argv, message",
        [
            (["missing.png", "--demo"], "no such file"),
            (["{tmp}/in/notes.txt", "--demo"], "not an image"),
            (["{tmp}/in", "--model", "{tmp}/nope"], "does not exist"),
            (["{tmp}/in"], "--model DIR"),
            (["{tmp}/in", "--demo", "--ira-blocks", "99"], "valid indices are 0-"),
            (["{tmp}/in", "--demo", "--ira-blocks", "x"], "--ira-blocks"),
            (["{tmp}/in", "--demo", "--eps", "0"], "eps"),
        ],
    )
    def test_bad_input_exits_2_with_message(self, photos, tmp_path, capsys, argv, message):
        argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
        assert _run(*argv, "--out", tmp_path / "out", *FAST) == 2
        assert message in capsys.readouterr().err

    def test_broken_image_fails_that_photo_only(self, photos, tmp_path, capsys):
        (photos / "c.png").write_bytes(b"not a png")
        assert _run(photos, "--out", tmp_path / "out", "--demo", *FAST) == 1
        assert "c.png: cannot read the image" in capsys.readouterr().err
        assert (tmp_path / "out" / "a.protected.png").exists()
        assert not (tmp_path / "out" / "c.protected.png").exists()

    def test_model_folder(self, photos, tmp_path):
        from anti_i2v.surrogates import save_tiny

        folder = save_tiny("svd", tmp_path / "svd-tiny")
        out = tmp_path / "out"
        assert _run(photos / "a.png", "--out", out, "--model", folder, *FAST) == 0  # --surrogate auto
        rep = json.loads((out / "a.report.json").read_text())
        assert rep["settings"]["surrogate"]["family"] == "svd" and not rep["demo"]

    def test_entry_point_runs(self, photos, tmp_path):
        p = subprocess.run([sys.executable, "-m", "anti_i2v", "protect", "--help"], capture_output=True, text=True)
        assert p.returncode == 0 and "--overwrite" in p.stdout
