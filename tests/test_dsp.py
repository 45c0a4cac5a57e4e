"""Dual-Space Perturbation: identity, budget, gradcheck, low-frequency synthesis, module == function."""

import pytest
import torch
import torch_dct

from anti_i2v.dsp import (
    SPACES,
    DSPConfig,
    DSPParams,
    DualSpacePerturbation,
    apply_dsp,
    check_image,
    chroma_scale,
    init_params,
    low_freq_synthesis,
    project_linf,
    project_params,
    restore_luminance,
    step_params,
)


def _random_params(x, cfg, scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    p = init_params(x, config=cfg)
    rnd = (lambda t: None if t is None else torch.randn(t.shape, generator=g, dtype=t.dtype) * scale)  # noqa: E731
    return DSPParams(rnd(p.lab), rnd(p.dct), rnd(p.rgb), p.extra)


def _photo_like(b=1, h=64, w=80, seed=0):
    """Smooth colourful images (random photos of noise would make every colour change look the same)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(b, 3, 4, 5, generator=g)
    return torch.nn.functional.interpolate(low, size=(h, w), mode="bicubic", align_corners=False).clamp(0.02, 0.98)


class TestApplyDSP:
    @pytest.mark.parametrize("space", SPACES)
    @pytest.mark.parametrize("channels", ["rgb", "ab", "lab"])
    def test_zero_perturbation_is_identity(self, channels, space):
        x = torch.rand(2, 3, 33, 51)
        cfg = DSPConfig(dct_block=8, dct_channels=channels, space=space)
        y = apply_dsp(x, init_params(x, config=cfg), cfg)
        assert torch.equal(y, x)

    @pytest.mark.parametrize("eps", [4.0, 16.0])
    @pytest.mark.parametrize("channels", ["rgb", "ab", "lab"])
    def test_budget_and_range_at_odd_full_resolution(self, eps, channels):
        x = torch.rand(3, 3, 333, 517)
        x[0, :, :20] = 0.0  # black and white regions are out of gamut for a*/b* changes
        x[1, :, :20] = 1.0
        cfg = DSPConfig(eps=eps, dct_block=16, dct_channels=channels)
        y = apply_dsp(x, _random_params(x, cfg, scale=5.0), cfg)
        assert y.shape == x.shape
        assert float((y - x).abs().max()) <= eps / 255 + 1e-6
        assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
        assert float((y - x).abs().max()) > 0.5 * eps / 255  # the perturbation is not trivial

    def test_colour_parts_leave_lightness_alone(self):
        import kornia

        x = _photo_like()
        cfg = DSPConfig(eps=8, dct_block=4, dct_channels="ab")
        p = _random_params(x, cfg, scale=2 / 255)
        y = apply_dsp(x, p, cfg)
        d = kornia.color.rgb_to_lab(y) - kornia.color.rgb_to_lab(x)
        # tolerance: float32 Lab round trips are ~1e-5; |dL*| of an RGB change of this size would be ~1
        assert float(d[:, 0].abs().mean()) < 0.01
        assert float(d[:, 1:].abs().mean()) > 0.1
        rgb_dct = DSPConfig(eps=8, dct_block=4, dct_channels="rgb", space="dct")
        y2 = apply_dsp(x, _random_params(x, rgb_dct, scale=2 / 255), rgb_dct)
        assert float((kornia.color.rgb_to_lab(y2) - kornia.color.rgb_to_lab(x))[:, 0].abs().mean()) > 0.1

    def test_space_selects_parameters(self):
        x = torch.rand(1, 3, 20, 30)
        shapes = {s: [tuple(t.shape) for t in init_params(x, config=DSPConfig(space=s, dct_block=4)).tensors()]
                  for s in SPACES}
        assert shapes == {"dsp": [(1, 2, 10, 15), (1, 2, 4, 4)], "ab": [(1, 2, 10, 15)], "dct": [(1, 2, 4, 4)],
                          "rgb": [(1, 3, 20, 30)]}
        full = init_params(x, config=DSPConfig(chroma_downsample=1, space="ab")).tensors()[0]
        assert tuple(full.shape) == (1, 2, 20, 30)

    def test_batch_mismatch_raises(self):
        cfg = DSPConfig(dct_block=4)
        with pytest.raises(ValueError, match="batch"):
            apply_dsp(torch.rand(2, 3, 8, 8), init_params(torch.rand(1, 3, 8, 8), config=cfg), cfg)

    def test_gradcheck(self):
        cfg = DSPConfig(eps=255.0, dct_block=3, dct_channels="ab", chroma_downsample=2)
        x = (torch.rand(1, 3, 6, 7, dtype=torch.float64) * 0.5 + 0.25)
        p = init_params(x, config=cfg, dtype=torch.float64)
        lab = (torch.randn(p.lab.shape, dtype=torch.float64) * 1e-3).requires_grad_()
        dct = (torch.randn(p.dct.shape, dtype=torch.float64) * 1e-3).requires_grad_()
        f = lambda a, b: apply_dsp(x, DSPParams(a, b, None, p.extra), cfg)  # noqa: E731
        assert torch.autograd.gradcheck(f, (lab, dct), eps=1e-6, atol=1e-5)

    def test_module_equals_function(self):
        cfg = DSPConfig(dct_block=4)
        x = torch.rand(1, 3, 10, 12)
        m = DualSpacePerturbation(x, cfg)
        with torch.no_grad():
            m.lab.normal_(std=0.01)
            m.dct.normal_(std=0.01)
        assert torch.equal(m(x), apply_dsp(x, DSPParams(m.lab, m.dct, None, m.extra), cfg))


class TestStepAndBounds:
    """The numerics that keep the DSP imperceptible: pixel-unit steps and bounds for both parts."""

    @pytest.mark.parametrize("rule", ["normalized", "sign"])
    @pytest.mark.parametrize("space", SPACES)
    def test_one_step_moves_no_pixel_more_than_the_step(self, space, rule):
        x = _photo_like(h=96, w=120)
        cfg = DSPConfig(eps=64, dct_block=16, space=space, restore_luminance=False)
        p = init_params(x, config=cfg)
        g = torch.Generator().manual_seed(1)
        grads = [torch.randn(t.shape, generator=g) for t in p.tensors()]
        lr = 1 / 255
        step_params(p, grads, lr, cfg, rule=rule)
        moved = float((apply_dsp(x, p, cfg) - x).abs().max())
        # the a*/b* scale is a first-order bound: allow 10 % for the curvature of Lab -> sRGB
        assert lr * 0.3 < moved <= lr * 1.1

    def test_colour_scale_follows_the_pixel(self):
        x = torch.tensor([[[[0.5, 0.9]], [[0.5, 0.1]], [[0.5, 0.1]]]])  # grey and a saturated red
        s = chroma_scale(x)
        assert s.shape == (1, 1, 1, 2) and bool((s > 0).all()) and float(s[0, 0, 0, 0]) != float(s[0, 0, 0, 1])

    def test_normalized_step_follows_the_gradient(self):
        """The default rule moves each element in proportion to its gradient: vanishing gradient, no change."""
        x = _photo_like()
        cfg = DSPConfig(eps=8, space="ab", chroma_downsample=1, restore_luminance=False)
        p = init_params(x, config=cfg)
        g = torch.zeros_like(p.lab)
        g[0, 0, 10, 10], g[0, 1, 20, 30] = 4.0, -1.0
        step_params(p, [g], 2 / 255, cfg)
        assert float(p.lab[0, 0, 10, 10]) == pytest.approx(-2 / 255, rel=1e-6)
        assert float(p.lab[0, 1, 20, 30]) == pytest.approx(0.5 / 255, rel=1e-6)
        assert int((p.lab != 0).sum()) == 2
        with pytest.raises(ValueError, match="rule"):
            step_params(p, [g], 1 / 255, cfg, rule="bogus")

    def test_many_steps_do_not_pin_pixels_at_the_budget(self):
        """A sign walk with the old numerics put 70-97 % of pixels at the budget; the parts' bounds add up to eps."""
        x = _photo_like(h=128, w=128)
        cfg = DSPConfig(eps=8, dct_block=16, restore_luminance=False)
        p = init_params(x, config=cfg)
        g = torch.Generator().manual_seed(2)
        for _ in range(40):
            step_params(p, [torch.randn(t.shape, generator=g) for t in p.tensors()], 1 / 255, cfg)
            project_params(p, cfg)
        d = (apply_dsp(x, p, cfg) - x).abs()
        at_budget = float((d >= (8 - 0.5) / 255).any(dim=1).float().mean())
        assert float(d.max()) <= 8 / 255 + 1e-6 and at_budget < 0.2

    def test_project_params_bounds_each_part(self):
        x = _photo_like()
        cfg = DSPConfig(eps=8, dct_block=8, mix=0.25)
        p = _random_params(x, cfg, scale=1.0)
        project_params(p, cfg)
        assert float(p.lab.abs().max()) <= 0.25 * 8 / 255 + 1e-7
        from anti_i2v.dsp import _synth

        peak = float(_synth(p.dct, p, x.shape[-2], x.shape[-1]).abs().max())
        assert peak <= 0.75 * 8 / 255 * (1 + 1e-5)


class TestLowFrequencySynthesis:
    @pytest.mark.parametrize("hw", [(38, 48), (480, 720), (5, 3)])
    def test_matches_idct_of_padded_block(self, hw):
        h, w = hw
        c = torch.randn(3, 8, 8, dtype=torch.float64)
        kh, kw = min(8, h), min(8, w)
        padded = torch.zeros(3, h, w, dtype=torch.float64)
        padded[:, :kh, :kw] = c[:, :kh, :kw]
        ref = torch_dct.idct_2d(padded, norm="ortho")
        assert torch.allclose(low_freq_synthesis(c, h, w), ref, atol=1e-10)


class TestProjection:
    def test_project_linf(self):
        x = torch.rand(1, 3, 9, 9)
        adv = x + torch.randn_like(x)
        y = project_linf(adv, x, 8 / 255)
        assert float((y - x).abs().max()) <= 8 / 255 + 1e-7 and 0 <= float(y.min()) and float(y.max()) <= 1

    def test_restore_luminance_keeps_budget_and_lightness(self):
        import kornia
        cfg = DSPConfig(eps=16, dct_block=8, dct_channels="rgb", restore_luminance=True, restore_rounds=5)
        x = torch.rand(1, 3, 64, 64) * 0.8 + 0.1
        adv = apply_dsp(x, _random_params(x, cfg, scale=5.0), cfg)
        y = restore_luminance(adv, x, cfg)
        assert float((y - x).abs().max()) <= 16 / 255 + 1e-6
        dl_before = (kornia.color.rgb_to_lab(adv) - kornia.color.rgb_to_lab(x))[:, 0].abs().mean()
        dl_after = (kornia.color.rgb_to_lab(y) - kornia.color.rgb_to_lab(x))[:, 0].abs().mean()
        assert dl_after < 0.25 * dl_before

    def test_restore_luminance_is_identity_without_change(self):
        x = torch.rand(1, 3, 16, 16)
        assert torch.equal(restore_luminance(x.clone(), x, DSPConfig()), x)


class TestCheckImage:
    def test_rgba_is_converted(self):
        x = torch.rand(1, 4, 8, 8)
        assert torch.equal(check_image(x), x[:, :3])

    def test_grey_is_repeated(self):
        assert check_image(torch.rand(2, 1, 8, 8)).shape == (2, 3, 8, 8)

    @pytest.mark.parametrize(
        "bad, match",
        [
            (torch.full((1, 3, 8, 8), float("nan")), "NaN"),
            (torch.rand(0, 3, 8, 8), "empty"),
            (torch.rand(1, 3, 1, 1), "at least 2x2"),
            (torch.rand(1, 2, 8, 8), "1, 3 or 4 channels"),
            (torch.rand(1, 3, 8, 8) * 3, r"\[0, 1\]"),
            (torch.zeros(1, 3, 8, 8, dtype=torch.uint8), "floating-point"),
        ],
    )
    def test_refused(self, bad, match):
        with pytest.raises(ValueError, match=match):
            check_image(bad, "photo")

    def test_error_names_argument(self):
        with pytest.raises(ValueError, match="^photo"):
            check_image(torch.rand(0, 3, 8, 8), "photo")


class TestConfig:
    @pytest.mark.parametrize(
        "kw", [{"eps": 0}, {"eps": float("nan")}, {"dct_block": 0}, {"dct_channels": "xyz"}, {"mix": 1.5},
               {"space": "hsv"}, {"chroma_downsample": 0}]
    )
    def test_invalid(self, kw):
        with pytest.raises(ValueError):
            DSPConfig(**kw)

    def test_budget_convention(self):
        # 8/255 of the [0, 1] range by default, i.e. "16/255" of code working in [-1, 1]
        assert DSPConfig().eps == 8.0 and abs(DSPConfig(eps=8).eps01 - 8 / 255) < 1e-12
