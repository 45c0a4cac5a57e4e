"""Wan 2.1 I2V surrogate on tiny random-weight models of the real diffusers / transformers classes (CPU)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from transformers import CLIPImageProcessor

from anti_i2v.protect import ProtectConfig, protect
from anti_i2v.surrogates import FeatureRequest, SurrogateError, load_surrogate, tiny_surrogate
from anti_i2v.surrogates.wan21 import TEXT_TOKENS, ClipPreprocess, Wan21Surrogate, clip_preprocess


def _image(h: int = 32, w: int = 48, seed: int = 3, batch: int = 1) -> torch.Tensor:
    return torch.rand(batch, 3, h, w, generator=torch.Generator().manual_seed(seed))


def _draw(s: Wan21Surrogate, batch: int = 1, seed: int = 0):
    return s.sample_noise(batch, torch.Generator().manual_seed(seed))


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
    torch.testing.assert_close(hs[:, z + 4:], ref[:, z + 4:], rtol=1e-5, atol=1e-5)  # latent of [image, zeros]
    torch.testing.assert_close(hs, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mine["encoder_hidden_states_image"], captured["encoder_hidden_states_image"],
                               rtol=1e-5, atol=1e-5)
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
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    x = _image(37, 53).requires_grad_(True)
    clip_preprocess(x, ClipPreprocess(shortest_edge=24, crop=(24, 24))).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_forward_builds_the_flow_matching_sample(wan):
    """_forward feeds x_t = (1 - sigma) x0 + sigma noise (x0: the photo's latent repeated); target = noise - x0."""
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
    torch.testing.assert_close(f.latent, x0, rtol=1e-5, atol=1e-5)  # first latent frame == the photo alone
    sigma = float(draw.timestep[0]) / 1000
    expected = (1 - sigma) * x0.expand(-1, -1, 2, -1, -1) + sigma * draw.noise
    torch.testing.assert_close(seen["hs"][:, :16], expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(f.target, draw.noise - x0.expand(-1, -1, 2, -1, -1), rtol=1e-5, atol=1e-5)
    assert f.output.shape == f.target.shape == (1, 16, 2, 4, 6) and f.output.dtype == torch.float32
    torch.testing.assert_close(seen["t"], draw.timestep)
    # timesteps: shifted sigmas (shift 3) of a uniform training index, in (0, 1000]
    t = wan.sample_noise(4000, torch.Generator().manual_seed(1)).timestep
    assert t.min() > 0 and t.max() <= 1000
    assert 0.6 < float((t / 1000).mean()) < 0.7  # E[3s / (1 + 2s)] = 0.6479 for s ~ U(0, 1)


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
    torch.testing.assert_close(grads[True], grads[False], rtol=1e-5, atol=1e-7)


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
        torch.testing.assert_close(f.vae[i], g.vae[i], rtol=1e-5, atol=1e-6)
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
    torch.testing.assert_close(grads[True], grads[False], rtol=1e-4, atol=1e-7)
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
    torch.testing.assert_close(grads[True], grads[False], rtol=1e-4, atol=1e-7)


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
