"""The command line: outputs and reports, no-overwrite, resume, clear errors, loading a model folder."""

import contextlib
import json
import os
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
        # an output without its report (a run killed between the two writes) is unfinished: just that photo is redone
        (out / "b.report.json").unlink()
        (out / "b.protected.png").write_bytes(b"orphan")
        assert _run(photos, "--out", out, "--demo", *FAST) == 0
        err = capsys.readouterr().err
        assert "redoing it" in err and "skipped 1" in err and "protected 1" in err
        assert (out / "a.protected.png").read_bytes() == b"earlier"
        assert Image.open(out / "b.protected.png").size == (40, 30)
        assert json.loads((out / "b.report.json").read_text())["complete"]
        # likewise a report whose image is gone
        (out / "b.protected.png").unlink()
        assert _run(photos, "--out", out, "--demo", *FAST) == 0
        assert (out / "b.protected.png").exists() and "redoing it" in capsys.readouterr().err
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


@contextlib.contextmanager
def _read_only(folder: Path):
    """Make ``folder`` unwritable even for root: an immutable flag (chattr +i), else a read-only bind mount.

    Yields the mechanism's name. Fails (not skips) the test when neither works, since then nothing is tested.
    """
    tried = []
    p = subprocess.run(["chattr", "+i", str(folder)], capture_output=True, text=True)
    if p.returncode == 0:
        try:
            yield "chattr +i"
        finally:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        return
    tried.append(f"chattr +i: {p.stderr.strip() or p.returncode}")
    p = subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True, text=True)
    if p.returncode == 0:
        try:
            p = subprocess.run(["mount", "-o", "remount,ro,bind", str(folder)], capture_output=True, text=True)
            if p.returncode == 0:
                yield "read-only bind mount"
                return
            tried.append(f"remount ro: {p.stderr.strip() or p.returncode}")
        finally:
            subprocess.run(["umount", str(folder)], check=True)
    else:
        tried.append(f"mount --bind: {p.stderr.strip() or p.returncode}")
    pytest.fail("cannot make a folder read-only here, so the unwritable --out test cannot run: " + "; ".join(tried))


class TestOutputFolder:
    @pytest.mark.parametrize("sub", ["", "new/deeper"])
    def test_unwritable_out_exits_2_before_any_work(self, photos, tmp_path, capsys, monkeypatch, sub):
        import anti_i2v.protect

        def no_optimising(*a, **k):
            raise AssertionError("optimised a photo although --out cannot be written")

        monkeypatch.setattr(anti_i2v.protect, "protect", no_optimising)
        locked = tmp_path / "locked"
        locked.mkdir()
        out = locked / sub if sub else locked
        with _read_only(locked):
            probe = locked / "probe"
            with pytest.raises(OSError):
                probe.write_text("x")  # the mechanism really blocks root
            assert _run(photos, "--out", out, "--demo", *FAST) == 2
        err = capsys.readouterr().err
        lines = [ln for ln in err.splitlines() if ln.startswith("anti-i2v: error:")]
        assert len(lines) == 1 and f"--out {out}: cannot write to this folder" in lines[0], err
        assert "Traceback" not in err and "DEMO MODE" not in err  # refused before the models were even built
        assert list(locked.iterdir()) == []

    def test_write_error_names_the_photo_and_the_run_goes_on(self, photos, tmp_path, capsys):
        (photos / "sub").mkdir()
        _png(photos / "sub" / "c.png", (20, 20), seed=3)
        out = tmp_path / "out"
        out.mkdir()
        (out / "sub").write_text("a file where the subfolder must go")
        assert _run(photos, "--out", out, "--demo", "--recursive", *FAST) == 1
        err = capsys.readouterr().err
        assert "Traceback" not in err
        assert f"error: {photos / 'sub' / 'c.png'}: cannot write {out / 'sub' / 'c.protected.png'}" in err
        assert "protected 2," in err and "failed 1" in err
        assert (out / "a.protected.png").exists() and (out / "b.report.json").exists()

    def test_report_write_error_is_named(self, photos, tmp_path, capsys, monkeypatch):
        import anti_i2v.cli as cli

        real = cli._atomic_write

        def flaky(path, write):
            if path.name == "a.report.json":
                raise OSError(28, "No space left on device")
            real(path, write)

        monkeypatch.setattr(cli, "_atomic_write", flaky)
        out = tmp_path / "out"
        assert _run(photos, "--out", out, "--demo", *FAST) == 1
        err = capsys.readouterr().err
        assert f"cannot write {out / 'a.report.json'} (No space left on device)" in err
        assert (out / "b.report.json").exists()
        # the next run redoes the unpaired photo only
        monkeypatch.setattr(cli, "_atomic_write", real)
        assert _run(photos, "--out", out, "--demo", *FAST) == 0
        assert (out / "a.report.json").exists() and "skipped 1" in capsys.readouterr().err

    @pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
    def test_outputs_respect_the_umask(self, photos, tmp_path, mask, mode):
        old = os.umask(mask)
        try:
            assert _run(photos / "a.png", "--out", tmp_path / "out", "--demo", *FAST) == 0
        finally:
            os.umask(old)
        for name in ("a.protected.png", "a.report.json"):
            assert (tmp_path / "out" / name).stat().st_mode & 0o777 == mode, name


class TestInertRun:
    def test_zero_steps_says_the_photo_is_unchanged(self, photos, tmp_path, capsys):
        out = tmp_path / "out"
        assert _run(photos / "a.png", "--out", out, "--demo", "--steps", "0", "--quiet") == 0
        assert "note: 0 steps" in capsys.readouterr().err
        rep = json.loads((out / "a.report.json").read_text())
        assert any("returned unchanged" in n for n in rep["notes"])
        orig = np.asarray(Image.open(photos / "a.png").convert("RGB"))
        assert np.array_equal(np.asarray(Image.open(out / "a.protected.png")), orig)

    def test_zero_weights_are_named(self):
        from anti_i2v.losses import IRALoss, IRCLoss, Objective
        from anti_i2v.protect import ProtectConfig
        from anti_i2v.protect import inert_reason as _inert_reason

        zero = Objective((IRALoss(blocks=(1,), weight=0.0), IRCLoss(pairs=((0, 2),), weight=0.0)))
        assert "every loss weight is 0" in _inert_reason(zero, ProtectConfig(steps=5))
        some = Objective((IRALoss(blocks=(1,), weight=0.0), IRCLoss(pairs=((0, 2),), weight=1.0)))
        assert _inert_reason(some, ProtectConfig(steps=5)) is None
        assert "0 steps" in _inert_reason(some, ProtectConfig(steps=0))


def test_auto_layers_are_resolved_printed_and_reported(photos, tmp_path, capsys):
    """``--ira-blocks auto`` (the default when left out) takes the model's layers; stderr and the report say which."""
    from anti_i2v.surrogates import tiny_surrogate

    out = tmp_path / "out"
    assert _run(photos / "a.png", "--out", out, "--demo", "--surrogate", "wan21", "--ira-blocks", "auto",
                "--vae-layers", "0", "--steps", "0", "--quiet") == 0
    blocks = tiny_surrogate("wan21", seed=0).default_objective().terms[0].blocks
    assert f"note: IRA 'auto' on wan21: blocks {','.join(map(str, blocks))}, VAE-encoder layers 0" in capsys.readouterr().err
    rep = json.loads((out / "a.report.json").read_text())
    ira = rep["settings"]["losses"][0]
    assert ira["blocks"] == list(blocks) and ira["vae_layers"] == [0] and ira["auto"] == ["blocks"]
    assert rep["settings"]["frames_attacked"] >= 1
