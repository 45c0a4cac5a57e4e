"""SVD surrogate adapter: conditioning equals the real diffusers pipeline, early exit, features, loading, loop.

All models are tiny random-weight instances of the real diffusers / transformers classes (CPU, seconds).
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from diffusers import EulerDiscreteScheduler
from diffusers.pipelines.stable_video_diffusion.pipeline_stable_video_diffusion import _resize_with_antialiasing
from PIL import Image

from anti_i2v.dsp import DSPConfig
from anti_i2v.losses import IRALoss, IRCLoss
from anti_i2v.protect import ProtectConfig, protect
from anti_i2v.surrogates import FeatureRequest, SurrogateError, load_surrogate, tiny_surrogate
from anti_i2v.surrogates.base import NoiseDraw
from anti_i2v.surrogates.svd import SVDSurrogate, antialiased_resize


@pytest.fixture(scope="module")
def svd() -> SVDSurrogate:
    return SVDSurrogate.tiny(seed=0)


def _sibling(s: SVDSurrogate, **kw) -> SVDSurrogate:
    """Another adapter over the same modules (different flags)."""
    return SVDSurrogate(unet=s.unet, vae=s.vae, image_encoder=s.image_encoder, scheduler=s.scheduler,
                        num_frames=s.num_frames, working_size=(64, 64), **kw)


def _image(seed=3, size=(64, 64)) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, *size, generator=g)


# ----------------------------------------------------------------------------- 1. pipeline equivalence
def test_antialiased_resize_matches_pipeline():
    g = torch.Generator().manual_seed(0)
    for shape in [(2, 3, 300, 517), (1, 3, 64, 64), (1, 3, 230, 90)]:
        x = torch.rand(shape, generator=g) * 2 - 1
        ref = _resize_with_antialiasing(x, (224, 224))
        assert torch.allclose(antialiased_resize(x, (224, 224)), ref, atol=1e-6, rtol=0)


def test_denoiser_inputs_match_real_pipeline(svd):
    """One pipeline step, CFG off (guidance 1), PIL input at the working size (no resize on the VAE path).

    The pipeline encodes the VAE with the posterior's mode, as the adapter does, so nothing is random there; the
    augmentation noise and the initial latents are redrawn from a generator with the pipeline's seed and order.
    """
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    pil = Image.fromarray(arr)
    image = torch.from_numpy(arr.astype(np.float32) / 255.0).permute(2, 0, 1).unsqueeze(0)
    captured = {}

    def grab(_m, args, kwargs):
        captured["sample"] = args[0].clone()
        captured["timestep"] = args[1].clone()
        captured["encoder_hidden_states"] = kwargs["encoder_hidden_states"].clone()
        captured["added_time_ids"] = kwargs["added_time_ids"].clone()

    handle = svd.unet.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        svd.pipeline()(pil, height=64, width=64, num_frames=svd.num_frames, num_inference_steps=1,
                       min_guidance_scale=1.0, max_guidance_scale=1.0, fps=svd.fps,
                       motion_bucket_id=svd.motion_bucket_id, noise_aug_strength=svd.noise_aug_strength,
                       generator=torch.Generator().manual_seed(123), output_type="latent")
    finally:
        handle.remove()

    sched = EulerDiscreteScheduler.from_config(svd.scheduler.config)
    sched.set_timesteps(1)
    gen = torch.Generator().manual_seed(123)
    aug = torch.randn((1, 3, 64, 64), generator=gen)  # pipeline: augmentation noise first
    latents = torch.randn((1, svd.num_frames, 4, 8, 8), generator=gen) * sched.init_noise_sigma
    mine = svd.denoiser_inputs(image, latents, sched.sigmas[:1], sched.timesteps[:1], aug)

    assert set(mine) == set(captured)
    assert mine["sample"].shape == captured["sample"].shape == (1, svd.num_frames, 8, 8, 8)
    # noisy part (c_in * x) and image-latent part separately, then everything fed to the U-Net
    assert torch.allclose(mine["sample"][:, :, :4], captured["sample"][:, :, :4], atol=1e-6)
    assert torch.allclose(mine["sample"][:, :, 4:], captured["sample"][:, :, 4:], atol=1e-5)
    assert captured["sample"][:, :, 4:].abs().max() > 1e-3  # the conditioning is not trivially zero
    assert torch.allclose(mine["encoder_hidden_states"], captured["encoder_hidden_states"], atol=1e-5)
    assert torch.equal(mine["added_time_ids"], captured["added_time_ids"])
    assert torch.allclose(mine["timestep"], captured["timestep"].expand(1).float())
    # a different augmentation noise changes the conditioning latent (the test can fail)
    other = svd.denoiser_inputs(image, latents, sched.sigmas[:1], sched.timesteps[:1], torch.zeros_like(aug))
    assert not torch.allclose(other["sample"][:, :, 4:], captured["sample"][:, :, 4:], atol=1e-5)


def test_forward_process_and_v_target_match_scheduler(svd):
    """x = x0 + sigma eps is the scheduler's add_noise, and the target is the v the Euler step inverts to x0."""
    gen = torch.Generator().manual_seed(5)
    draw = svd.sample_noise(1, gen)
    sched = EulerDiscreteScheduler.from_config(svd.scheduler.config)
    sched.set_timesteps(svd.sigma_steps)
    assert bool((sched.timesteps == draw.timestep[0]).any())  # the scheduler's own timestep
    with torch.no_grad():
        f = svd.features(_image(), draw, FeatureRequest(need_output=True, need_latent=True))
    x0 = f.latent.unsqueeze(1).expand(-1, svd.num_frames, -1, -1, -1)
    noisy = sched.add_noise(x0, draw.noise, draw.timestep)
    assert torch.allclose(noisy, x0 + draw.extra["sigma"].view(1, 1, 1, 1, 1) * draw.noise, atol=1e-6)
    x0_hat = sched.step(f.target, draw.timestep[0], noisy, return_dict=False)[1]
    assert torch.allclose(x0_hat, x0, atol=1e-5)
    assert f.output.shape == f.target.shape == draw.noise.shape


# ----------------------------------------------------------------------------- 2. early exit
def test_early_exit_same_gradient_and_stops(svd):
    full = _sibling(svd, early_exit=False)
    draw = svd.sample_noise(1, torch.Generator().manual_seed(1))
    req = FeatureRequest(blocks=frozenset({2}))  # mid_block
    calls = []
    handle = svd.unet.up_blocks[-1].register_forward_hook(lambda *a: calls.append(1))
    grads, feats = [], []
    try:
        for s in (svd, full):
            img = _image().requires_grad_(True)
            f = s.features(img, draw, req)
            loss = f.blocks[2].float().pow(2).mean()
            grads.append(torch.autograd.grad(loss, img)[0])
            feats.append(f.blocks[2].detach())
            calls.append("|")
    finally:
        handle.remove()
    assert calls == ["|", 1, "|"]  # last block never ran with early exit, ran once without
    assert torch.allclose(feats[0], feats[1])
    assert grads[0].abs().sum() > 0
    assert torch.allclose(grads[0], grads[1], atol=1e-7, rtol=1e-5)


# ----------------------------------------------------------------------------- 3. features
def test_features_shapes_keys_and_ranges(svd):
    assert svd.block_names == ["down_blocks.0", "down_blocks.1", "mid_block", "up_blocks.0", "up_blocks.1"]
    assert svd.vae_layer_names == [f"encoder.down_blocks.{i}" for i in range(4)] + ["encoder.mid_block"]
    draw = svd.sample_noise(2, torch.Generator().manual_seed(0))
    assert draw.noise.shape == (2, 4, 4, 8, 8) and draw.extra["aug_noise"].shape == (2, 3, 64, 64)
    req = FeatureRequest(blocks=frozenset({0, 3}), vae_layers=frozenset({0, 4}), need_latent=True)
    with torch.no_grad():
        f = svd.features(_image(size=(64, 64)).expand(2, -1, -1, -1), draw, req)
    assert set(f.blocks) == {0, 3} and set(f.vae) == {0, 4}
    assert f.blocks[0].shape == (2 * 4, 32, 4, 4) and f.blocks[3].shape == (2 * 4, 64, 8, 8)
    assert f.vae[0].shape == (2, 32, 32, 32) and f.vae[4].shape == (2, 32, 8, 8)
    assert f.latent.shape == (2, 4, 8, 8) and f.output is None
    with pytest.raises(SurrogateError, match=r"valid indices are 0-4"):
        svd.features(_image(), draw, FeatureRequest(blocks=frozenset({5})))
    with pytest.raises(SurrogateError, match=r"VAE-encoder layer index 7.*0-4"):
        svd.features(_image(), draw, FeatureRequest(vae_layers=frozenset({7})))
    with pytest.raises(SurrogateError, match="does not fit an image batch of 1 at 64x128"):
        svd.features(_image(size=(64, 128)), svd.sample_noise(1, torch.Generator()), FeatureRequest(blocks=frozenset({0})))


def test_block_shapes_match_and_default_objective(svd):
    assert svd.block_shapes_match(1, 2)  # down_blocks.1 and mid_block: 64 ch at 1/2 latent size
    assert not svd.block_shapes_match(0, 3)
    assert not svd.block_shapes_match(3, 4)
    with pytest.raises(SurrogateError, match="0-4"):
        svd.block_shapes_match(0, 9)
    obj = svd.default_objective()
    assert not any(isinstance(t, IRCLoss) for t in obj.terms)  # shallow 0 / deep 3 differ in shape
    assert isinstance(obj.terms[0], IRALoss) and obj.terms[0].blocks == (3,)


# ----------------------------------------------------------------------------- 4. loading
@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    return SVDSurrogate.save_tiny(tmp_path_factory.mktemp("svd") / "tiny_svd", seed=0)


def test_from_pretrained_loads_equal_weights(svd, saved):
    assert (saved / "model_index.json").is_file()
    assert list((saved / "unet").glob("*.safetensors"))
    loaded = load_surrogate("svd", saved, num_frames=4, working_size=(64, 64))
    assert isinstance(loaded, SVDSurrogate) and loaded.folder == str(saved)
    for a, b in zip(svd.modules(), loaded.modules()):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert loaded.scheduler.config.prediction_type == "v_prediction"
    assert loaded.image_mean == svd.image_mean
    draw = svd.sample_noise(1, torch.Generator().manual_seed(0))
    req = FeatureRequest(need_output=True)
    with torch.no_grad():
        assert torch.allclose(svd.features(_image(), draw, req).output, loaded.features(_image(), draw, req).output)


def test_from_pretrained_errors(saved, tmp_path):
    with pytest.raises(SurrogateError, match="does not exist"):
        SVDSurrogate.from_pretrained(tmp_path / "nope")
    broken = tmp_path / "broken"
    shutil.copytree(saved, broken)
    shutil.rmtree(broken / "image_encoder")
    with pytest.raises(SurrogateError, match=r"broken.*'image_encoder'.*CLIPVisionModelWithProjection"):
        SVDSurrogate.from_pretrained(broken)
    shutil.copytree(saved / "image_encoder", broken / "image_encoder")
    for f in (broken / "unet").glob("*.safetensors"):
        f.unlink()
    with pytest.raises(SurrogateError, match=r"broken.*'unet'"):
        SVDSurrogate.from_pretrained(broken)
    with pytest.raises(SurrogateError, match="prompt_embeds"):
        SVDSurrogate.from_pretrained(saved, prompt_embeds=torch.zeros(1, 2, 3))


# ----------------------------------------------------------------------------- 5. loop, generate, frames, dtypes
def _snapshot(modules):
    weights = [{k: v.clone() for k, v in m.state_dict().items()} for m in modules]
    flags = [[p.requires_grad for p in m.parameters()] for m in modules]
    hooks = [sum(len(x._forward_hooks) + len(x._forward_pre_hooks) for x in m.modules()) for m in modules]
    return weights, flags, hooks


def test_protect_run_improves_and_leaves_models_alone(svd, photo):
    before = _snapshot(svd.modules())
    res = protect(photo, svd, svd.default_objective(), DSPConfig(eps=16, dct_block=8),
                  ProtectConfig(steps=4, step_size=4.0, seed=0))
    assert res.protected.shape == photo.shape
    assert res.history[-1]["loss"] < res.history[0]["loss"]
    assert max(res.linf) <= 16.0 + 1e-3
    after = _snapshot(svd.modules())
    for wa, wb in zip(before[0], after[0]):
        assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert before[1] == after[1] and before[2] == after[2]


def test_generate_video(svd, photo):
    v = svd.generate(photo, num_inference_steps=2, seed=1)
    assert v.shape == (4, 3, 64, 64) and v.dtype == torch.float32
    assert torch.isfinite(v).all() and v.min() >= 0 and v.max() <= 1
    assert torch.equal(v, svd.generate(photo, num_inference_steps=2, seed=1))
    assert svd.generate(photo[0], num_inference_steps=1, num_frames=2).shape == (2, 3, 64, 64)
    with pytest.raises(SurrogateError, match="image must have shape"):
        svd.generate(torch.rand(2, 3, 8, 8))


def test_num_frames_is_read_at_forward_time(svd):
    old = svd.num_frames
    try:
        svd.num_frames = 2
        draw = svd.sample_noise(1, torch.Generator().manual_seed(0))
        assert draw.noise.shape[1] == 2
        with torch.no_grad():
            f = svd.features(_image(), draw, FeatureRequest(blocks=frozenset({0}), need_output=True))
        assert f.blocks[0].shape[0] == 2 and f.output.shape[1] == 2
        svd.num_frames = 3
        with pytest.raises(SurrogateError, match="num_frames=3"):
            svd.features(_image(), draw, FeatureRequest(blocks=frozenset({0})))
    finally:
        svd.num_frames = old


def test_bf16_forward():
    s = SVDSurrogate.tiny(seed=0, dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for m in s.modules() for p in m.parameters())
    draw = s.sample_noise(1, torch.Generator().manual_seed(0))
    img = _image().requires_grad_(True)
    f = s.features(img, draw, FeatureRequest(blocks=frozenset({1}), need_output=True))
    assert f.blocks[1].dtype == torch.bfloat16 and f.output.dtype == torch.float32
    assert torch.isfinite(f.output).all()
    g = torch.autograd.grad(f.output.pow(2).mean(), img)[0]
    assert torch.isfinite(g).all() and g.abs().sum() > 0


def test_gradient_checkpointing_same_gradient_and_restores_flags(svd):
    ck = _sibling(svd, gradient_checkpointing=True)
    draw = svd.sample_noise(1, torch.Generator().manual_seed(2))
    req = FeatureRequest(blocks=frozenset({1}), need_output=True)
    seen = []
    handle = svd.unet.down_blocks[0].register_forward_pre_hook(
        lambda m, a: seen.append(m.gradient_checkpointing))
    grads = []
    try:
        for s in (svd, ck):
            img = _image().requires_grad_(True)
            f = s.features(img, draw, req)
            loss = f.output.pow(2).mean() + f.blocks[1].float().pow(2).mean()
            grads.append(torch.autograd.grad(loss, img)[0])
    finally:
        handle.remove()
    assert seen[0] is False and seen[-1] is True  # checkpointing was really on for the second call
    assert torch.allclose(grads[0], grads[1], atol=1e-6, rtol=1e-4)
    assert not any(getattr(m, "gradient_checkpointing", False) for m in svd.unet.modules())


def test_registry_tiny_and_bad_arguments():
    s = tiny_surrogate("svd", seed=1)
    assert isinstance(s, SVDSurrogate) and s.num_frames == 4 and s.working_size(37, 53) == (64, 64)
    assert s.describe()["family"] == "svd"
    with pytest.raises(SurrogateError, match="sigma_sampling"):
        SVDSurrogate.tiny(sigma_sampling="uniform")
    ln = SVDSurrogate.tiny(sigma_sampling="lognormal", p_mean=0.0, p_std=0.5)
    d = ln.sample_noise(3, torch.Generator().manual_seed(0))
    assert torch.allclose(d.timestep, 0.25 * d.extra["sigma"].log())
    bad = NoiseDraw(timestep=d.timestep[:1], noise=d.noise[:1])
    with pytest.raises(SurrogateError, match="aug_noise"):
        ln.features(_image(), bad, FeatureRequest(blocks=frozenset({0})))
