"""Native Wan 2.2 surrogates (nodes/native/wan22.py): A14B I2V with both experts in one run, and TI2V-5B.

Two tiny experts in the real layout (Wan 2.1 I2V without ``img_emb``, 36 input channels; different seeds) and the
tiny Wan 2.1 VAE are loaded with ``comfy.sd.load_diffusion_model`` / ``comfy.sd.VAE`` under inference mode, as
UNETLoader / VAELoader do. TI2V-5B: a tiny 48-channel model and a random real-size Wan 2.2 VAE (ComfyUI fixes
its width; written once into .cache/anti_i2v_tests). Recomputed float values are compared with ``atol=1e-5`` (a few ulp between CPUs);
the user's weights before and after with ``torch.equal``.
"""

from __future__ import annotations

import pytest
import torch

from anti_i2v.inspect_layers import block_pca_maps
from anti_i2v.surrogates.base import FeatureRequest
from tests import comfy_models as cm

pytestmark = pytest.mark.skipif(not (cm.COMFY_DIR / "comfy").is_dir(), reason="ComfyUI not unpacked (scripts/setup.sh)")


@pytest.fixture(scope="module")
def native():
    return cm.load_native()


@pytest.fixture(scope="module")
def experts(native, tmp_path_factory):
    import comfy.sd

    root = tmp_path_factory.mktemp("wan22")
    hi = cm.write_tiny_wan22_i2v(root, seed=0)
    lo = cm.write_tiny_wan22_i2v(root, seed=5, name=cm.WAN22_LOW_FILE)
    with torch.inference_mode():
        high, low = comfy.sd.load_diffusion_model(str(hi)), comfy.sd.load_diffusion_model(str(lo))
    return high, low, cm.load_vae(cm.write_tiny_wan_vae(root))


def test_wan22_draws_split_by_the_boundary(native, experts):
    high, low, vae = experts
    s = native.native_surrogate(model=high, vae=vae, model_2=low, frames=1, dtype="float32")
    assert isinstance(s, native.NativeWan22MoESurrogate) and s.family == "wan22-native"
    ms = high.model.model_sampling
    # the high-noise share is the part of the sampled percent range [0.02, 0.98] whose sigma is >= 0.9
    p = 0.02 + s.high_noise_share * 0.96
    assert abs(float(ms.percent_to_sigma(p)) - 0.9) < 1e-4
    g = torch.Generator().manual_seed(0)
    draws = [s.draw_noise(2, g) for _ in range(300)]
    for d in draws:  # one expert per draw: every sigma of the batch on the same side of the boundary
        assert bool((d.timestep >= 0.9).all()) or bool((d.timestep < 0.9).all()), d.timestep
    share = sum(s.expert_for(d) == "high" for d in draws) / len(draws)
    assert abs(share - s.high_noise_share) < 0.1, (share, s.high_noise_share)  # 300 draws: 3.5 sd


def test_wan22_features_come_from_the_drawn_expert(native, experts):
    """A draw of either expert gives exactly the features of a Wan surrogate on that expert alone (same draw:
    one-image draws consume the generator as the Wan surrogate does); the photo's gradient flows; both user
    models stay untouched."""
    high, low, vae = experts
    before = [[(k, v.clone(), v.requires_grad) for k, v in m.model.state_dict(keep_vars=True).items()]
              for m in (high, low)]
    s = native.native_surrogate(model=high, vae=vae, model_2=low, frames=1, dtype="float32")
    alone = {"high": native.native_surrogate(model=high, vae=vae, frames=1, dtype="float32"),
             "low": native.native_surrogate(model=low, vae=vae, frames=1, dtype="float32")}
    photo = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    cond = s.encode_image(photo)  # one VAE: the conditioning is shared by the three surrogates
    x0 = s.clean_latent(cond)
    req = FeatureRequest(blocks=frozenset({1}))
    seen = set()
    for seed in range(40):
        d = s.draw_noise(1, torch.Generator().manual_seed(seed))
        expert = s.expert_for(d)
        if expert in seen:
            continue
        seen.add(expert)
        d_alone = alone[expert].draw_noise(1, torch.Generator().manual_seed(seed))
        assert torch.equal(d.timestep, d_alone.timestep) and torch.equal(d.extra["noise_seed"],
                                                                           d_alone.extra["noise_seed"])
        f = s.features(None, d, req, clean=x0, cond=cond)
        ref = alone[expert].features(None, d, req, clean=x0, cond=cond)
        other = alone["low" if expert == "high" else "high"].features(None, d, req, clean=x0, cond=cond)
        torch.testing.assert_close(f.blocks[1], ref.blocks[1], atol=1e-5, rtol=1e-5)
        assert not torch.allclose(f.blocks[1], other.blocks[1], atol=1e-3)
        if len(seen) == 2:
            break
    assert seen == {"high", "low"}
    x = photo.clone().requires_grad_(True)
    s.features(x, d, req, clean=x0).blocks[1].pow(2).mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for m, snap in zip((high, low), before):
        after = list(m.model.state_dict(keep_vars=True).items())
        assert [k for k, _ in after] == [k for k, _, _ in snap]
        assert all(torch.equal(v, b) and v.requires_grad == rg for (_, v), (_, b, rg) in zip(after, snap))
        assert not any(mod._forward_hooks for mod in m.model.modules())


def test_wan22_wrong_inputs_are_refused(native, experts, tmp_path):
    high, low, vae = experts
    with pytest.raises(ValueError, match="family is 'wan22'.*the low-noise model to 'model_2'"):
        native.native_surrogate(model=high, vae=vae, family="wan22")
    import comfy.sd

    with torch.inference_mode():
        i2v21 = comfy.sd.load_diffusion_model(str(cm.write_tiny_wan21_i2v(tmp_path)))
        ltxv = cm.load_checkpoint(cm.write_tiny_ltxv_checkpoint(tmp_path))[0]
    with pytest.raises(ValueError, match="has a CLIP image embedding"):
        native.native_surrogate(model=i2v21, vae=vae, model_2=low)
    with pytest.raises(ValueError, match="model_2: a second model is only used with Wan 2.2 A14B"):
        native.native_surrogate(model=ltxv, vae=vae, model_2=low)
    with pytest.raises(ValueError, match="model_2: expected the low-noise Wan 2.2 A14B I2V model, got LTXV"):
        native.native_surrogate(model=high, vae=vae, model_2=ltxv)


def test_wan22_layer_pca_uses_the_expert_of_the_timestep(native, experts):
    high, low, vae = experts
    s = native.native_surrogate(model=high, vae=vae, model_2=low, frames=1, dtype="float32")
    photo = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    for t, expert in ((0.95, "high"), (0.3, "low")):
        maps = block_pca_maps(s, photo, "0,1", seed=0, timestep=t)
        alone = native.native_surrogate(model=high if expert == "high" else low, vae=vae, frames=1, dtype="float32")
        ref = block_pca_maps(alone, photo, "0,1", seed=0, timestep=t)
        for i in (0, 1):
            assert maps[i].shape == (3, 64, 64)
            torch.testing.assert_close(maps[i], ref[i], atol=1e-4, rtol=0)


# ---------------------------------------------------------------------------------------------- TI2V-5B
@pytest.fixture(scope="module")
def ti2v(native, tmp_path_factory):
    """A tiny TI2V-5B (48 channels) and the random real-size Wan 2.2 VAE (cached, 1.4 GB; ComfyUI fixes its
    width), both loaded by ComfyUI's own loader functions."""
    import comfy.sd

    with torch.inference_mode():
        model = comfy.sd.load_diffusion_model(str(cm.write_tiny_wan22_ti2v(tmp_path_factory.mktemp("ti2v"))))
    return model, cm.load_vae(cm.cached_wan22_vae())


def test_wan22_ti2v_conditioning_follows_comfyui(native, ti2v, experts):
    """Wan22ImageToVideoLatent: the photo's latent (VAE.encode, process_latent_in) in the first latent frame,
    kept there whatever the noise, and per-frame timesteps t * mask (0 for the photo's frame); the gradient
    reaches the photo through the VAE and the blocks; the user's model is untouched; layer PCA works."""
    model, vae = ti2v
    assert native.detect_native_family(model) == "wan22_ti2v"
    before = [(k, v.clone(), v.requires_grad) for k, v in model.model.state_dict(keep_vars=True).items()]
    s = native.native_surrogate(model=model, vae=vae, frames=5, dtype="float32")
    assert isinstance(s, native.NativeWan22TI2VSurrogate) and s.latent_frames == 2
    photo = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(6))
    cond = s.encode_image(photo)
    with torch.inference_mode():
        ref = model.model.latent_format.process_in(vae.encode(photo.movedim(1, -1)))
    torch.testing.assert_close(cond.latent, ref.clone(), atol=1e-5, rtol=1e-5)
    x0 = s.clean_latent(cond)
    assert x0.shape == (1, 48, 2, 4, 4)
    d = s.draw_noise(1, torch.Generator().manual_seed(0))
    zt = s.noisy_latent(x0, d)
    other = zt.clone()
    other[:, :, :1] -= 2.0
    torch.testing.assert_close(s.denoise(cond, other, d), s.denoise(cond, zt, d), atol=1e-5, rtol=1e-5)
    mask = s.conditioning_mask(zt.shape)
    t = model.model.process_timestep(torch.tensor([0.7]), x=zt, denoise_mask=mask)
    assert t.shape == (1, 2) and t[0, 0] == 0 and abs(float(t[0, 1]) - 0.7) < 1e-6

    x = photo.clone().requires_grad_(True)
    last = s.num_vae_layers - 1
    f = s.features(x, d, FeatureRequest(blocks=frozenset({1}), vae_layers=frozenset({last})), clean=x0)
    (f.blocks[1].pow(2).mean() + f.vae[last].pow(2).mean()).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    maps = block_pca_maps(s, photo, "0,1", seed=0, timestep=0.5)
    for m in maps.values():  # 64 / (16 x 2) = 2 x 2 tokens per latent frame
        assert m.shape == (3, 64, 64) and torch.equal(m[:, ::32, ::32].repeat_interleave(32, 1)
                                                      .repeat_interleave(32, 2), m)
    after = list(model.model.state_dict(keep_vars=True).items())
    assert all(torch.equal(v, b) and v.requires_grad == rg for (_, v), (_, b, rg) in zip(after, before))

    _, _, wan21_vae = experts
    with pytest.raises(ValueError, match="vae: the connected VAE has 16 latent channels but Wan 2.2 TI2V-5B needs 48"):
        native.native_surrogate(model=model, vae=wan21_vae)
