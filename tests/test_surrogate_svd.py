"""SVD surrogate adapter: conditioning equals the real diffusers pipeline, early exit, features, loading, loop.

All models are tiny random-weight instances of the real diffusers / transformers classes (CPU, seconds).
Numeric comparisons state their tolerances: float32 kernels differ between CPUs (SIMD width, thread count)
by a few ulp, so values that go through a network are compared with atol/rtol of about 1e-4 of their scale,
never with ``allclose``'s default atol of 1e-8.
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
from anti_i2v.protect import ProtectConfig, default_target, protect, resize_to
from anti_i2v.surrogates import FeatureRequest, SurrogateError, load_surrogate, tiny_surrogate
from anti_i2v.surrogates.base import NoiseDraw
from anti_i2v.surrogates.svd import SVDSurrogate, antialiased_resize, aspect_working_size


def _close(a, b, rel=1e-4):
    """Equal up to ``rel`` of the reference's scale (absolute) and ``rel`` relative: holds on any CPU."""
    scale = max(1.0, float(b.detach().abs().max()))
    torch.testing.assert_close(a, b, atol=rel * scale, rtol=rel)


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
        _close(antialiased_resize(x, (224, 224)), ref, rel=1e-5)


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
    _close(mine["sample"][:, :, :4], captured["sample"][:, :, :4], rel=1e-5)
    _close(mine["sample"][:, :, 4:], captured["sample"][:, :, 4:])  # through the VAE (measured 1.3e-6)
    assert captured["sample"][:, :, 4:].abs().max() > 1e-3  # the conditioning is not trivially zero
    _close(mine["encoder_hidden_states"], captured["encoder_hidden_states"])
    assert torch.equal(mine["added_time_ids"], captured["added_time_ids"])
    _close(mine["timestep"], captured["timestep"].expand(1).float(), rel=1e-6)
    # a different augmentation noise changes the conditioning latent (the test can fail; measured 0.04)
    other = svd.denoiser_inputs(image, latents, sched.sigmas[:1], sched.timesteps[:1], torch.zeros_like(aug))
    assert (other["sample"][:, :, 4:] - captured["sample"][:, :, 4:]).abs().max() > 1e-2


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
    assert torch.equal(svd.clean_latent(svd.encode(_image())), x0)  # the still video of the photo
    noisy = sched.add_noise(x0, draw.noise, draw.timestep)
    _close(noisy, x0 + draw.extra["sigma"].view(1, 1, 1, 1, 1) * draw.noise, rel=1e-6)
    _close(f.noisy, noisy, rel=1e-6)  # the z_t the U-Net saw
    x0_hat = sched.step(f.target, draw.timestep[0], noisy, return_dict=False)[1]
    # c_skip x + c_out v cancels terms of size sigma * |eps|: tolerance relative to that (measured 4e-8)
    torch.testing.assert_close(x0_hat, x0, atol=1e-5 * float(noisy.abs().max()), rtol=0)
    assert f.output.shape == f.target.shape == draw.noise.shape


# ----------------------------------------------------------------------------- 2. early exit
def test_early_exit_same_gradient_and_stops(svd):
    full = _sibling(svd, early_exit=False)
    draw = svd.sample_noise(1, torch.Generator().manual_seed(1))
    mid = svd.block_names.index("mid_block")
    req = FeatureRequest(blocks=frozenset({mid}))
    calls = []
    handle = svd.unet.up_blocks[-1].register_forward_hook(lambda *a: calls.append(1))
    grads, feats = [], []
    try:
        for s in (svd, full):
            img = _image().requires_grad_(True)
            f = s.features(img, draw, req)
            loss = f.blocks[mid].float().pow(2).mean()
            grads.append(torch.autograd.grad(loss, img)[0])
            feats.append(f.blocks[mid].detach())
            calls.append("|")
    finally:
        handle.remove()
    assert calls == ["|", 1, "|"]  # last block never ran with early exit, ran once without
    _close(feats[0], feats[1], rel=1e-5)  # the same kernels up to the block
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[0], grads[1], atol=1e-5 * float(grads[1].abs().max()), rtol=1e-5)


# ----------------------------------------------------------------------------- 3. features
TINY_BLOCKS = [
    "conv_in", "down_blocks.0.attentions.0", "down_blocks.0.downsamplers.0", "down_blocks.1.resnets.0",
    "mid_block", "up_blocks.0.resnets.0", "up_blocks.0.upsamplers.0", "up_blocks.1.attentions.0",
    "up_blocks.1.attentions.1",
]


def test_features_shapes_keys_and_ranges(svd):
    assert svd.block_names == TINY_BLOCKS  # ComfyUI's input_blocks 0-3, middle_block, output_blocks 0-3
    assert all(svd.unet.get_submodule(name) is mod for name, mod in svd.denoiser_blocks())
    assert svd.num_down_blocks == 4
    assert svd.vae_layer_names == [f"encoder.down_blocks.{i}" for i in range(4)] + ["encoder.mid_block"]
    draw = svd.sample_noise(2, torch.Generator().manual_seed(0))
    assert draw.noise.shape == (2, 4, 4, 8, 8) and draw.extra["aug_noise"].shape == (2, 3, 64, 64)
    req = FeatureRequest(blocks=frozenset({0, 2, 6, 8}), vae_layers=frozenset({0, 4}), need_latent=True)
    with torch.no_grad():
        f = svd.features(_image(size=(64, 64)).expand(2, -1, -1, -1), draw, req)
    assert set(f.blocks) == {0, 2, 6, 8} and set(f.vae) == {0, 4}
    assert f.blocks[0].shape == f.blocks[8].shape == (2 * 4, 32, 8, 8)
    assert f.blocks[2].shape == (2 * 4, 32, 4, 4) and f.blocks[6].shape == (2 * 4, 64, 8, 8)
    assert f.vae[0].shape == (2, 32, 32, 32) and f.vae[4].shape == (2, 32, 8, 8)
    assert f.latent.shape == (2, 4, 8, 8) and f.output is None
    assert f.noisy.shape == draw.noise.shape
    with pytest.raises(SurrogateError, match=r"valid indices are 0-8"):
        svd.features(_image(), draw, FeatureRequest(blocks=frozenset({9})))
    with pytest.raises(SurrogateError, match=r"VAE-encoder layer index 7.*0-4"):
        svd.features(_image(), draw, FeatureRequest(vae_layers=frozenset({7})))
    with pytest.raises(SurrogateError, match=r"does not fit an image batch of 1 at 64x128.*size=\(64, 128\)"):
        svd.features(_image(size=(64, 128)), svd.sample_noise(1, torch.Generator()), FeatureRequest(blocks=frozenset({0})))


def test_sample_noise_size_and_non_square_images(svd):
    """``size=`` draws for the images' size; a non-square image runs with a draw of its size."""
    a = svd.sample_noise(1, torch.Generator().manual_seed(4))
    b = svd.sample_noise(1, torch.Generator().manual_seed(4), size=(64, 64))
    assert torch.equal(a.noise, b.noise) and torch.equal(a.extra["aug_noise"], b.extra["aug_noise"])
    wide = svd.sample_noise(2, torch.Generator().manual_seed(4), size=(64, 128))
    assert wide.noise.shape == (2, 4, 4, 8, 16) and wide.extra["aug_noise"].shape == (2, 3, 64, 128)
    with torch.no_grad():
        f = svd.features(_image(size=(64, 128)).expand(2, -1, -1, -1), wide, FeatureRequest(need_output=True))
    assert f.output.shape == wide.noise.shape and torch.isfinite(f.output).all()
    with pytest.raises(SurrogateError, match="multiples of 8"):
        svd.sample_noise(1, torch.Generator(), size=(60, 64))


def test_working_size_keeps_the_aspect_ratio():
    s = SVDSurrogate.tiny(seed=0, working_size=None)
    assert s.working_size(1080, 1920) == (576, 1024)
    assert s.working_size(1920, 1080) == (1024, 576)  # a portrait stays a portrait
    assert s.working_size(576, 1024) == s.working_size(*s.default_size) == (576, 1024)
    assert s.working_size(512, 512) == (768, 768)
    for hw in [(4000, 3000), (333, 517), (37, 53), (1200, 300)]:
        h, w = s.working_size(*hw)
        assert h % 64 == 0 and w % 64 == 0
        assert abs(h * w / (576 * 1024) - 1) < 0.2
        assert abs((h / w) / (hw[0] / hw[1]) - 1) < 0.15
    assert aspect_working_size(10, 10, 64 * 64, 64) == (64, 64)
    assert SVDSurrogate.tiny(seed=0).working_size(1080, 1920) == (64, 64)  # working_size= wins
    with pytest.raises(SurrogateError, match="positive"):
        s.working_size(0, 10)


def test_same_noisy_latent_for_both_passes(svd):
    """With the shared clean latent, passes on different images see one z_t; without it, each its own."""
    draw = svd.sample_noise(1, torch.Generator().manual_seed(6))
    req = FeatureRequest(blocks=frozenset({1, 7}))
    a, b = _image(seed=1), _image(seed=2)
    with torch.no_grad():
        x0 = svd.clean_latent(svd.encode_image(a))
    img = b.clone().requires_grad_(True)
    fa = svd.features(a, draw, req, clean=x0)
    fb = svd.features(img, draw, req, clean=x0)
    assert torch.equal(fa.noisy, fb.noisy)
    assert not fb.noisy.requires_grad  # the perturbation reaches the U-Net only through the conditioning
    (g,) = torch.autograd.grad(fb.blocks[7].pow(2).mean(), img)
    assert torch.isfinite(g).all() and g.abs().sum() > 0
    with torch.no_grad():
        oa = svd.features(a, draw, req)
        ob = svd.features(b, draw, req)
    assert not torch.equal(oa.noisy, ob.noisy)
    assert torch.equal(oa.noisy, fa.noisy)  # a's own z_t is the shared one
    own = svd.features(b, draw, FeatureRequest(blocks=frozenset({1}), own_latent=True), clean=x0)
    assert torch.equal(own.noisy, ob.noisy)  # AdvDM: the image's own z_t even when clean= is passed


def test_block_shapes_match_and_default_objective(svd):
    shapes = svd.block_shapes()
    assert len(shapes) == svd.num_blocks == 9
    assert svd.block_shapes_match(3, 4) and svd.block_shapes_match(4, 5)  # 64 ch at 1/2 size
    assert svd.block_shapes_match(0, 8) and svd.block_shapes_match(1, 7)  # mirrors at the full latent size
    assert not svd.block_shapes_match(2, 6)  # downsampler vs upsampler: not a mirror of one shape
    assert not svd.block_shapes_match(0, 4)
    with pytest.raises(SurrogateError, match="0-8"):
        svd.block_shapes_match(0, 9)
    obj = svd.default_objective()
    assert obj.notes == ()
    ira = [t for t in obj.terms if isinstance(t, IRALoss)]
    irc = [t for t in obj.terms if isinstance(t, IRCLoss)]
    assert len(ira) == 1 and ira[0].blocks == (4,) and ira[0].vae_layers == (3, 4)  # middle block
    assert len(irc) == 1 and irc[0].pairs == ((1, 7),)  # down_blocks.0.attentions.0 <-> up_blocks.1.attentions.0
    i, j = irc[0].pairs[0]
    assert i < svd.num_down_blocks < j
    draw = svd.sample_noise(1, torch.Generator().manual_seed(3))
    img = _image().requires_grad_(True)
    with torch.no_grad():
        tgt_cond = svd.encode_image(_image(seed=9), obj.target_request().vae_layers)
        x0 = svd.clean_latent(svd.encode_image(_image()))
        tgt = svd.features(None, draw, obj.target_request(), clean=x0, cond=tgt_cond)
    adv = svd.features(img, draw, obj.request(), clean=x0)
    assert adv.blocks[i].shape == adv.blocks[j].shape == (4, 32, 8, 8)  # equal shapes at the working size
    total, terms = obj.evaluate(adv, tgt)
    assert torch.isfinite(total) and set(terms) == {"ira", "irc"} and terms["irc"] > 0
    (g,) = torch.autograd.grad(total, img)
    assert torch.isfinite(g).all() and g.abs().sum() > 0


def test_default_objective_without_a_mirror_pair_says_so(svd, monkeypatch):
    monkeypatch.setattr(SVDSurrogate, "block_shapes_match", lambda self, i, j: i == j)
    obj = svd.default_objective()
    assert not any(isinstance(t, IRCLoss) for t in obj.terms)
    assert len(obj.notes) == 1 and "IRC left out" in obj.notes[0]


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
        mine, theirs = svd.features(_image(), draw, req).output, loaded.features(_image(), draw, req).output
    # equal weights, but separately allocated modules: kernels may take other SIMD paths (seen: 1.65e-6 apart)
    _close(theirs, mine)


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


def _objective_value(s, obj, image, clean_photo, seeds=range(4)) -> float:
    """The objective at fixed draws (z_t from the clean photo, as the loop builds it), averaged over draws.

    The loop's own history mixes draws (sigma is random per iteration), so it is no measure of progress.
    """
    work = s.working_size(*image.shape[-2:])
    with torch.no_grad():
        x0 = s.clean_latent(s.encode_image(resize_to(clean_photo, work)))
        total = 0.0
        for seed in seeds:
            draw = s.sample_noise(1, torch.Generator().manual_seed(seed), size=work)
            tgt = s.features(default_target(*work), draw, obj.target_request(), clean=x0)
            adv = s.features(resize_to(image, work), draw, obj.request(), clean=x0)
            total += float(obj.evaluate(adv, tgt)[0])
    return total / len(seeds)


def test_protect_run_improves_and_leaves_models_alone(svd, photo):
    before = _snapshot(svd.modules())
    obj = svd.default_objective()
    res = protect(photo, svd, obj, DSPConfig(eps=16, dct_block=8), ProtectConfig(steps=4, step_size=4.0, seed=0))
    assert res.protected.shape == photo.shape
    assert _objective_value(svd, obj, res.protected, photo) < _objective_value(svd, obj, photo, photo)
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


def test_generate_at_the_attack_size(svd, photo, monkeypatch):
    """The video is made at working_size(H, W) of the photo: the size protect() attacks it at."""
    seen = []

    def working_size(h, w):
        seen.append((h, w))
        return (64, 128)

    monkeypatch.setattr(svd, "working_size", working_size)
    v = svd.generate(photo, num_inference_steps=1, num_frames=2)
    assert seen == [tuple(photo.shape[-2:])] and v.shape == (2, 3, 64, 128)
    assert svd.generate(photo, num_inference_steps=1, num_frames=2, size=(128, 64)).shape == (2, 3, 128, 64)


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
    torch.testing.assert_close(grads[0], grads[1], atol=1e-4 * float(grads[0].abs().max()), rtol=1e-4)
    assert not any(getattr(m, "gradient_checkpointing", False) for m in svd.unet.modules())


def test_registry_tiny_and_bad_arguments():
    s = tiny_surrogate("svd", seed=1)
    assert isinstance(s, SVDSurrogate) and s.num_frames == 4 and s.working_size(37, 53) == (64, 64)
    assert s.describe()["family"] == "svd"
    with pytest.raises(SurrogateError, match="sigma_sampling"):
        SVDSurrogate.tiny(sigma_sampling="uniform")
    ln = SVDSurrogate.tiny(sigma_sampling="lognormal", p_mean=0.0, p_std=0.5)
    d = ln.sample_noise(3, torch.Generator().manual_seed(0))
    torch.testing.assert_close(d.timestep, 0.25 * d.extra["sigma"].log(), atol=1e-6, rtol=1e-6)
    bad = NoiseDraw(timestep=d.timestep[:1], noise=d.noise[:1])
    with pytest.raises(SurrogateError, match="aug_noise"):
        ln.features(_image(), bad, FeatureRequest(blocks=frozenset({0})))
