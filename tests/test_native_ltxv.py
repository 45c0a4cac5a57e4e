"""Native LTX-Video surrogate (nodes/native/ltxv.py) on a tiny checkpoint loaded by ComfyUI's own loader.

The checkpoint (``comfy_models.write_tiny_ltxv_checkpoint``) has the real LTX-Video layout: ``model.diffusion_model.``
+ ``vae.`` keys and a ``config`` metadata entry; ``comfy.sd.load_checkpoint_guess_config`` (what
CheckpointLoaderSimple calls) detects ``LTXV`` and the LTX ``VideoVAE`` from it, under inference mode, so the
weights are inference tensors as in a prompt. Tolerances: float32 kernels differ between CPUs by a few ulp, so
recomputed values are compared with ``atol=1e-5``; values that are the same computation on the same inputs
(the user's weights before and after) with ``torch.equal``.
"""

from __future__ import annotations

import pytest
import torch

from anti_i2v.inspect_layers import block_pca_maps
from anti_i2v.surrogates.base import FeatureRequest, SurrogateError
from tests import comfy_models as cm

pytestmark = pytest.mark.skipif(not (cm.COMFY_DIR / "comfy").is_dir(), reason="ComfyUI not unpacked (scripts/setup.sh)")


@pytest.fixture(scope="module")
def native():
    return cm.load_native()


@pytest.fixture(scope="module")
def ltxv(native, tmp_path_factory):
    path = cm.write_tiny_ltxv_checkpoint(tmp_path_factory.mktemp("checkpoints"))
    model, clip, vae = cm.load_checkpoint(path)
    return model, vae


def _photo(seed: int = 0) -> torch.Tensor:
    return torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


def _snapshot(module: torch.nn.Module) -> list:
    return [(k, v.clone(), v.requires_grad) for k, v in module.state_dict(keep_vars=True).items()]


def test_ltxv_detected_and_built(native, ltxv):
    model, vae = ltxv
    assert type(model.model).__name__ == "LTXV"
    assert native.detect_native_family(model) == "ltxv"
    s = native.native_surrogate(model=model, vae=vae, frames=9, dtype="float32")
    assert isinstance(s, native.NativeLTXVSurrogate)
    assert s.block_names == ["transformer_blocks.0", "transformer_blocks.1"]
    assert s.vae_layer_names[0] == "encoder.conv_in" and s.vae_layer_names[-1] == "encoder.conv_out"
    assert s.latent_frames == 2 and s.working_size(100, 200) == (96, 192)
    d = s.describe()
    assert d["model_class"] == "LTXV" and d["text"] == "zeros" and d["frame_rate"] == 25.0
    terms = {t.name: t for t in s.default_objective().terms}
    assert terms["ira"].blocks == (1,) and terms["irc"].pairs == ((0, 1),)


def test_ltxv_wrong_inputs_are_refused(native, ltxv, tmp_path):
    model, vae = ltxv
    wan_vae = cm.load_vae(cm.write_tiny_wan_vae(tmp_path))
    with pytest.raises(ValueError, match="family is 'wan21' but the connected model is LTXV"):
        native.native_surrogate(model=model, vae=vae, family="wan21")
    with pytest.raises(ValueError, match="positive: the conditioning has width 77 but the LTX-Video model expects 4096"):
        native.native_surrogate(model=model, vae=vae, positive=[[torch.zeros(1, 3, 77), {}]])
    with pytest.raises(ValueError, match="vae: the connected VAE .* is not LTX-Video's"):
        native.native_surrogate(model=model, vae=wan_vae)


def test_ltxv_conditioning_follows_comfyui(native, ltxv):
    """encode = VAE.encode of the photo (LTXVImgToVideo's first latent frame); denoise ignores the noisy first frame
    (the sampler overwrites it with the photo's latent) and embeds those tokens at timestep 0."""
    model, vae = ltxv
    s = native.native_surrogate(model=model, vae=vae, frames=9, dtype="float32")
    photo = _photo()
    cond = s.encode_image(photo)
    with torch.inference_mode():
        ref = vae.encode(photo.movedim(1, -1))  # ComfyUI's own (non-differentiable) path, as LTXVImgToVideo
    assert cond.latent.shape == (1, 128, 1, 2, 2)
    torch.testing.assert_close(cond.latent, ref.float(), atol=1e-5, rtol=1e-5)
    x0 = s.clean_latent(cond)
    assert x0.shape == (1, 128, 2, 2, 2)
    draw = s.draw_noise(1, torch.Generator().manual_seed(0))
    zt = s.noisy_latent(x0, draw)
    assert torch.equal(zt, s.noisy_latent(x0, draw))  # one z_t per draw
    other = zt.clone()
    other[:, :, :1] += 3.0
    out = s.denoise(cond, zt, draw)
    torch.testing.assert_close(s.denoise(cond, other, draw), out, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(s.denoise(cond, zt + 3.0, draw), out, atol=1e-3)  # the other frames matter
    mask = s.conditioning_mask(zt.shape)
    assert mask.shape == zt.shape and mask[:, :, 0].max() == 0 and mask[:, :, 1].min() == 1


def test_ltxv_shadow_block_matches_comfyui_and_model_unchanged(native, ltxv):
    """The out-of-place block forward gives ComfyUI's block values; gradients reach the photo; the user's model
    keeps its weights, requires_grad flags and hooks."""
    model, vae = ltxv
    before = _snapshot(model.model) + _snapshot(vae.first_stage_model)
    s = native.native_surrogate(model=model, vae=vae, frames=9, dtype="float32")
    x = torch.randn(1, 8, 64, generator=torch.Generator().manual_seed(1))
    t = torch.randn(1, 1, 6 * 64, generator=torch.Generator().manual_seed(2))
    ctx = torch.randn(1, 3, 64, generator=torch.Generator().manual_seed(3))
    with s.bound():
        coords = torch.zeros(1, 3, 8)
        from comfy.ldm.lightricks.model import precompute_freqs_cis

        pe = precompute_freqs_cis(coords, dim=64, out_dtype=torch.float32)
        mine = s.denoiser().transformer_blocks[0](x, context=ctx, timestep=t, pe=pe)
    with torch.inference_mode():
        theirs = model.model.diffusion_model.transformer_blocks[0](x.clone(), context=ctx, timestep=t, pe=pe)
    torch.testing.assert_close(mine, theirs.clone(), atol=1e-5, rtol=1e-5)

    photo = _photo(3).requires_grad_(True)
    draw = s.draw_noise(1, torch.Generator().manual_seed(0))
    clean = s.clean_latent(s.encode_image(_photo(3)))
    f = s.features(photo, draw, FeatureRequest(blocks=frozenset({1}), vae_layers=frozenset({5})), clean=clean)
    loss = f.blocks[1].float().pow(2).mean() + f.vae[5].float().pow(2).mean()
    loss.backward()
    assert photo.grad is not None and photo.grad.abs().sum() > 0
    after = _snapshot(model.model) + _snapshot(vae.first_stage_model)
    assert [k for k, _, _ in after] == [k for k, _, _ in before]
    assert all(torch.equal(a, b) and ga == gb for (_, a, ga), (_, b, gb) in zip(after, before))
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.model.modules())


def test_ltxv_layer_pca_maps(native, ltxv):
    model, vae = ltxv
    s = native.native_surrogate(model=model, vae=vae, frames=9, dtype="float32")
    maps = block_pca_maps(s, _photo(4), "0,1", seed=0, timestep=0.5)
    assert list(maps) == [0, 1]
    for m in maps.values():
        assert m.shape == (3, 64, 64) and torch.isfinite(m).all() and 0 <= m.min() and m.max() <= 1
    # 64 / 32 = 2 x 2 tokens per latent frame (patch 1): each map is constant on 32 x 32 cells
    m = maps[1]
    assert torch.equal(m[:, ::32, ::32].repeat_interleave(32, 1).repeat_interleave(32, 2), m)
    with pytest.raises(SurrogateError, match="0-1"):
        block_pca_maps(s, _photo(4), "2")
