"""CogVideoX I2V surrogate on tiny random-weight models of the real diffusers classes (CPU, seconds)."""

from __future__ import annotations

import shutil

import pytest
import torch
from diffusers import CogVideoXDPMScheduler, CogVideoXImageToVideoPipeline

from anti_i2v.protect import ProtectConfig, default_target, protect, resize_to
from anti_i2v.surrogates import FeatureRequest, SurrogateError, tiny_surrogate
from anti_i2v.surrogates.cogvideox import CogVideoXSurrogate

H, W = 32, 48  # the tiny model's native size (8x12 latents x 4)

# Tolerances. The tiny model's latents, noise and predictions are O(1) float32: 1e-5 absolute and relative is
# ~100x float32 rounding of the few ops that differ between two code paths. Gradients w.r.t. the image are
# ~1e-3, so their absolute tolerance is relative to the largest entry (see assert_grad_close).
TOL = {"rtol": 1e-5, "atol": 1e-5}


def req(blocks=(), vae=(), output=False, latent=False, own=False) -> FeatureRequest:
    return FeatureRequest(blocks=frozenset(blocks), vae_layers=frozenset(vae), need_output=output, need_latent=latent,
                          own_latent=own)


def assert_grad_close(a, b, rel=1e-5):
    """Gradients agree to ``rel`` of their largest entry (absolute) and ``rel`` relative."""
    torch.testing.assert_close(a, b, rtol=rel, atol=rel * float(b.abs().max()))


@pytest.fixture(scope="module")
def cog() -> CogVideoXSurrogate:
    return CogVideoXSurrogate.tiny(seed=0)


@pytest.fixture
def image() -> torch.Tensor:
    return torch.rand(1, 3, H, W, generator=torch.Generator().manual_seed(3))


def draw(s, seed=0, batch=1):
    return s.sample_noise(batch, torch.Generator().manual_seed(seed))


def state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_same_state(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def deterministic_posterior(s: CogVideoXSurrogate) -> None:
    """Make the VAE posterior variance vanish (log-variance -30, clamped there by diffusers): sample == mode."""
    conv = s.vae.encoder.conv_out.conv
    c = s.vae.config.latent_channels
    with torch.no_grad():
        conv.weight[c:].zero_()
        conv.bias[c:].fill_(-30.0)


def assert_same_inputs(ours: dict, theirs: dict) -> None:
    assert ours.keys() == theirs.keys()
    for k, a in ours.items():
        b = theirs[k]
        if isinstance(a, torch.Tensor):
            assert a.shape == b.shape and a.dtype == b.dtype, k
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=k)
        elif isinstance(a, tuple):
            assert len(a) == len(b), k
            for x, y in zip(a, b):  # rotary cos/sin tables in [-1, 1], built by the same diffusers helper
                torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-6, msg=k)
        else:
            assert a == b, k


# 5B-I2V layout (learned + rotary positions) and a CogVideoX-1.5 layout (patch_size_t, ofs, inverted VAE scale)
CONFIGS = {
    "5b_i2v": {},
    "v1_5": {
        "patch_size_t": 2,
        "ofs_embed_dim": 16,  # must equal time_embed_dim (512 in 1.5)
        "use_learned_positional_embeddings": False,
        "vae_config": {"invert_scale_latents": True},
    },
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_denoiser_inputs_match_the_diffusers_pipeline(name, image):
    """Test 1: every kwarg the real pipeline feeds the transformer equals ours (same image, latents, timestep).

    The pipeline samples the VAE posterior, this adapter uses its mode: the VAE here has a vanishing posterior
    variance so both are the same latent.
    """
    s = CogVideoXSurrogate.tiny(seed=1, **CONFIGS[name])
    deterministic_posterior(s)
    pipe = CogVideoXImageToVideoPipeline(
        tokenizer=None,
        text_encoder=None,
        vae=s.vae,
        transformer=s.transformer,
        scheduler=CogVideoXDPMScheduler.from_config(s.scheduler.config),
    )
    pipe.set_progress_bar_config(disable=True)
    latents = torch.randn(s.latent_shape(1, H, W), generator=torch.Generator().manual_seed(5))
    captured: dict = {}
    handle = s.transformer.register_forward_pre_hook(lambda m, a, kw: captured.update(kw), with_kwargs=True)
    try:
        pipe(
            image=image,
            prompt_embeds=s.prompt_embeds,
            guidance_scale=1.0,
            num_inference_steps=1,
            num_frames=s.num_frames,
            height=H,
            width=W,
            latents=latents,
            generator=torch.Generator().manual_seed(0),
            output_type="latent",
        )
    finally:
        handle.remove()
    ours = s.denoiser_inputs(image, latents, captured["timestep"])
    assert_same_inputs(ours, captured)
    # the parts that carry the image are really there (not trivially equal zeros)
    c = s.vae.config.latent_channels
    cond = ours["hidden_states"][:, :, c:]
    assert cond[:, 0].abs().sum() > 0 and cond[:, 1:].abs().sum() == 0
    if name == "v1_5":
        assert ours["ofs"] is not None and cond.shape[1] == 4  # 3 latent frames padded to patch_size_t=2
    else:
        assert ours["ofs"] is None and ours["image_rotary_emb"] is not None


def test_forward_process_and_v_target(cog, image):
    """Without clean=, z_t is scheduler.add_noise(the image's own latent repeated); the target is the velocity v."""
    d = draw(cog, seed=2)
    captured = {}
    handle = cog.transformer.register_forward_pre_hook(lambda m, a, kw: captured.update(kw), with_kwargs=True)
    try:
        f = cog.features(image, d, req(output=True))
    finally:
        handle.remove()
    abar = cog.scheduler.alphas_cumprod.double()[d.timestep].float()
    x0 = f.latent.float().expand_as(d.noise)
    c = cog.vae.config.latent_channels
    torch.testing.assert_close(captured["hidden_states"][:, :, :c], abar.sqrt() * x0 + (1 - abar).sqrt() * d.noise,
                               **TOL)
    torch.testing.assert_close(f.noisy, captured["hidden_states"][:, :, :c], rtol=0, atol=0)  # what the model saw
    torch.testing.assert_close(f.target, abar.sqrt() * d.noise - (1 - abar).sqrt() * x0, **TOL)
    assert f.output.shape == f.target.shape == d.noise.shape and f.output.dtype == torch.float32
    # the protocol pieces: clean_latent is the still video of the image's latent
    with torch.no_grad():
        cond = cog.encode(image)
    torch.testing.assert_close(cog.clean_latent(cond), x0, rtol=0, atol=0)
    assert cond.latent.shape == (1, 1, 4, 8, 12)


def test_target_and_adversarial_pass_share_one_zt(cog, image):
    """Anti-I2V's IRA compares eps(z_t, z_xi) with eps(z_t, z_psi): with clean= both passes see the same z_t.

    Two different images with the same draw and the same clean still video get bit-identical z_t (and target),
    while their conditioning (block features) differs; without clean= each image builds its own z_t.
    """
    other = torch.rand(1, 3, H, W, generator=torch.Generator().manual_seed(8))
    d = draw(cog, seed=5)
    with torch.no_grad():
        clean = cog.clean_latent(cog.encode(image))
    r = req(blocks=(1,), output=True)
    with torch.no_grad():
        fa = cog.features(image, d, r, clean=clean)
        fb = cog.features(other, d, r, clean=clean)
        own_a = cog.features(image, d, r)
        own_b = cog.features(other, d, r)
        own_flag = cog.features(other, d, req(blocks=(1,), output=True, own=True), clean=clean)
    assert torch.equal(fa.noisy, fb.noisy) and torch.equal(fa.target, fb.target)
    assert torch.equal(fa.noisy, cog.noisy_latent(clean, d))
    assert (fa.blocks[1] - fb.blocks[1]).abs().max() > 1e-3  # only the conditioning differs, and it does
    # without clean=: own z_t per image (the latents differ by O(1), far above rounding)
    assert (own_a.noisy - own_b.noisy).abs().max() > 1e-2
    # the clean photo's own pass is the shared-z_t pass; own_latent (AdvDM) ignores clean=
    assert torch.equal(own_a.noisy, fa.noisy)
    torch.testing.assert_close(own_a.output, fa.output, rtol=0, atol=0)
    assert torch.equal(own_flag.noisy, own_b.noisy)
    # clean= of batch 1 serves a batch of 2; a clean latent of another size is refused by name
    d2 = draw(cog, seed=5, batch=2)
    with torch.no_grad():
        f2 = cog.features(torch.cat([image, other]), d2, req(blocks=(1,)), clean=clean)
    assert torch.equal(f2.noisy, cog.noisy_latent(clean.expand(2, -1, -1, -1, -1), d2))
    with pytest.raises(SurrogateError, match="draw.noise"):
        cog.features(other, d, req(blocks=(1,)), clean=clean[:, :2])


def test_image_gradient_with_clean_flows_only_through_the_conditioning(cog, image):
    """With clean= the image gradient equals a manual pass on a detached z_t, and differs from the own-z_t one."""
    other = torch.rand(1, 3, H, W, generator=torch.Generator().manual_seed(8))
    d = draw(cog, seed=5)
    with torch.no_grad():
        clean = cog.clean_latent(cog.encode(image))
    r = req(blocks=(1,))

    def grad(**kw):
        x = other.clone().requires_grad_(True)
        f = cog.features(x, d, r, **kw)
        return torch.autograd.grad(f.blocks[1].pow(2).mean(), x)[0]

    g_clean, g_own = grad(clean=clean), grad()
    # manual: conditioning from the image, z_t from the clean latent with no graph at all, full forward
    x = other.clone().requires_grad_(True)
    seen = {}
    handle = cog.transformer.transformer_blocks[1].register_forward_hook(lambda m, a, o: seen.update(o=o[0]))
    try:
        cog.denoise(cog.encode(x), cog.noisy_latent(clean, d).detach(), d)
    finally:
        handle.remove()
    (g_manual,) = torch.autograd.grad(seen["o"].pow(2).mean(), x)
    assert torch.isfinite(g_clean).all() and g_clean.abs().max() > 0
    assert_grad_close(g_clean, g_manual)
    # the own-latent gradient also flows through z_t: clearly different (float noise is ~1e-6 relative)
    assert (g_clean - g_own).norm() > 1e-2 * g_clean.norm()


def test_learned_positional_table_is_sliced_and_restored(cog, image):
    """At 9 frames (3 of the 5 trained latent frames) the first rows of the learned table are added, not sin-cos."""
    pe = cog.transformer.patch_embed
    table, frames_before, before = pe.pos_embedding, pe.sample_frames, state(cog.transformer)
    seen = {}

    def hook(module, args, output):
        seen["args"], seen["out"] = args, output.detach()

    handle = pe.register_forward_hook(hook)
    try:
        cog.features(image, draw(cog), req(blocks=(1,)))  # early exit: leaves the slice by an exception
    finally:
        handle.remove()
    # the same embedding without positions, from the real module
    pe.use_learned_positional_embeddings = pe.use_positional_embeddings = False
    try:
        with torch.no_grad():
            bare = pe(*seen["args"])
    finally:
        pe.use_learned_positional_embeddings = True
    added = seen["out"] - bare
    n = added.shape[1]
    assert n == 226 + 3 * 4 * 6
    torch.testing.assert_close(added[0], table[0, :n], atol=1e-5, rtol=1e-5)
    sincos = pe._get_positional_embeddings(pe.sample_height, pe.sample_width, 9)
    assert (added[0] - sincos[0]).abs().max() > 0.1  # diffusers would have used these
    # nothing changed behind
    assert pe.pos_embedding is table and pe.sample_frames == frames_before
    assert_same_state(before, state(cog.transformer))
    # more frames than the table holds is refused with the limit
    cog.num_frames = 21
    try:
        with pytest.raises(SurrogateError, match="num_frames <= 17"):
            cog.features(image, draw(cog), req(blocks=(0,)))
    finally:
        cog.num_frames = 9
    assert pe.pos_embedding is table


def test_early_exit_same_gradient_and_stops(cog, image):
    """Test 2: gradient of a loss on a middle block is identical with and without the early exit."""
    d = draw(cog, seed=4)
    calls = []
    handle = cog.transformer.transformer_blocks[-1].register_forward_hook(lambda *a: calls.append(1))
    grads = {}
    try:
        for early in (True, False):
            cog.early_exit = early
            calls.clear()
            x = image.clone().requires_grad_(True)
            f = cog.features(x, d, req(blocks=(1,)))
            (grads[early],) = torch.autograd.grad(f.blocks[1].pow(2).mean(), x)
            assert len(calls) == (0 if early else 1)
    finally:
        cog.early_exit = True
        handle.remove()
    assert grads[True].abs().sum() > 0
    assert_grad_close(grads[True], grads[False], rel=1e-6)  # same graph up to block 1


def test_features_shapes_and_index_errors(cog, image):
    """Test 3: keys and shapes of blocks and VAE layers; a bad index names the valid range."""
    assert cog.block_names == [f"transformer_blocks.{i}" for i in range(4)]
    assert cog.vae_layer_names == ["encoder.down_blocks.0", "encoder.down_blocks.1", "encoder.down_blocks.2",
                                   "encoder.mid_block"]
    assert cog.working_size(37, 53) == (H, W)
    f = cog.features(image.expand(2, -1, -1, -1), draw(cog, batch=2), req(blocks=(0, 2), vae=(0, 3), latent=True))
    assert set(f.blocks) == {0, 2} and set(f.vae) == {0, 3}
    for t in f.blocks.values():
        assert t.shape == (2, 3 * 4 * 6, 32)  # 3 latent frames x (8/2)x(12/2) patches, inner dim 2x16
    assert f.vae[0].shape == (2, 8, 1, 16, 24) and f.vae[3].shape == (2, 8, 1, 8, 12)
    assert f.latent.shape == (2, 1, 4, 8, 12) and f.output is None
    with pytest.raises(SurrogateError, match="valid indices are 0-3"):
        cog.features(image, draw(cog), req(blocks=(4,)))
    with pytest.raises(SurrogateError, match="0-3"):
        cog.features(image, draw(cog), req(vae=(7,)))
    with pytest.raises(SurrogateError, match="native size 32x48"):
        cog.features(torch.rand(1, 3, 32, 32), draw(cog), req(latent=True))


def test_sample_noise_size_keyword(cog):
    """sample_noise(batch, gen, size=working size) draws at that size; the default is the working size."""
    a = cog.sample_noise(2, torch.Generator().manual_seed(0))
    b = cog.sample_noise(2, torch.Generator().manual_seed(0), size=cog.working_size(37, 53))
    assert torch.equal(a.timestep, b.timestep) and torch.equal(a.noise, b.noise)
    assert a.noise.shape == (2, 3, 4, 8, 12) and a.noise.dtype == torch.float32
    with pytest.raises(SurrogateError, match="native size 32x48"):
        cog.sample_noise(1, torch.Generator(), size=(32, 32))
    free = CogVideoXSurrogate.tiny(seed=0, use_learned_positional_embeddings=False, working_size=(32, 32))
    assert free.sample_noise(1, torch.Generator(), size=(16, 24)).noise.shape == (1, 3, 4, 4, 6)
    with pytest.raises(SurrogateError, match="multiples of 8"):
        free.sample_noise(1, torch.Generator(), size=(20, 24))


def test_save_tiny_from_pretrained_roundtrip_and_errors(tmp_path, cog):
    """Test 4: a folder written by save_tiny loads equal weights and prompt embeddings; missing parts are named."""
    folder = CogVideoXSurrogate.save_tiny(tmp_path / "cog", seed=0)
    loaded = CogVideoXSurrogate.from_pretrained(folder, num_frames=9)
    assert_same_state(state(cog.transformer), state(loaded.transformer))
    assert_same_state(state(cog.vae), state(loaded.vae))
    assert torch.equal(loaded.prompt_embeds, cog.prompt_embeds)
    assert loaded.prompt_source.endswith("prompt_embeds.safetensors")
    assert loaded.scheduler.config.prediction_type == "v_prediction"
    assert loaded.native_size == (H, W)
    assert CogVideoXSurrogate.from_pretrained(folder).num_frames == 17  # default: the trained frame count

    with pytest.raises(SurrogateError, match="does not exist"):
        CogVideoXSurrogate.from_pretrained(tmp_path / "nowhere")
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    shutil.rmtree(broken / "vae")
    with pytest.raises(SurrogateError, match=r"broken.*'vae'"):
        CogVideoXSurrogate.from_pretrained(broken)
    shutil.copytree(folder / "vae", broken / "vae")
    for f in (broken / "transformer").glob("*.safetensors"):
        f.unlink()
    with pytest.raises(SurrogateError, match="'transformer'"):
        CogVideoXSurrogate.from_pretrained(broken)


def test_protect_improves_objective_and_keeps_models():
    """Test 5a: a short protect run lowers the default objective; weights, flags and hooks are unchanged."""
    s = tiny_surrogate("cogvideox", seed=0)
    photo = torch.rand(1, 3, 37, 53, generator=torch.Generator().manual_seed(1))
    mods = s.modules()
    weights = [state(m) for m in mods]
    flags = [[p.requires_grad for p in m.parameters()] for m in mods]
    hooks = [sum(len(x._forward_hooks) + len(x._forward_pre_hooks) for x in m.modules()) for m in mods]
    obj = s.default_objective()
    assert [t.name for t in obj.terms] == ["ira", "irc"]
    res = protect(photo, s, obj, config=ProtectConfig(steps=4, step_size=2.0, seed=0))
    losses = [r["loss"] for r in res.history]
    assert len(losses) == 4 and losses[-1] < losses[0], losses
    assert res.protected.shape == photo.shape and max(res.linf) <= 16.0 + 1e-3
    for m, w, fl, hk in zip(mods, weights, flags, hooks):
        assert_same_state(w, state(m))
        assert [p.requires_grad for p in m.parameters()] == fl
        assert sum(len(x._forward_hooks) + len(x._forward_pre_hooks) for x in m.modules()) == hk
    # under one fixed draw the protected photo scores lower than the original (not just a lucky timestep)
    work = s.working_size(37, 53)
    d = draw(s, seed=11)
    with torch.no_grad():
        tgt = s.features(default_target(*work), d, obj.target_request())
        before, _ = obj.evaluate(s.features(resize_to(photo, work), d, obj.request()), tgt)
        after, _ = obj.evaluate(s.features(resize_to(res.protected, work), d, obj.request()), tgt)
    assert after < before, (float(before), float(after))


def test_generate_video(cog, image):
    """Test 5b: generate() runs the real pipeline: a finite (F, 3, h, w) video in [0, 1], same for a seed."""
    before = state(cog.transformer)
    table = cog.transformer.patch_embed.pos_embedding
    video = cog.generate(image[0], num_inference_steps=1, seed=0)
    assert video.shape == (9, 3, H, W) and torch.isfinite(video).all()
    assert video.min() >= 0 and video.max() <= 1 and video.std() > 0
    assert torch.equal(video, cog.generate(image, num_inference_steps=1, seed=0))
    assert cog.generate(image, num_inference_steps=1, num_frames=1).shape == (1, 3, H, W)
    assert cog.transformer.patch_embed.pos_embedding is table
    assert_same_state(before, state(cog.transformer))


def test_num_frames_is_read_at_forward_time(cog, image):
    """Test 5c: changing num_frames changes the latent frame count; a stale noise draw is refused."""
    stale = draw(cog)
    cog.num_frames = 5  # 2 latent frames
    try:
        f = cog.features(image, draw(cog), req(blocks=(0,), output=True))
        assert f.blocks[0].shape[1] == 2 * 24 and f.output.shape[1] == 2
        with pytest.raises(SurrogateError, match=r"draw the noise with sample_noise\(batch, generator, size=working size\) after setting num_frames"):
            cog.features(image, stale, req(blocks=(0,)))
    finally:
        cog.num_frames = 9
    assert cog.latent_frames() == 3


def test_bf16_forward(image):
    """Test 5d: a bfloat16 surrogate runs; block features stay bf16, the prediction comes back in float32."""
    b16 = CogVideoXSurrogate.tiny(seed=0, dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for m in b16.modules() for p in m.parameters())
    f = b16.features(image, draw(b16), req(blocks=(1,), vae=(3,), output=True))
    assert f.blocks[1].dtype == torch.bfloat16 and f.output.dtype == torch.float32
    assert torch.isfinite(f.output).all() and torch.isfinite(f.blocks[1].float()).all()


def test_gradient_checkpointing_same_gradient(cog, image):
    """Test 5e: checkpointing gives the same gradient (early exit and full output) and restores the flags."""
    ck = CogVideoXSurrogate.tiny(seed=0, gradient_checkpointing=True)
    active: list[bool] = []
    ck.transformer.register_forward_pre_hook(lambda m, a: active.append(m.gradient_checkpointing))
    d = draw(cog, seed=7)
    for request, use_output in ((req(blocks=(1, 2)), False), (req(blocks=(2,), output=True), True)):
        grads = []
        for sur in (cog, ck):
            x = image.clone().requires_grad_(True)
            f = sur.features(x, d, request)
            loss = f.blocks[2].float().pow(2).mean()
            if use_output:
                loss = loss + (f.output - f.target).pow(2).mean()
            grads.append(torch.autograd.grad(loss, x)[0])
        assert grads[0].abs().sum() > 0
        assert_grad_close(grads[0], grads[1], rel=1e-4)  # recomputation may reorder a few float sums
    assert active == [True, True]  # checkpointing was on during the calls
    flags = [m.gradient_checkpointing for m in ck.transformer.modules() if hasattr(m, "gradient_checkpointing")]
    assert flags and not any(flags)
