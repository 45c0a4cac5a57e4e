"""verify(): videos from the clean and the protected photo, and the metrics between them.

A toy video "model" checks the wiring (seeds, frames, identity on a real portrait); the tiny random-weight
surrogates of the real diffusers classes check the real ``generate`` of each family.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter

from anti_i2v.verify import compare_videos, generate_video, verify
from tests.toy_surrogate import ToySurrogate

METRIC_KEYS = {"settings", "photo", "psnr", "ssim", "latent_distance", "identity"}


class ToyVideoSurrogate(ToySurrogate):
    """Toy "I2V model": frame f is the photo at the working size, dimmed by f and plus seeded noise."""

    def __init__(self, noise: float = 0.02, **kw) -> None:
        super().__init__(**kw)
        self.noise = noise
        self.calls_generate: list[dict] = []

    def generate(self, image, *, num_inference_steps, seed, num_frames=None):
        self.calls_generate.append({"steps": num_inference_steps, "seed": seed, "num_frames": num_frames})
        n = num_frames or 3
        x = F.interpolate(image, size=self.default_size, mode="bilinear", align_corners=False, antialias=True)[0]
        g = torch.Generator().manual_seed(seed)
        frames = [x * (1 - 0.1 * f) + self.noise * torch.randn(x.shape, generator=g) for f in range(n)]
        return torch.stack(frames).clamp(0, 1).unsqueeze(0)  # (1, F, 3, h, w): verify drops the batch of one


def _photo(seed: int = 0, h: int = 30, w: int = 40) -> torch.Tensor:
    return torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(seed))


class TestVerifyToy:
    def test_keys_shapes_and_strict_json(self):
        s = ToyVideoSurrogate()
        clean = _photo()
        prot = (clean + 8 / 255 * torch.sign(torch.randn(clean.shape))).clamp(0, 1)
        out = verify(s, clean, prot, steps=3, seed=5, num_frames=4)
        assert out["clean_video"].shape == out["protected_video"].shape == (4, 3, 24, 32)
        for v in (out["clean_video"], out["protected_video"]):
            assert v.dtype == torch.float32 and 0 <= float(v.min()) and float(v.max()) <= 1
        m = out["metrics"]
        assert set(m) == METRIC_KEYS
        json.dumps(m, allow_nan=False)
        assert len(m["psnr"]["per_frame"]) == len(m["ssim"]["per_frame"]) == 4
        assert len(m["latent_distance"]["per_frame"]) == 4 and m["latent_distance"]["mean"] > 0
        assert 10 < m["psnr"]["mean"] < 60 and 0 < m["ssim"]["mean"] < 1
        assert m["photo"]["linf_255"] == pytest.approx(8.0, abs=0.01)
        assert m["settings"] == {"family": "toy", "steps": 3, "seed": 5, "num_frames": 4, "video_size": [24, 32]}
        # both videos with the same seed, steps and frames
        assert s.calls_generate == [{"steps": 3, "seed": 5, "num_frames": 4}] * 2

    def test_identical_inputs_give_identical_videos(self):
        s = ToyVideoSurrogate()
        clean = _photo(1)
        out = verify(s, clean, clean.clone(), faces=False)
        assert torch.equal(out["clean_video"], out["protected_video"])
        m = out["metrics"]
        assert m["psnr"]["per_frame"] == ["inf"] * 3 and m["psnr"]["mean"] == "inf"
        assert m["ssim"]["mean"] == pytest.approx(1.0, abs=1e-5)
        assert m["latent_distance"]["mean"] == 0.0 and m["latent_distance"]["relative"] == 0.0
        assert m["identity"] is None

    def test_num_frames_none_keeps_the_default(self):
        s = ToyVideoSurrogate()
        out = verify(s, _photo(), _photo(2), latent=False, faces=False)
        assert s.calls_generate[0]["num_frames"] is None and out["clean_video"].shape[0] == 3
        assert out["metrics"]["latent_distance"] is None

    def test_identity_on_a_real_portrait(self):
        skdata = pytest.importorskip("skimage.data")
        rgb = np.array(Image.fromarray(skdata.astronaut()).resize((256, 256), Image.BICUBIC))
        blurred = np.array(Image.fromarray(rgb).filter(ImageFilter.GaussianBlur(3)))
        clean = torch.from_numpy(rgb).permute(2, 0, 1).float().div(255).unsqueeze(0)
        prot = torch.from_numpy(blurred).permute(2, 0, 1).float().div(255).unsqueeze(0)
        s = ToyVideoSurrogate(noise=0.0)
        s.default_size = (192, 192)  # faces need some pixels
        out = verify(s, clean, prot, num_frames=2, latent=False)
        ident = out["metrics"]["identity"]
        assert ident["clean"]["source_detected"] and ident["clean"]["detection_rate"] == 1.0
        assert ident["clean"]["mean"] > 0.8
        pd = ident["protected"]  # the blurred portrait: a face is still found, the identity is gone
        assert pd["detection_rate"] == 1.0 and pd["mean"] < 0.5  # measured 0.12 (clean: 0.89)

    def test_no_face_in_the_photo_is_none_safe(self):
        s = ToyVideoSurrogate()
        out = verify(s, torch.full((1, 3, 30, 40), 0.5), _photo())
        ident = out["metrics"]["identity"]
        assert ident["clean"]["source_detected"] is False and ident["protected"]["mean"] is None

    @pytest.mark.parametrize(
        "kwargs, err, match",
        [
            ({"protected": torch.rand(1, 3, 20, 40)}, ValueError, "same size"),
            ({"clean": torch.rand(2, 3, 30, 40), "protected": torch.rand(2, 3, 30, 40)}, ValueError, "one photo"),
            ({"steps": 0}, ValueError, "steps must be a positive integer"),
            ({"num_frames": 0}, ValueError, "num_frames"),
            ({"clean": torch.rand(1, 3, 30, 40) + 2}, ValueError, r"\[0, 1\]"),
        ],
    )
    def test_bad_arguments(self, kwargs, err, match):
        args = {"clean": _photo(), "protected": _photo(1)}
        args.update(kwargs)
        with pytest.raises(err, match=match):
            verify(ToyVideoSurrogate(), args.pop("clean"), args.pop("protected"), **args)

    def test_surrogate_without_generate(self):
        with pytest.raises(TypeError, match="no generate"):
            verify(ToySurrogate(), _photo(), _photo(1))

    def test_bad_video_from_generate(self):
        s = ToyVideoSurrogate()
        s.generate = lambda image, **kw: torch.rand(3, 24, 32)  # one frame without a frame axis
        with pytest.raises(ValueError, match=r"the video toy.generate returned must have shape \(F, 3, H, W\)"):
            generate_video(s, _photo())

    def test_compare_videos_without_extras(self):
        v = torch.rand(2, 3, 16, 16)
        r = compare_videos(v, v.flip(0))
        assert r["latent_distance"] is None and r["identity"] is None and r["psnr"]["mean"] < 20


# ----------------------------------------------------------------------------- real tiny surrogates


def test_verify_on_tiny_surrogate(tiny):
    h, w = tiny.working_size(48, 64)
    clean = _photo(3, h, w)
    noise = 2 * torch.rand(clean.shape, generator=torch.Generator().manual_seed(4)) - 1
    prot = (clean + 16 / 255 * noise).clamp(0, 1)
    frames = 5  # valid for every family (CogVideoX / Wan: 4k + 1), fewer than their defaults: faster
    out = verify(tiny, clean, prot, steps=1, seed=0, num_frames=frames, faces=False)
    cv, pv = out["clean_video"], out["protected_video"]
    assert cv.shape == pv.shape and cv.ndim == 4 and cv.shape[1] == 3
    n = cv.shape[0]  # the tiny CogVideoX pipeline decodes 2 latent frames to 8 frames, not 5
    assert 0.0 <= float(cv.min()) and float(cv.max()) <= 1.0
    assert not torch.equal(cv, pv)
    m = out["metrics"]
    assert set(m) == METRIC_KEYS and m["settings"]["family"] == tiny.family
    assert len(m["psnr"]["per_frame"]) == len(m["ssim"]["per_frame"]) == n == m["settings"]["num_frames"]
    assert m["latent_distance"]["mean"] > 0 and len(m["latent_distance"]["per_frame"]) == n
    assert isinstance(m["psnr"]["mean"], float) and m["ssim"]["mean"] < 1.0
    json.dumps(m, allow_nan=False)

    same = verify(tiny, clean, clean.clone(), steps=1, seed=0, num_frames=frames, faces=False, latent=False)
    assert torch.equal(same["clean_video"], same["protected_video"])
    assert torch.equal(same["clean_video"], cv)  # the same seed reproduces the clean video
    assert same["metrics"]["psnr"]["mean"] == "inf" and same["metrics"]["ssim"]["mean"] == pytest.approx(1, abs=1e-5)


# ----------------------------------------------------------------------------- bench/efficacy.py


def _bench():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "efficacy.py"
    spec = importlib.util.spec_from_file_location("bench_efficacy", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bench_controls_and_jpeg():
    b = _bench()
    x = b.quantize(_photo(0, 32, 32) * 0.5 + 0.25)  # away from 0 and 1: no clipping
    for noisy in (b.uniform_noise(x, 16, 1), b.sign_noise(x, 16, 1)):
        assert 15 / 255 < float((noisy - x).abs().max()) <= 16 / 255 + 1e-6
    assert torch.allclose((b.sign_noise(x, 16, 1) - x).abs(), torch.full_like(x, 16 / 255), atol=1e-6)
    j = b.jpeg(x, 75)
    assert j.shape == x.shape and 0 < float((j - x).abs().mean()) < 0.2
    assert torch.equal(b.jpeg(x, 75), j)  # deterministic
    drifts = {
        "protected": {"psnr_db": 20.0, "ssim": 0.5, "latent_mse": 2.0},
        "uniform_noise": {"psnr_db": 30.0, "ssim": 0.5, "latent_mse": 1.0},
        "sign_noise": {"psnr_db": 25.0, "ssim": 0.9, "latent_mse": 3.0},
    }
    assert b._winner(drifts) == {
        "psnr_db": "protected", "ssim": "tie: protected, uniform_noise", "latent_mse": "sign_noise",
    }


def test_bench_runs_and_says_tiny_models_are_not_real(tmp_path, capsys):
    b = _bench()
    out = tmp_path / "eff.json"
    report = b.main(["--steps", "1", "--families", "svd", "--gen-steps", "1", "--out", str(out)])
    printed = json.loads(capsys.readouterr().out)
    assert printed == report == json.loads(out.read_text())
    assert "NOT real image-to-video models" in report["note"]
    fam = report["families"]["svd"]
    assert set(fam["drift"]) == {"no_jpeg", "jpeg75"}
    assert set(fam["drift"]["no_jpeg"]) == {"protected", "uniform_noise", "sign_noise"}
    assert set(fam["drift"]["jpeg75"]) == {"protected", "uniform_noise", "sign_noise", "jpeg_alone"}
    for photo in fam["photo"].values():
        assert photo["linf_255"] <= 16.0 + 1e-3
    with pytest.raises(SystemExit):
        b.main(["--families", "nope"])
