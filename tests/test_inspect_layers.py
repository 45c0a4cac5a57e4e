"""Layer PCA maps (anti_i2v/inspect_layers.py) on the tiny models of every family, plus native ComfyUI models.

The ``tiny`` fixture (tests/conftest.py) runs each test on CogVideoX, Wan 2.1 and SVD built from the real
diffusers classes with random weights.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from anti_i2v.inspect_layers import _fixed_timestep, block_pca_maps, pca_rgb, resolve_blocks, token_grid
from anti_i2v.surrogates import tiny_surrogate
from anti_i2v.surrogates.base import Conditioning, FeatureRequest, NoiseDraw, Surrogate, SurrogateError
from tests import comfy_models as cm


def _all(s) -> str:
    return f"0-{s.num_blocks - 1}"


def _snapshot(s):
    """Weights, requires_grad, training flags and hook counts of every module of the surrogate."""
    out = []
    for root in s.modules():
        for name, m in root.named_modules():
            out.append((name, m.training, len(m._forward_hooks), len(m._forward_pre_hooks)))
        for name, p in root.named_parameters():
            out.append((name, p.requires_grad, p.detach().clone()))
        for name, b in root.named_buffers():
            out.append((name, b.detach().clone()))
    return out


def _same(a, b) -> bool:
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        for u, v in zip(x, y):
            if isinstance(u, torch.Tensor):
                if not torch.equal(u, v):
                    return False
            elif u != v:
                return False
    return True


# ---------------------------------------------------------------------------------------------- diffusers families
def test_maps_shape_range_and_determinism(tiny, photo):
    maps = block_pca_maps(tiny, photo, _all(tiny), seed=0)
    size = tiny.working_size(*photo.shape[-2:])
    assert list(maps) == list(range(tiny.num_blocks))
    for i, m in maps.items():
        assert m.shape == (3, *size) and m.dtype == torch.float32 and m.device.type == "cpu"
        assert torch.isfinite(m).all() and m.min() >= 0 and m.max() <= 1
        # min-max normalised: the first component spans exactly [0, 1]
        assert m[0].min() == 0 and m[0].max() == 1, f"block {i}: first component not normalised"
    again = block_pca_maps(tiny, photo, _all(tiny), seed=0)
    assert all(torch.equal(maps[i], again[i]) for i in maps)
    other = block_pca_maps(tiny, photo, _all(tiny), seed=1)
    assert any(not torch.equal(maps[i], other[i]) for i in maps), "the seed has no effect"
    # the maps depend on the photo
    flipped = block_pca_maps(tiny, photo.flip(-1), _all(tiny), seed=0)
    assert any(not torch.equal(maps[i], flipped[i]) for i in maps)


def test_first_image_of_a_batch_and_any_layout(tiny, photo):
    batch = torch.cat([photo, torch.rand_like(photo)])
    a = block_pca_maps(tiny, batch, "0", seed=3)
    b = block_pca_maps(tiny, photo[0], [0], seed=3)  # (3, H, W) and a list of ints
    assert torch.equal(a[0], b[0])


def test_model_and_image_are_unchanged(tiny, photo):
    den = tiny.denoiser()
    den.train()  # a state the call must restore, not assume
    try:
        before = _snapshot(tiny)
        image = photo.clone()
        block_pca_maps(tiny, photo, _all(tiny), seed=0, timestep=0.5)
        assert _same(_snapshot(tiny), before)
        assert den.training
        assert torch.equal(photo, image)
    finally:
        den.eval()


def test_early_exit_after_deepest_block(tiny, photo):
    last = tiny.denoiser_blocks()[-1][1]
    calls = []
    handle = last.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        block_pca_maps(tiny, photo, "0", seed=0)
        assert calls == [], "blocks past the deepest requested one ran"
        block_pca_maps(tiny, photo, str(tiny.num_blocks - 1), seed=0)
        assert calls, "the deepest block did not run"
    finally:
        handle.remove()


def test_out_of_range_and_bad_arguments(tiny, photo):
    n = tiny.num_blocks
    with pytest.raises(SurrogateError, match=f"valid indices are 0-{n - 1}"):
        block_pca_maps(tiny, photo, f"0,{n}")
    with pytest.raises(ValueError, match="at least one denoiser block"):
        block_pca_maps(tiny, photo, " ")
    with pytest.raises(ValueError, match="blocks: cannot read 'x'"):
        block_pca_maps(tiny, photo, "0,x")
    with pytest.raises(ValueError, match=r"timestep must be None or a fraction .* \[0, 1\]"):
        block_pca_maps(tiny, photo, "0", timestep=1.5)
    with pytest.raises(ValueError, match="NaN"):
        block_pca_maps(tiny, photo * float("nan"), "0")
    assert resolve_blocks(tiny, "1,0,1") == [0, 1]


def test_timestep_fraction_is_used(tiny, photo):
    clean = block_pca_maps(tiny, photo, "0", seed=0, timestep=0.0)
    noisy = block_pca_maps(tiny, photo, "0", seed=0, timestep=1.0)
    assert not torch.equal(clean[0], noisy[0])
    draw = tiny.sample_noise(1, torch.Generator().manual_seed(0))
    lo = float(_fixed_timestep(tiny, draw, 0.0).timestep[0])
    hi = float(_fixed_timestep(tiny, draw, 1.0).timestep[0])
    expected = {"cogvideox": (0.0, 999.0), "wan21": (0.0, 1000.0),
                "svd": (0.25 * math.log(0.002), 0.25 * math.log(700.0))}[tiny.family]
    assert (lo, hi) == pytest.approx(expected, rel=1e-5)
    if tiny.family == "svd":  # the noise level itself follows the timestep
        assert float(draw.extra["sigma"][0]) == pytest.approx(700.0, rel=1e-5)


@pytest.mark.parametrize("family,grid", [("cogvideox", (4, 6)), ("wan21", (2, 3))])
def test_token_grid_of_dit_blocks(family, grid):
    """32 x 48 pixels / (VAE factor 8 x patch 2) -> 2 x 3 (Wan); CogVideoX's tiny VAE factor is 4 -> 4 x 6."""
    s = tiny_surrogate(family, seed=0)
    h, w = s.working_size(32, 48)
    draw = s.sample_noise(1, torch.Generator().manual_seed(0))
    with torch.no_grad():
        tokens = s.features(torch.rand(1, 3, h, w), draw, FeatureRequest(blocks=frozenset({0}))).blocks[0]
    assert token_grid(s, tokens.shape[1], h, w) == (s.latent_frames(), *grid)
    with pytest.raises(SurrogateError, match="not a whole number"):
        token_grid(s, tokens.shape[1] + 1, h, w)
    # the map is drawn at the token grid: constant on each (h / grid) x (w / grid) cell
    m = block_pca_maps(s, torch.rand(1, 3, h, w), "0", seed=0)[0]
    sy, sx = h // grid[0], w // grid[1]
    coarse = m[:, ::sy, ::sx]
    assert coarse.shape[1:] == grid
    assert torch.equal(coarse.repeat_interleave(sy, 1).repeat_interleave(sx, 2), m)


class _TokenToy(Surrogate):
    """A DiT-like toy whose blocks output tokens (B, N, C) but that exposes no VAE factor or patch size."""

    family = "token-toy"
    default_size = (16, 16)

    def __init__(self) -> None:
        super().__init__(num_frames=1)
        self.embed = nn.Conv2d(3, 8, 4, stride=4)
        self.net = nn.ModuleList([nn.Linear(8, 8) for _ in range(2)])

    def denoiser(self):
        return self.net

    def denoiser_blocks(self):
        return [(f"net.{i}", b) for i, b in enumerate(self.net)]

    def vae_encoder_layers(self):
        return []

    def modules(self):
        return [self.embed, self.net]

    def sample_noise(self, batch, generator):
        return NoiseDraw(timestep=torch.zeros(batch), noise=torch.zeros(0))

    def encode(self, image):
        return Conditioning(latent=self.embed(image))

    def clean_latent(self, cond):
        return cond.latent.float()

    def noisy_latent(self, x0, draw):
        return x0

    def prediction_target(self, x0, draw):
        return x0

    def denoise(self, cond, noisy, draw):
        tokens = cond.latent.flatten(2).transpose(1, 2)
        for blk in self.net:
            tokens = blk(tokens)
        return tokens


def test_unknown_token_grid_is_a_clear_error():
    s = _TokenToy()
    with pytest.raises(SurrogateError, match="cannot tell the token grid of the token-toy surrogate"):
        block_pca_maps(s, torch.rand(1, 3, 16, 16), "0")
    with pytest.raises(SurrogateError, match="token-toy surrogate has no known noise schedule"):
        block_pca_maps(s, torch.rand(1, 3, 16, 16), "0", timestep=0.5)


class _FrameToy(_TokenToy):
    """Tokens of two frames, frame-major: frame 0 embeds the photo (4 x 4 pixel cells), frame 1 is fixed noise.

    Exposes ``vae_scale_spatial`` = 2 and a denoiser ``patch_size`` = 2, as the CogVideoX adapter / ComfyUI do.
    """

    family = "frame-toy"
    vae_scale_spatial = 2

    def __init__(self) -> None:
        super().__init__()
        self.net.patch_size = 2
        for blk in self.net:
            nn.init.eye_(blk.weight)
            nn.init.zeros_(blk.bias)
        self.mix = torch.randn(3, 8, generator=torch.Generator().manual_seed(0))

    def encode(self, image):
        return Conditioning(latent=nn.functional.avg_pool2d(image, 4))  # (B, 3, 4, 4)

    def denoise(self, cond, noisy, draw):
        first = cond.latent.flatten(2).transpose(1, 2) @ self.mix  # (B, 16, 8), row-major within the frame
        second = torch.randn(first.shape, generator=torch.Generator().manual_seed(1))
        tokens = torch.cat([first, second], dim=1)
        for blk in self.net:
            tokens = blk(tokens)
        return tokens


def test_dit_map_is_the_first_frame_in_row_major_order():
    s = _FrameToy()
    ramp = torch.linspace(0, 1, 16).expand(1, 3, 16, 16).clone()  # left to right
    assert token_grid(s, 32, 16, 16) == (2, 4, 4)
    m = block_pca_maps(s, ramp, "1")[1][0]  # first component
    cells = m[::4, ::4]
    assert torch.equal(cells, cells[:1].expand(4, 4)), "not constant down the columns: wrong token order"
    row = cells[0]
    assert torch.all(row.diff() > 0) or torch.all(row.diff() < 0), "the map does not follow the photo"
    vertical = block_pca_maps(s, ramp.transpose(-1, -2), "1")[1][0][::4, ::4]
    assert torch.equal(vertical, vertical[:, :1].expand(4, 4))


# ---------------------------------------------------------------------------------------------- PCA itself
def test_pca_rgb_recovers_known_components():
    g = torch.Generator().manual_seed(0)
    h, w, c = 12, 16, 8
    ramp_x = torch.linspace(-1, 1, w).expand(h, w)
    ramp_y = torch.linspace(-1, 1, h).view(h, 1).expand(h, w)
    basis, _ = torch.linalg.qr(torch.randn(c, 3, generator=g))
    u, v, z = basis.T
    # largest loading positive: then each map is its pattern, not the pattern's negative
    u, v, z = (d * torch.sign(d[d.abs().argmax()]) for d in (u, v, z))
    saddle = ramp_x * ramp_y  # uncorrelated with both ramps, smaller variance
    feats = (3.0 * u.view(c, 1, 1) * ramp_x + 1.5 * v.view(c, 1, 1) * ramp_y + z.view(c, 1, 1) * saddle
             + 1e-3 * torch.randn(c, h, w, generator=g) + 5.0)  # a constant offset: centring must remove it
    m = pca_rgb(feats)
    norm = lambda t: (t - t.min()) / (t.max() - t.min())
    assert torch.allclose(m[0], norm(ramp_x), atol=2e-3)
    assert torch.allclose(m[1], norm(ramp_y), atol=2e-3)
    assert torch.allclose(m[2], norm(saddle), atol=5e-3)
    assert torch.equal(pca_rgb(feats.double()), m)  # float32 whatever the input dtype


def test_pca_rgb_degenerate_inputs():
    assert torch.equal(pca_rgb(torch.ones(5, 4, 4)), torch.zeros(3, 4, 4))  # constant: no component
    two = pca_rgb(torch.randn(2, 4, 4, generator=torch.Generator().manual_seed(0)))
    assert two[2].abs().sum() == 0 and two[0].max() == 1  # 2 channels -> 2 components
    with pytest.raises(ValueError, match=r"features must have shape \(C, h, w\)"):
        pca_rgb(torch.zeros(4, 4))


# ---------------------------------------------------------------------------------------------- native ComfyUI
@pytest.fixture(scope="module")
def native():
    if not (cm.COMFY_DIR / "comfy").is_dir():
        pytest.skip("ComfyUI not unpacked (scripts/setup.sh)")
    return cm.load_native()


def test_native_wan_and_svd(native, tmp_path):
    import comfy.sd
    import comfy.utils

    with torch.inference_mode():  # as ComfyUI's loaders run: inference-tensor weights
        model = comfy.sd.load_diffusion_model(str(cm.write_tiny_wan21_i2v(tmp_path)))
        vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(str(cm.write_tiny_wan_vae(tmp_path))))
    wan = native.native_surrogate(model=model, vae=vae, frames=5)
    svd_model, svd_vae, svd_cv = cm.tiny_svd()
    svd = native.native_surrogate(model=svd_model, vae=svd_vae, clip_vision=svd_cv, frames=3)
    photo = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    for s in (wan, svd):
        user = s.model.model
        before = [t.clone() for t in user.state_dict().values()]
        maps = block_pca_maps(s, photo, _all(s), seed=0, timestep=0.5)
        assert list(maps) == list(range(s.num_blocks))
        for m in maps.values():
            assert m.shape == (3, 64, 64) and torch.isfinite(m).all() and 0 <= m.min() and m.max() <= 1
        again = block_pca_maps(s, photo, _all(s), seed=0, timestep=0.5)
        assert all(torch.equal(maps[i], again[i]) for i in maps)
        assert all(torch.equal(a, b) for a, b in zip(user.state_dict().values(), before))
    # Wan: 64 / (8 x 2) = 4 x 4 tokens per latent frame
    m = block_pca_maps(wan, photo, "1", seed=0)[1]
    assert torch.equal(m[:, ::16, ::16].repeat_interleave(16, 1).repeat_interleave(16, 2), m)
    with pytest.raises(SurrogateError, match=f"0-{wan.num_blocks - 1}"):
        block_pca_maps(wan, photo, str(wan.num_blocks))
