"""Dual-Space Perturbation: identity, budget, gradcheck, low-frequency synthesis, module == function."""

import pytest
import torch
import torch_dct

from anti_i2v.dsp import (
    DSPConfig,
    DSPParams,
    DualSpacePerturbation,
    apply_dsp,
    check_image,
    init_params,
    low_freq_synthesis,
    project_linf,
    restore_luminance,
)


def _random_params(b, work, cfg, scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    p = init_params(b, work, cfg)
    return DSPParams(torch.randn(p.lab.shape, generator=g) * scale, torch.randn(p.dct.shape, generator=g) * scale)


class TestApplyDSP:
    @pytest.mark.parametrize("channels", ["rgb", "ab", "lab"])
    def test_zero_perturbation_is_identity(self, channels):
        x = torch.rand(2, 3, 33, 51)
        cfg = DSPConfig(dct_block=8, dct_channels=channels)
        y = apply_dsp(x, init_params(2, (16, 24), cfg), cfg)
        assert torch.equal(y, x)

    @pytest.mark.parametrize("eps", [4.0, 16.0])
    @pytest.mark.parametrize("channels", ["rgb", "ab", "lab"])
    def test_budget_and_range_at_odd_full_resolution(self, eps, channels):
        x = torch.rand(3, 3, 333, 517)
        x[0, :, :20] = 0.0  # black and white regions are out of gamut for a*/b* changes
        x[1, :, :20] = 1.0
        cfg = DSPConfig(eps=eps, dct_block=16, dct_channels=channels)
        y = apply_dsp(x, _random_params(3, (48, 72), cfg, scale=5.0), cfg)
        assert y.shape == x.shape
        assert float((y - x).abs().max()) <= eps / 255 + 1e-6
        assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
        assert float((y - x).abs().max()) > 0.5 * eps / 255  # the perturbation is not trivial

    def test_mix_selects_space(self):
        x = torch.rand(1, 3, 40, 40) * 0.6 + 0.2
        p = _random_params(1, (20, 20), DSPConfig(dct_block=4), scale=0.01)
        colour_only = apply_dsp(x, p, DSPConfig(dct_block=4, mix=1.0))
        dct_only = apply_dsp(x, p, DSPConfig(dct_block=4, mix=0.0))
        # the colour part leaves L* (almost) alone; the RGB DCT part does not
        import kornia
        dl_colour = (kornia.color.rgb_to_lab(colour_only) - kornia.color.rgb_to_lab(x))[:, 0].abs().mean()
        dl_dct = (kornia.color.rgb_to_lab(dct_only) - kornia.color.rgb_to_lab(x))[:, 0].abs().mean()
        assert dl_colour < 0.05 < dl_dct

    def test_batch_mismatch_raises(self):
        cfg = DSPConfig(dct_block=4)
        with pytest.raises(ValueError, match="batch"):
            apply_dsp(torch.rand(2, 3, 8, 8), init_params(1, (8, 8), cfg), cfg)

    def test_gradcheck(self):
        cfg = DSPConfig(eps=255.0, dct_block=3, dct_channels="ab")
        x = (torch.rand(1, 3, 6, 7, dtype=torch.float64) * 0.5 + 0.25)
        lab = (torch.randn(1, 2, 4, 5, dtype=torch.float64) * 1e-3).requires_grad_()
        dct = (torch.randn(1, 2, 3, 3, dtype=torch.float64) * 1e-3).requires_grad_()
        f = lambda a, b: apply_dsp(x, DSPParams(a, b), cfg)  # noqa: E731
        assert torch.autograd.gradcheck(f, (lab, dct), eps=1e-6, atol=1e-5)

    def test_module_equals_function(self):
        cfg = DSPConfig(dct_block=4)
        m = DualSpacePerturbation(1, (8, 8), cfg)
        with torch.no_grad():
            m.lab.normal_()
            m.dct.normal_()
        x = torch.rand(1, 3, 10, 12)
        assert torch.equal(m(x), apply_dsp(x, DSPParams(m.lab, m.dct), cfg))


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
        cfg = DSPConfig(eps=16, dct_block=8, restore_luminance=True, restore_rounds=5)
        x = torch.rand(1, 3, 64, 64) * 0.8 + 0.1
        adv = apply_dsp(x, _random_params(1, (32, 32), cfg, scale=5.0), cfg)
        y = restore_luminance(adv, x, cfg)
        assert float((y - x).abs().max()) <= 16 / 255 + 1e-6
        dl_before = (kornia.color.rgb_to_lab(adv) - kornia.color.rgb_to_lab(x))[:, 0].abs().mean()
        dl_after = (kornia.color.rgb_to_lab(y) - kornia.color.rgb_to_lab(x))[:, 0].abs().mean()
        assert dl_after < 0.25 * dl_before


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
        "kw", [{"eps": 0}, {"eps": float("nan")}, {"dct_block": 0}, {"dct_channels": "xyz"}, {"mix": 1.5}]
    )
    def test_invalid(self, kw):
        with pytest.raises(ValueError):
            DSPConfig(**kw)

    def test_budget_convention(self):
        assert DSPConfig().eps == 16.0 and abs(DSPConfig(eps=8).eps01 - 8 / 255) < 1e-12
