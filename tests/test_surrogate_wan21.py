"""Wan 2.1 I2V surrogate on tiny random-weight models of the real diffusers / transformers classes (CPU)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from transformers import CLIPImageProcessor

from anti_i2v.protect import ProtectConfig, protect, resize_to
from anti_i2v.surrogates import FeatureRequest, NoiseDraw, SurrogateError, load_surrogate, tiny_surrogate
from anti_i2v.surrogates.wan21 import TEXT_TOKENS, ClipPreprocess, Wan21Surrogate, clip_preprocess

# Tolerances: latents, noise, CLIP tokens and predictions of the tiny model are O(1) float32, so 1e-5 absolute
# and relative is ~100x the rounding of the few ops two code paths may order differently. Image gradients are
# ~1e-2, so their absolute tolerance is relative to the largest entry (assert_grad_close).
TOL = {"rtol": 1e-5, "atol": 1e-5}


def assert_grad_close(a: torch.Tensor, b: torch.Tensor, rel: float = 1e-5) -> None:
    """Gradients agree to ``rel`` of their largest entry (absolute) and ``rel`` relative."""
    torch.testing.assert_close(a, b, rtol=rel, atol=rel * float(b.abs().max()))


def _image(h: int = 32, w: int = 48, seed: int = 3, batch: int = 1) -> torch.Tensor:
    return torch.rand(batch, 3, h, w, generator=torch.Generator().manual_seed(seed))


def _draw(s: Wan21Surrogate, batch: int = 1, seed: int = 0, size=None):
    return s.sample_noise(batch, torch.Generator().manual_seed(seed), size=size)


@pytest.fixture
def wan() -> Wan21Surrogate:
    return Wan21Surrogate.tiny(seed=0)


# --------------------------------------------------------------------------- 1. pipeline equivalence
def test_denoiser_inputs_match_the_real_pipeline(wan):
    """Everything the real WanImageToVideoPipeline feeds the transformer equals denoiser_inputs().

    The pipeline encodes the conditioning video with the VAE posterior mode (sample_mode="argmax"), as the
    adapter does, so no generator needs sharing for the condition; the noisy latent and the timestep are
    taken from the pipeline's call. The pipeline gets the image as a [0, 1] tensor and a CLIP processor with
    do_rescale=False (the [0, 1] equivalent of its uint8 path); the tiny CLIP's 24 x 24 input makes the
    processor resize 32 x 48 -> 24 x 36 and crop, so resize and crop are both compared.
    """
    from diffusers import WanImageToVideoPipeline

    image = _image(32, 48)
    captured = {}

    def grab(_module, args, kwargs):
        captured.update({k: v.detach().clone() for k, v in kwargs.items() if isinstance(v, torch.Tensor)})

    pipe = WanImageToVideoPipeline(
        tokenizer=None, text_encoder=None, vae=wan.vae, scheduler=type(wan.scheduler).from_config(wan.scheduler.config),
        image_processor=CLIPImageProcessor(size={"shortest_edge": 24}, crop_size={"height": 24, "width": 24},
                                           do_rescale=False),
        image_encoder=wan.image_encoder, transformer=wan.transformer,
    )
    pipe.set_progress_bar_config(disable=True)
    handle = wan.transformer.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        pipe(image=image, prompt_embeds=wan.prompt_embeds, height=32, width=48, num_frames=wan.num_frames,
             num_inference_steps=1, guidance_scale=1.0, generator=torch.Generator().manual_seed(0),
             output_type="latent")
    finally:
        handle.remove()
    assert set(captured) >= {"hidden_states", "timestep", "encoder_hidden_states", "encoder_hidden_states_image"}
    z = wan.z_dim
    with torch.no_grad():
        mine = wan.denoiser_inputs(image, captured["hidden_states"][:, :z], captured["timestep"])
    assert set(mine) == {"hidden_states", "timestep", "encoder_hidden_states", "encoder_hidden_states_image"}
    hs, ref = mine["hidden_states"], captured["hidden_states"]
    assert hs.shape == ref.shape == (1, 36, 2, 4, 6)
    torch.testing.assert_close(hs[:, z:z + 4], ref[:, z:z + 4], rtol=0, atol=0)  # the 4-channel mask
    assert ref[:, z:z + 4, 0].eq(1).all() and ref[:, z:z + 4, 1:].eq(0).all()
    torch.testing.assert_close(hs[:, z + 4:], ref[:, z + 4:], **TOL)  # latent of [image, zeros]
    torch.testing.assert_close(hs, ref, **TOL)
    torch.testing.assert_close(mine["encoder_hidden_states_image"], captured["encoder_hidden_states_image"], **TOL)
    assert mine["encoder_hidden_states_image"].shape == (1, 10, 16)  # 3 x 3 patches + class token
    torch.testing.assert_close(mine["encoder_hidden_states"], captured["encoder_hidden_states"], rtol=0, atol=0)
    assert mine["encoder_hidden_states"].shape == (1, TEXT_TOKENS, 32)
    torch.testing.assert_close(mine["timestep"], captured["timestep"], rtol=0, atol=0)
    # a different image changes the conditioning (the comparison is not vacuous)
    with torch.no_grad():
        other = wan.denoiser_inputs(_image(seed=9), captured["hidden_states"][:, :z], captured["timestep"])
    assert (other["hidden_states"][:, z + 4:] - ref[:, z + 4:]).abs().max() > 1e-3
    assert (other["encoder_hidden_states_image"] - mine["encoder_hidden_states_image"]).abs().max() > 1e-3


def test_clip_preprocess_matches_transformers_processor():
    """The torch CLIP preprocessing equals transformers' processor (resize with int() truncation, crop, norm)."""
    for (h, w), edge in (((37, 53), 24), ((53, 37), 24), ((20, 30), 24), ((24, 24), 24)):
        x = _image(h, w, seed=h)
        proc = CLIPImageProcessor(size={"shortest_edge": edge}, crop_size={"height": edge, "width": edge})
        ref = proc(images=x, do_rescale=False, return_tensors="pt")["pixel_values"]
        got = clip_preprocess(x, ClipPreprocess.from_processor(proc))
        torch.testing.assert_close(got, ref, **TOL)  # normalised pixels, |x| < 3
    x = _image(37, 53).requires_grad_(True)
    clip_preprocess(x, ClipPreprocess(shortest_edge=24, crop=(24, 24))).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_forward_builds_the_flow_matching_sample(wan):
    """Without clean=, z_t = (1 - sigma) x0 + sigma noise (x0: the photo's own latent repeated); target = noise - x0."""
    image = _image()
    draw = _draw(wan)
    seen = {}
    h = wan.transformer.register_forward_pre_hook(
        lambda _m, _a, kw: seen.update(hs=kw["hidden_states"].detach().clone(), t=kw["timestep"].clone()),
        with_kwargs=True)
    try:
        with torch.no_grad():
            f = wan.features(image, draw, FeatureRequest(need_output=True, need_latent=True))
    finally:
        h.remove()
    with torch.no_grad():
        alone = wan.vae.encode(image.unsqueeze(2) * 2 - 1).latent_dist.mode()
    mean = torch.tensor(wan.vae.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(wan.vae.config.latents_std).view(1, -1, 1, 1, 1)
    x0 = (alone - mean) / std
    torch.testing.assert_close(f.latent, x0, **TOL)  # the photo alone
    with torch.no_grad():  # ... is the first latent frame of the pipeline's [photo, zero frames] conditioning
        full = wan.encode_condition(image).condition[:, 4:]
    torch.testing.assert_close(f.latent, full[:, :, :1], **TOL)
    sigma = float(draw.timestep[0]) / 1000
    expected = (1 - sigma) * x0.expand(-1, -1, 2, -1, -1) + sigma * draw.noise
    torch.testing.assert_close(seen["hs"][:, :16], expected, **TOL)
    torch.testing.assert_close(f.noisy, seen["hs"][:, :16], rtol=0, atol=0)  # what the transformer saw
    torch.testing.assert_close(f.target, draw.noise - x0.expand(-1, -1, 2, -1, -1), **TOL)
    assert f.output.shape == f.target.shape == (1, 16, 2, 4, 6) and f.output.dtype == torch.float32
    torch.testing.assert_close(seen["t"], draw.timestep, rtol=0, atol=0)  # passed through unchanged
    # timesteps: shifted sigmas (shift 3) of a uniform training index, in (0, 1000]
    t = wan.sample_noise(4000, torch.Generator().manual_seed(1)).timestep
    assert t.min() > 0 and t.max() <= 1000
    assert 0.6 < float((t / 1000).mean()) < 0.7  # E[3s / (1 + 2s)] = 0.6479 for s ~ U(0, 1)


# --------------------------------------------------------------------------- 1b. one z_t per iteration
def test_target_and_adversarial_pass_share_one_zt(wan):
    """Anti-I2V's IRA compares eps(z_t, z_xi) with eps(z_t, z_psi): with clean= both passes see the same z_t.

    Two different images with the same draw and the same clean still video get bit-identical z_t (and target),
    while their conditioning (block features) differs; without clean= each image builds its own z_t.
    """
    photo, other = _image(seed=3), _image(seed=8)
    d = _draw(wan, seed=5)
    with torch.no_grad():
        clean = wan.clean_latent(wan.encode(photo))
    r = FeatureRequest(blocks=frozenset({1}), need_output=True)
    with torch.no_grad():
        fa = wan.features(photo, d, r, clean=clean)
        fb = wan.features(other, d, r, clean=clean)
        own_a = wan.features(photo, d, r)
        own_b = wan.features(other, d, r)
        own_flag = wan.features(other, d, FeatureRequest(blocks=frozenset({1}), need_output=True, own_latent=True),
                                clean=clean)
    assert clean.shape == d.noise.shape == (1, 16, 2, 4, 6) and clean.dtype == torch.float32
    assert torch.equal(fa.noisy, fb.noisy) and torch.equal(fa.target, fb.target)
    assert torch.equal(fa.noisy, wan.noisy_latent(clean, d))
    assert (fa.blocks[1] - fb.blocks[1]).abs().max() > 1e-3  # only the conditioning differs, and it does
    # without clean=: own z_t per image (differs by ~1e-2 on the tiny VAE, far above float32 rounding)
    assert (own_a.noisy - own_b.noisy).abs().max() > 1e-3
    # the clean photo's own pass is the shared-z_t pass; own_latent (AdvDM) ignores clean=
    assert torch.equal(own_a.noisy, fa.noisy)
    torch.testing.assert_close(own_a.output, fa.output, rtol=0, atol=0)
    assert torch.equal(own_flag.noisy, own_b.noisy)
    # clean= of batch 1 serves a batch of 2; a clean latent of another shape is refused by name
    d2 = _draw(wan, batch=2, seed=5)
    with torch.no_grad():
        f2 = wan.features(torch.cat([photo, other]), d2, FeatureRequest(blocks=frozenset({1})), clean=clean)
    assert torch.equal(f2.noisy, wan.noisy_latent(clean.expand(2, -1, -1, -1, -1), d2))
    with pytest.raises(SurrogateError, match="draw.noise"):
        wan.features(other, d, FeatureRequest(blocks=frozenset({1})), clean=clean[:, :, :1])


def test_image_gradient_with_clean_flows_only_through_the_conditioning(wan):
    """With clean= the image gradient equals a manual pass on a detached z_t, and differs from the own-z_t one."""
    photo, other = _image(seed=3), _image(seed=8)
    d0 = _draw(wan, seed=5)
    d = NoiseDraw(timestep=torch.tensor([100.0]), noise=d0.noise)  # low noise: the z_t path matters more
    with torch.no_grad():
        clean = wan.clean_latent(wan.encode(photo))
    r = FeatureRequest(blocks=frozenset({1}))

    def grad(**kw):
        x = other.clone().requires_grad_(True)
        f = wan.features(x, d, r, **kw)
        return torch.autograd.grad(f.blocks[1].pow(2).mean(), x)[0]

    g_clean, g_own = grad(clean=clean), grad()
    # manual: conditioning from the image, z_t from the clean latent with no graph at all, full forward
    x = other.clone().requires_grad_(True)
    seen = {}
    handle = wan.transformer.blocks[1].register_forward_hook(lambda m, a, o: seen.update(o=o))
    try:
        wan.denoise(wan.encode(x), wan.noisy_latent(clean, d).detach(), d)
    finally:
        handle.remove()
    (g_manual,) = torch.autograd.grad(seen["o"].pow(2).mean(), x)
    assert torch.isfinite(g_clean).all() and g_clean.abs().max() > 0
    assert_grad_close(g_clean, g_manual)
    # the own-latent gradient also flows through z_t. The tiny model's z_t path is weak (~1 % of the norm at
    # t = 100), but 1e-3 is still ~1000x float32 rounding
    assert (g_clean - g_own).norm() > 1e-3 * g_clean.norm()


def test_conditioning_is_built_once_and_only_when_the_denoiser_runs(wan):
    """encode() runs the VAE on the photo alone; CLIP and the [photo, zeros] latent are built on the first denoiser
    call, kept in the conditioning (a cached, detached one has no graph) and rebuilt when num_frames changes."""
    photo = _image()
    clip_calls = []
    h = wan.image_encoder.register_forward_pre_hook(lambda *a: clip_calls.append(1))
    try:
        f = wan.features(photo, _draw(wan), FeatureRequest(vae_layers=frozenset({7}), need_latent=True))
        assert clip_calls == [] and f.latent.shape == (1, 16, 1, 4, 6)
        x = photo.clone().requires_grad_(True)
        cached = wan.encode_image(x, {7}).detach()
        d = _draw(wan, seed=1)
        r = FeatureRequest(blocks=frozenset({1}), vae_layers=frozenset({7}), need_output=True)
        first = wan.features(None, d, r, cond=cached)
        again = wan.features(None, d, r, cond=cached)
        assert len(clip_calls) == 1 and not first.output.requires_grad
        torch.testing.assert_close(first.output, again.output, rtol=0, atol=0)
        with torch.no_grad():
            fresh = wan.features(photo, d, r)
        assert len(clip_calls) == 2
        torch.testing.assert_close(first.output, fresh.output, **TOL)
        torch.testing.assert_close(first.vae[7], fresh.vae[7], **TOL)
        wan.num_frames = 9
        try:
            assert wan.features(None, _draw(wan), r, cond=cached).output.shape == (1, 16, 3, 4, 6)
        finally:
            wan.num_frames = 5
        assert len(clip_calls) == 3
    finally:
        h.remove()


# --------------------------------------------------------------------------- 1c. working size (aspect kept)
def test_working_size_keeps_the_aspect_ratio_without_an_explicit_size():
    """No working_size: about 480 x 832 pixels of area, aspect kept, never upscaled, multiples of 16 (as native)."""
    s = Wan21Surrogate.tiny(working_size=None)
    assert s.working_size(480, 832) == (480, 832)
    assert s.working_size(1080, 720) == (768, 512)  # portrait stays portrait
    assert s.working_size(720, 1080) == (512, 768)
    assert s.working_size(1080, 1920) == (464, 832)  # the native surrogates' figure (tests/test_native.py)
    assert s.working_size(37, 53) == (32, 48)  # never upscaled
    assert s.working_size(10, 10) == (16, 16)
    assert Wan21Surrogate.tiny().working_size(1080, 720) == (32, 48)  # an explicit size wins
    # the default draw is at working_size(480, 832): unchanged for callers that do not pass size
    assert s.sample_noise(1, torch.Generator()).noise.shape == (1, 16, 2, 60, 104)


def test_sample_noise_size_and_a_portrait_photo_end_to_end():
    """sample_noise(..., size=working size) draws the noise for that size (same timestep); features, protect-style
    shared z_t and generate() all run at the portrait photo's working size."""
    s = Wan21Surrogate.tiny(working_size=None)
    photo = _image(72, 40, seed=4)  # portrait, not multiples of 16
    work = s.working_size(72, 40)
    assert work == (64, 32)
    a = _draw(s, seed=2, size=work)
    b = _draw(s, seed=2)
    assert a.noise.shape == (1, 16, 2, 8, 4) and torch.equal(a.timestep, b.timestep)
    with pytest.raises(SurrogateError, match="multiples of 16"):
        _draw(s, size=(60, 32))
    x = resize_to(photo, work)
    with torch.no_grad():
        clean = s.clean_latent(s.encode(x))
        f = s.features(_image(64, 32, seed=9), a, FeatureRequest(blocks=frozenset({1}), need_output=True), clean=clean)
    assert f.output.shape == (1, 16, 2, 8, 4) and torch.isfinite(f.output).all()
    with pytest.raises(SurrogateError, match=r"draw.noise.*sample_noise\(batch, generator, size="):
        s.features(x, b, FeatureRequest(blocks=frozenset({1})))
    video = s.generate(photo, num_inference_steps=1, seed=0)
    assert video.shape == (5, 3, 64, 32) and torch.isfinite(video).all()


def test_generate_and_verify_run_at_the_attack_working_size(wan):
    """generate() resizes to working_size(photo) even when the photo's sides are multiples of 16, so verify()
    shows what the model makes of the pixels the attack optimised (at the size it optimised them)."""
    from anti_i2v.verify import verify

    photo = _image(64, 64, seed=5)
    assert wan.working_size(64, 64) == (32, 48)
    assert wan.generate(photo, num_inference_steps=1).shape == (5, 3, 32, 48)
    free = Wan21Surrogate.tiny(working_size=None)
    portrait = _image(72, 40, seed=4)
    protected = (portrait + 0.03 * torch.randn(portrait.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    out = verify(free, portrait, protected, steps=1, seed=0, faces=False)
    assert out["clean_video"].shape == out["protected_video"].shape == (5, 3, 64, 32)
    assert out["metrics"]["settings"]["video_size"] == [64, 32] == list(free.working_size(72, 40))
    assert out["metrics"]["latent_distance"]["relative"] > 0


# --------------------------------------------------------------------------- 2. early exit
def test_early_exit_same_gradient_and_stops(wan):
    image = _image()
    draw = _draw(wan)
    last_calls = []
    h = wan.transformer.blocks[3].register_forward_hook(lambda *a: last_calls.append(1))
    grads = {}
    try:
        for early in (True, False):
            wan.early_exit = early
            last_calls.clear()
            x = image.clone().requires_grad_(True)
            f = wan.features(x, draw, FeatureRequest(blocks=frozenset({1})))
            grads[early], = torch.autograd.grad(f.blocks[1].pow(2).mean(), x)
            assert len(last_calls) == (0 if early else 1)
            assert (f.output is None) == early  # the full forward ends with a prediction
    finally:
        h.remove()
        wan.early_exit = True
    assert grads[True].abs().sum() > 0
    assert_grad_close(grads[True], grads[False])  # same graph up to block 1


# --------------------------------------------------------------------------- 3. features
def test_features_shapes_keys_and_errors(wan):
    image = _image(batch=2)
    draw = _draw(wan, batch=2)
    req = FeatureRequest(blocks=frozenset({0, 2}), vae_layers=frozenset({0, 3, 7}), need_latent=True)
    f = wan.features(image, draw, req)
    assert set(f.blocks) == {0, 2} and set(f.vae) == {0, 3, 7}
    for b in f.blocks.values():
        assert b.shape == (2, 2 * 2 * 3, 24)  # (B, latent frames x 2 x 3 patches, 2 heads x 12)
    assert f.vae[0].shape == (2, 4, 1, 32, 48)
    assert f.vae[3].shape == (2, 4, 1, 8, 12)
    assert f.vae[7].shape == (2, 8, 1, 4, 6)  # mid block; one frame: the image chunk
    assert f.latent.shape == (2, 16, 1, 4, 6) and f.output is None
    assert wan.block_names[0] == "transformer.blocks.0" and wan.vae_layer_names[-1] == "vae.encoder.mid_block"
    # VAE features from the full conditioning video equal those of the photo alone (first chunk kept)
    g = wan.features(image, draw, FeatureRequest(vae_layers=frozenset({0, 3, 7})))
    for i in (0, 3, 7):
        torch.testing.assert_close(f.vae[i], g.vae[i], **TOL)
    with pytest.raises(SurrogateError, match=r"valid indices are 0-3 \(4 blocks\)"):
        wan.features(image, draw, FeatureRequest(blocks=frozenset({4})))
    with pytest.raises(SurrogateError, match=r"valid indices are 0-7 \(8 layers\)"):
        wan.features(image, draw, FeatureRequest(vae_layers=frozenset({8})))
    with pytest.raises(SurrogateError, match="multiples of 16"):
        wan.features(_image(37, 53), draw, FeatureRequest(blocks=frozenset({0})))
    with pytest.raises(SurrogateError, match="draw.noise"):
        wan.features(_image(64, 64), draw, FeatureRequest(blocks=frozenset({0})))


def test_num_frames_is_read_at_forward_time_and_validated(wan):
    image = _image()
    wan.num_frames = 9
    try:
        draw = _draw(wan)
        assert draw.noise.shape == (1, 16, 3, 4, 6)
        f = wan.features(image, draw, FeatureRequest(blocks=frozenset({0}), need_output=True))
        assert f.blocks[0].shape == (1, 3 * 6, 24) and f.output.shape == (1, 16, 3, 4, 6)
        wan.num_frames = 5
        with pytest.raises(SurrogateError, match="draw.noise"):
            wan.features(image, draw, FeatureRequest(blocks=frozenset({0})))
        wan.num_frames = 6
        with pytest.raises(SurrogateError, match=r"num_frames must be 4k\+1"):
            wan.features(image, draw, FeatureRequest(blocks=frozenset({0})))
    finally:
        wan.num_frames = 5
    with pytest.raises(SurrogateError, match=r"num_frames must be 4k\+1"):
        Wan21Surrogate.tiny(num_frames=8)
    assert wan.generate(image, num_inference_steps=1, num_frames=9).shape == (9, 3, 32, 48)
    assert wan.num_frames == 5


# --------------------------------------------------------------------------- 4. loading
def test_save_tiny_from_pretrained_roundtrip(tmp_path):
    folder = Wan21Surrogate.save_tiny(tmp_path / "wan", seed=2)
    assert (folder / "model_index.json").is_file() and (folder / "prompt_embeds.safetensors").is_file()
    assert list((folder / "transformer").glob("*.safetensors")) and not list(folder.rglob("*.bin"))
    ref = Wan21Surrogate.tiny(seed=2)
    s = load_surrogate("wan21", folder, num_frames=9)
    assert isinstance(s, Wan21Surrogate) and s.num_frames == 9
    for a, b in zip(ref.modules(), s.modules()):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys()
        for k in sa:
            torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=0, msg=k)
    torch.testing.assert_close(s.prompt_embeds, ref.prompt_embeds, rtol=0, atol=0)
    assert s.prompt_source.endswith("prompt_embeds.safetensors") and s.prompt_embeds.abs().sum() > 0
    assert s.clip_cfg == ref.clip_cfg and s.shift == 3.0
    assert not any(p.requires_grad for m in s.modules() for p in m.parameters())
    # a different seed gives different weights (the comparison above is not vacuous)
    other = Wan21Surrogate.tiny(seed=3).transformer.state_dict()
    assert any(not torch.equal(other[k], v) for k, v in s.transformer.state_dict().items())


def test_from_pretrained_errors(tmp_path):
    with pytest.raises(SurrogateError, match="does not exist"):
        Wan21Surrogate.from_pretrained(tmp_path / "nope")
    folder = Wan21Surrogate.save_tiny(tmp_path / "wan")
    broken = tmp_path / "novae"
    shutil.copytree(folder, broken)
    shutil.rmtree(broken / "vae")
    with pytest.raises(SurrogateError, match=r"lacks the 'vae' component") as e:
        Wan21Surrogate.from_pretrained(broken)
    assert str(broken) in str(e.value)
    noweights = tmp_path / "noweights"
    shutil.copytree(folder, noweights)
    for f in (noweights / "image_encoder").glob("*.safetensors"):
        f.unlink()
    with pytest.raises(SurrogateError, match=r"could not load the 'image_encoder' component"):
        Wan21Surrogate.from_pretrained(noweights)
    wan22 = tmp_path / "wan22"
    shutil.copytree(folder, wan22)
    index = json.loads((wan22 / "model_index.json").read_text())
    index["boundary_ratio"] = 0.875
    (wan22 / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(SurrogateError, match="Wan 2.2"):
        Wan21Surrogate.from_pretrained(wan22)


def test_rejects_non_i2v_and_bad_prompt():
    from diffusers import WanTransformer3DModel

    s = Wan21Surrogate.tiny()
    t2v = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16,
                                out_channels=16, text_dim=32, freq_dim=32, ffn_dim=32, num_layers=1)
    with pytest.raises(SurrogateError, match="not a Wan 2.1 I2V transformer"):
        Wan21Surrogate(transformer=t2v, vae=s.vae, image_encoder=s.image_encoder, scheduler=s.scheduler)
    with pytest.raises(SurrogateError, match="prompt_embeds"):
        Wan21Surrogate.tiny(prompt_embeds=torch.zeros(1, 4, 31))
    with pytest.raises(SurrogateError, match="at most 512"):
        Wan21Surrogate.tiny(prompt_embeds=torch.zeros(1, 600, 32))
    short = Wan21Surrogate.tiny(prompt_embeds=torch.ones(1, 7, 32))  # zero-padded to 512 like the pipeline
    assert short.prompt_embeds.shape == (1, 512, 32) and short.prompt_embeds[:, 7:].eq(0).all()


# --------------------------------------------------------------------------- 5. protect, generate, dtypes
def _snapshot(s):
    weights = [{k: v.clone() for k, v in m.state_dict().items()} for m in s.modules()]
    flags = [[p.requires_grad for p in m.parameters()] for m in s.modules()]
    hooks = [sum(len(x._forward_hooks) + len(x._forward_pre_hooks) for x in m.modules()) for m in s.modules()]
    return weights, flags, hooks


def test_protect_improves_objective_and_keeps_models(wan):
    photo = _image(37, 53, seed=1)
    objective = wan.default_objective()
    assert [t.name for t in objective.terms] == ["ira", "irc"]
    before = _snapshot(wan)
    clean = wan.generate(photo, num_inference_steps=1, seed=0)
    res = protect(photo, wan, objective, config=ProtectConfig(steps=3, step_size=2.0, seed=0))
    after = _snapshot(wan)
    assert len(res.history) == 3 and res.history[-1]["loss"] < res.history[0]["loss"]
    assert res.protected.shape == photo.shape and res.protected.min() >= 0 and res.protected.max() <= 1
    assert 0 < res.linf[0] <= 16 + 1e-3
    for wa, wb in zip(before[0], after[0]):
        for k in wa:
            assert torch.equal(wa[k], wb[k]), k
    assert before[1] == after[1] and before[2] == after[2]
    # generate: deterministic per seed, and the models behave after protect exactly as before (this also
    # covers transformers' lazily installed CLIP output hooks, which protect's hook cleanup would remove)
    assert clean.shape == (5, 3, 32, 48) and torch.isfinite(clean).all()
    assert torch.equal(clean, wan.generate(photo, num_inference_steps=1, seed=0))
    assert not torch.equal(clean, wan.generate(photo, num_inference_steps=1, seed=1))
    video = wan.generate(res.protected, num_inference_steps=2, seed=0)
    assert video.shape == (5, 3, 32, 48) and torch.isfinite(video).all()
    assert video.min() >= 0 and video.max() <= 1
    assert _snapshot(wan)[1:] == after[1:]


def test_bfloat16_forward(wan):
    s = tiny_surrogate("wan21", seed=0, dtype=torch.bfloat16)
    x = _image().requires_grad_(True)
    f = s.features(x, _draw(s), FeatureRequest(blocks=frozenset({1}), vae_layers=frozenset({7}), need_output=True))
    assert f.blocks[1].dtype == torch.bfloat16 and f.output.dtype == torch.float32
    assert torch.isfinite(f.output).all()
    g, = torch.autograd.grad(f.output.pow(2).mean() + f.vae[7].float().pow(2).mean(), x)
    assert torch.isfinite(g).all() and g.abs().sum() > 0
    ref = wan.features(_image(), _draw(wan), FeatureRequest(need_output=True)).output
    assert (f.output - ref).abs().mean() < 0.1 * ref.abs().mean()  # bf16 close to float32


def test_gradient_checkpointing_same_gradient_and_flags_restored(wan):
    image = _image()
    draw = _draw(wan)
    req = FeatureRequest(blocks=frozenset({0, 2}), need_output=True)
    calls = []
    # a pre-hook: torch's non-reentrant checkpoint stops the recomputation early, before forward hooks run
    h = wan.transformer.blocks[1].register_forward_pre_hook(lambda *a: calls.append(1))
    grads, counts = {}, {}
    try:
        for ckpt in (False, True):
            wan.gradient_checkpointing = ckpt
            calls.clear()
            x = image.clone().requires_grad_(True)
            f = wan.features(x, draw, req)
            loss = (f.output - f.target).pow(2).mean() + (f.blocks[2] - f.blocks[0]).pow(2).mean()
            grads[ckpt], = torch.autograd.grad(loss, x)
            counts[ckpt] = len(calls)
            assert wan.transformer.gradient_checkpointing is False
    finally:
        h.remove()
        wan.gradient_checkpointing = False
    assert counts == {False: 1, True: 2}  # checkpointing recomputed the block in backward
    assert_grad_close(grads[True], grads[False], rel=1e-4)  # recomputation may reorder a few float sums
    assert grads[False].abs().sum() > 0
    # checkpointing together with the early exit (the default objective's case)
    req = FeatureRequest(blocks=frozenset({0, 2}))
    for ckpt in (False, True):
        wan.gradient_checkpointing = ckpt
        x = image.clone().requires_grad_(True)
        f = wan.features(x, draw, req)
        assert f.output is None
        grads[ckpt], = torch.autograd.grad((f.blocks[2] - f.blocks[0]).pow(2).mean(), x)
    wan.gradient_checkpointing = False
    assert wan.transformer.gradient_checkpointing is False
    assert_grad_close(grads[True], grads[False], rel=1e-4)


def test_accelerate_free_loader(tmp_path):
    """The safetensors loader used when accelerate is missing (ComfyUI installs): strict, keeps fp32 modules."""
    from diffusers import AutoencoderKLWan, WanTransformer3DModel

    from anti_i2v.surrogates.wan21 import load_diffusers_model

    folder = Wan21Surrogate.save_tiny(tmp_path / "wan", seed=4)
    ref = Wan21Surrogate.tiny(seed=4)
    tr = load_diffusers_model(WanTransformer3DModel, folder, "transformer", torch.float32, prefer_from_pretrained=False)
    for k, v in ref.transformer.state_dict().items():
        assert torch.equal(tr.state_dict()[k], v), k
    bf = load_diffusers_model(WanTransformer3DModel, folder, "transformer", torch.bfloat16, prefer_from_pretrained=False)
    assert bf.blocks[0].ffn.net[0].proj.weight.dtype == torch.bfloat16
    assert bf.scale_shift_table.dtype == torch.float32 and bf.condition_embedder.time_embedder.linear_1.weight.dtype == torch.float32
    (folder / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(SurrogateError, match="no safetensors weights"):
        load_diffusers_model(AutoencoderKLWan, folder, "vae", torch.float32, prefer_from_pretrained=False)
