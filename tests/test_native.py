"""Native surrogates from the user's ComfyUI models (nodes/native/), in-process with the real ComfyUI.

The tiny Wan 2.1 I2V and Wan VAE files are loaded with ``comfy.sd.load_diffusion_model`` and
``comfy.sd.VAE(sd=comfy.utils.load_torch_file(...))`` - exactly what UNETLoader and VAELoader call - under
``torch.inference_mode`` as ComfyUI runs prompts, so the weights are inference tensors. (ComfyUI's ``nodes.py``
itself is not imported here: in this process the name ``nodes`` is this repository's package.) SVD is built
in memory from ComfyUI's classes with tiny configs (fast); the smallest ``svd.safetensors`` ComfyUI accepts
(ViT-H included, 1.9 GB) is loaded by the real ImageOnlyCheckpointLoader in tests/test_native_server.py.

Numeric comparisons state their tolerances (float32 kernels differ between CPUs by a few ulp); values that must
be bit-identical by construction (the shared z_t, drawn from one seed) are compared with ``torch.equal``.
"""

from __future__ import annotations

import pytest
import torch

from anti_i2v.dsp import DSPConfig
from anti_i2v.losses import IRALoss, IRCLoss, Objective
from anti_i2v.surrogates.svd import SVDSurrogate
from anti_i2v.protect import ProtectConfig, default_target, protect
from anti_i2v.surrogates.base import FeatureRequest, SurrogateError
from tests import comfy_models as cm

pytestmark = pytest.mark.skipif(not (cm.COMFY_DIR / "comfy").is_dir(), reason="ComfyUI not unpacked (scripts/setup.sh)")

SIZE = 64


@pytest.fixture(scope="module")
def native():
    return cm.load_native()


@pytest.fixture(scope="module")
def wan_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("comfy_models")
    return {
        "i2v": cm.write_tiny_wan21_i2v(root / "diffusion_models"),
        "t2v": cm.write_tiny_wan_t2v(root / "diffusion_models"),
        "vae": cm.write_tiny_wan_vae(root / "vae"),
    }


def _load_unet(path):
    import comfy.sd

    with torch.inference_mode():
        return comfy.sd.load_diffusion_model(str(path))


def _load_vae(path):
    import comfy.sd
    import comfy.utils

    with torch.inference_mode():
        return comfy.sd.VAE(sd=comfy.utils.load_torch_file(str(path)))


@pytest.fixture(scope="module")
def wan(native, wan_files):
    return _load_unet(wan_files["i2v"]), _load_vae(wan_files["vae"])


def _snapshot(modules):
    """Everything the pack must leave untouched on the user's modules."""
    snap = []
    for root in modules:
        for name, m in root.named_modules():
            hooks = tuple(len(getattr(m, a)) for a in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks"))
            snap.append(("module", name, type(m).__name__, m.training, hooks))
        for name, p in root.named_parameters():
            snap.append(("param", name, p.requires_grad, p.is_inference(), p.dtype, p.device, p.data_ptr()))
        for name, b in root.named_buffers():
            snap.append(("buffer", name, b.is_inference(), b.data_ptr()))
    return snap


def _weights(modules):
    with torch.inference_mode():
        return [t.clone() for root in modules for t in list(root.parameters()) + list(root.buffers())]


def _close(a, b, rel=1e-4):
    """Equal up to ``rel`` of the reference's scale (absolute) and ``rel`` relative: holds on any CPU."""
    scale = max(1.0, float(b.detach().abs().max()))
    torch.testing.assert_close(a, b, atol=rel * scale, rtol=rel)


def _photo(seed=3):
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(1, 3, 8, 8, generator=g)
    return torch.nn.functional.interpolate(base, size=(SIZE, SIZE), mode="bilinear", align_corners=False)


def test_detects_wan_i2v_and_builds_surrogate(native, wan):
    model, vae = wan
    assert type(model.model).__name__ == "WAN21"
    assert next(model.model.diffusion_model.parameters()).is_inference()  # as after ComfyUI's loaders
    s = native.native_surrogate(model=model, vae=vae, frames=9)
    assert native.detect_native_family(model) == "wan21"
    assert s.num_blocks == 2 and s.block_names == ["blocks.0", "blocks.1"]
    assert s.num_vae_layers == 16 and s.vae_layer_names[-1] == "encoder.head.2"
    assert s.working_size(SIZE, SIZE) == (SIZE, SIZE)
    assert s.working_size(1080, 1920) == (464, 832)  # scaled to the 480p area, multiples of 16
    assert s.describe()["model_class"] == "WAN21 (36 input channels)"
    with pytest.raises(SurrogateError, match="0-1"):
        s.validate_request(FeatureRequest(blocks=frozenset({2})))


def test_features_gradients_and_early_exit(native, wan):
    model, vae = wan
    s = native.native_surrogate(model=model, vae=vae, frames=5)
    draw = s.sample_noise(1, torch.Generator().manual_seed(0))
    x = _photo().requires_grad_(True)
    req = FeatureRequest(blocks=frozenset({0, 1}), vae_layers=frozenset({0, 15}), need_output=True)
    f = s.features(x, draw, req)
    assert f.blocks[0].shape == f.blocks[1].shape == (1, 2 * 8 * 8 // 4 * 4 // 4, 128)  # 2 latent frames x 16 tokens
    assert f.output.shape == f.target.shape == f.noisy.shape == (1, 16, 2, 8, 8)
    assert f.latent.shape == (1, 16, 1, 8, 8)  # the photo's latent (first latent frame), as diffusers' Wan
    assert f.vae[0].shape[-2:] == (SIZE, SIZE)  # first chunk = the photo frame itself
    loss = f.blocks[1].float().pow(2).mean() + f.vae[15].pow(2).mean() + f.output.pow(2).mean()
    (g,) = torch.autograd.grad(loss, x)
    assert torch.isfinite(g).all() and g.abs().sum() > 0
    # the same draw gives the same features (noise comes from the draw's seed)
    f2 = s.features(x.detach(), draw, FeatureRequest(blocks=frozenset({1})))
    assert torch.equal(f2.noisy, f.noisy.detach())
    _close(f2.blocks[1], f.blocks[1].detach(), rel=1e-5)
    # early exit: block 0 only, nothing after it runs, its gradient equals the full forward's
    s.num_frames = 1  # mutable; one latent frame keeps the rest fast
    calls = []
    s.denoiser().blocks[1].register_forward_hook(lambda *a: calls.append(1))  # shadow only; rebuilt per call
    x0 = x.detach().requires_grad_(True)
    fe = s.features(x0, draw, FeatureRequest(blocks=frozenset({0})))
    assert set(fe.blocks) == {0} and fe.output is None
    assert calls == []
    (ge,) = torch.autograd.grad(fe.blocks[0].pow(2).mean(), x0)
    s.early_exit = False
    x1 = x.detach().requires_grad_(True)
    ff = s.features(x1, draw, FeatureRequest(blocks=frozenset({0})))
    (gf,) = torch.autograd.grad(ff.blocks[0].pow(2).mean(), x1)
    torch.testing.assert_close(ge, gf, atol=1e-5 * float(gf.abs().max()), rtol=1e-5)


def test_protect_improves_objective_and_leaves_model_unchanged(native, wan):
    model, vae = wan
    s = native.native_surrogate(model=model, vae=vae, frames=1)
    user = [model.model, vae.first_stage_model]
    before_snap, before_w = _snapshot(user), _weights(user)
    video_before = s.generate(_photo(), num_inference_steps=2, seed=7)
    assert video_before.shape == (1, 3, SIZE, SIZE)

    photo = _photo()
    objective = Objective((IRALoss(blocks=(1,), vae_layers=(14, 15)), IRCLoss(pairs=((0, 1),))))
    res = protect(photo, s, objective, DSPConfig(eps=16, dct_block=8), ProtectConfig(steps=3, step_size=4, seed=0))
    assert res.linf[0] <= 16.0 + 1e-3 and res.linf[0] > 0

    def value(img):  # at one fixed draw, z_t from the clean photo (as the loop builds it)
        draw = s.sample_noise(1, torch.Generator().manual_seed(0))
        with torch.no_grad():
            x0 = s.clean_latent(s.encode_image(photo))
            tgt = s.features(default_target(SIZE, SIZE), draw, objective.target_request(), clean=x0)
            adv = s.features(img, draw, objective.request(), clean=x0)
            return float(objective.evaluate(adv, tgt)[0])

    assert value(res.protected) < value(photo)

    # the user's MODEL and VAE: same weights (values and storage), flags, hooks; same sampled video
    assert _snapshot(user) == before_snap
    for a, b in zip(_weights(user), before_w):
        assert torch.equal(a, b)
    video_after = s.generate(_photo(), num_inference_steps=2, seed=7)
    assert torch.equal(video_after, video_before)
    assert not torch.equal(s.generate(res.protected, num_inference_steps=2, seed=7), video_before)


def test_default_objective_runs(native, wan):
    model, vae = wan
    s = native.native_surrogate(model=model, vae=vae, frames=1)
    s.num_frames = 1  # mutable: one latent frame
    obj = s.default_objective()
    draw = s.sample_noise(1, torch.Generator().manual_seed(1))
    f = s.features(_photo(), draw, obj.request())
    t = s.features(default_target(SIZE, SIZE), draw, obj.target_request())
    total, terms = obj.evaluate(f, t)
    assert torch.isfinite(total) and set(terms) == {"ira", "irc"}


def test_wan_with_clip_vision_and_positive(native, wan):
    model, vae = wan
    cv = cm.tiny_clip_vision()
    positive = [[torch.randn(1, 3, 4096), {"pooled_output": None}]]
    s = native.native_surrogate(model=model, vae=vae, clip_vision=cv, positive=positive, frames=1)
    draw = s.sample_noise(1, torch.Generator().manual_seed(0))
    x = _photo().requires_grad_(True)
    f = s.features(x, draw, FeatureRequest(blocks=frozenset({1})))
    s0 = native.native_surrogate(model=model, vae=vae, frames=1)
    f0 = s0.features(x.detach(), draw, FeatureRequest(blocks=frozenset({1})))
    assert (f.blocks[1] - f0.blocks[1]).abs().max() > 1e-3  # CLIP tokens and text reach the blocks
    (g,) = torch.autograd.grad(f.blocks[1].pow(2).mean(), x)
    assert g.abs().sum() > 0
    assert s.describe()["clip_vision"] is True and s.describe()["text"] == "conditioning"
    with pytest.raises(ValueError, match="width 77"):
        native.native_surrogate(model=model, vae=vae, positive=[[torch.zeros(1, 3, 77), {}]])


def test_wan_clip_vision_crop_encodes_like_clip_vision_encode(native, wan):
    """A non-square photo reaches CLIP vision exactly as ``CLIPVisionEncode`` (crop none / center) sends it.

    ``CLIPVisionEncode.encode`` (ComfyUI's nodes.py, not importable in this process) is one call,
    ``clip_vision.encode_image(image, crop=crop == "center")``: that call is the reference. The photo is 48 x 80,
    its own working size, so the attack sees the very pixels the graph's CLIPVisionEncode sees.
    """
    model, vae = wan
    cv = cm.tiny_clip_vision()
    g = torch.Generator().manual_seed(3)
    photo = torch.nn.functional.interpolate(torch.rand(1, 3, 6, 10, generator=g), size=(48, 80), mode="bilinear")
    got = {}
    for crop in ("none", "center"):
        s = native.native_surrogate(model=model, vae=vae, clip_vision=cv, frames=1, clip_vision_crop=crop)
        assert s.working_size(48, 80) == (48, 80)
        with torch.no_grad():
            cond = s.encode_image(photo)
        with torch.inference_mode():
            ref = cv.encode_image(photo.movedim(1, -1).clone(), crop=crop == "center")
        for key in ("penultimate_hidden_states", "image_embeds"):
            ours = cond.parts[f"clip_vision.{key}"]
            assert ours.shape == ref[key].shape
            torch.testing.assert_close(ours.float(), ref[key].float(), atol=1e-5, rtol=1e-4)  # float32 kernels
        got[crop] = cond.parts["clip_vision.penultimate_hidden_states"]
    # the two crops see different pixels of a non-square photo: the choice matters
    assert (got["none"] - got["center"]).abs().max() > 1e-3
    default = native.native_surrogate(model=model, vae=vae, clip_vision=cv, frames=1)
    assert default.describe()["clip_vision_crop"] == "none"  # ComfyUI's Wan 2.1 I2V template: crop none
    with pytest.raises(ValueError, match="clip_vision_crop must be one of"):
        native.native_surrogate(model=model, vae=vae, clip_vision=cv, clip_vision_crop="left")


def test_non_i2v_models_are_refused(native, wan, wan_files):
    model, vae = wan
    t2v = _load_unet(wan_files["t2v"])
    with pytest.raises(ValueError, match=r"16 input channels.*text-to-video.*supported: Wan 2.1 I2V"):
        native.native_surrogate(model=t2v, vae=vae)
    with pytest.raises(ValueError, match="expected a ComfyUI MODEL"):
        native.native_surrogate(model=object(), vae=vae)
    with pytest.raises(ValueError, match="family is 'svd'.*wan21"):
        native.native_surrogate(model=model, vae=vae, family="svd")
    with pytest.raises(ValueError, match="cogvideox.*diffusers folder"):
        native.native_surrogate(model=model, vae=vae, family="cogvideox")
    with pytest.raises(ValueError, match="dtype"):
        native.native_surrogate(model=model, vae=vae, dtype="int8")


def test_sd15_like_model_is_refused(native):
    import comfy.model_base

    class Fake:  # a MODEL whose BaseModel is a plain SD1.5 BaseModel (constructing one is not needed)
        model = comfy.model_base.BaseModel.__new__(comfy.model_base.BaseModel)

    with pytest.raises(ValueError, match="BaseModel, not an image-to-video model"):
        native.native_surrogate(model=Fake(), vae=None)


def test_svd_native_surrogate(native):
    model, vae, cv = cm.tiny_svd()
    user = [model.model, vae.first_stage_model, cv.model]
    before_snap, before_w = _snapshot(user), _weights(user)
    s = native.native_surrogate(model=model, vae=vae, clip_vision=cv, frames=3)
    assert native.detect_native_family(model) == "svd"
    assert s.working_size(SIZE, SIZE) == (SIZE, SIZE)
    n = s.num_blocks
    assert s.block_names[0] == "input_blocks.0" and "middle_block" in s.block_names
    assert s.block_shapes_match(0, n - 1) and not s.block_shapes_match(0, s.block_names.index("middle_block"))
    draw = s.sample_noise(1, torch.Generator().manual_seed(0))
    x = _photo().requires_grad_(True)
    f = s.features(x, draw, FeatureRequest(blocks=frozenset({n - 1}), vae_layers=frozenset({0}), need_output=True))
    assert f.output.shape == f.target.shape == f.noisy.shape == (1, 3, 4, 8, 8) and f.latent.shape == (1, 4, 8, 8)
    (g,) = torch.autograd.grad(f.blocks[n - 1].pow(2).mean() + f.output.pow(2).mean(), x)
    assert torch.isfinite(g).all() and g.abs().sum() > 0
    obj = s.default_objective()
    res = protect(_photo(), s, obj, DSPConfig(eps=8, dct_block=8), ProtectConfig(steps=1, seed=0))
    assert res.protected.shape == (1, 3, SIZE, SIZE)
    assert _snapshot(user) == before_snap
    for a, b in zip(_weights(user), before_w):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="clip_vision: SVD needs"):
        native.native_surrogate(model=model, vae=vae)
    assert s.describe()["clip_vision_crop"] == "center"  # SVD_img2vid_Conditioning always centre-crops
    with pytest.raises(ValueError, match="'none' does not apply to SVD"):
        native.native_surrogate(model=model, vae=vae, clip_vision=cv, clip_vision_crop="none")


# ---------------------------------------------------------------------------------------------- one z_t
def test_wan_still_video_and_one_noisy_latent_for_both_passes(native, wan):
    """x0 is the photo's latent repeated over the latent frames; passes with one draw and clean= share z_t."""
    model, vae = wan
    s = native.native_surrogate(model=model, vae=vae, frames=5)
    a, b = _photo(3), _photo(4)
    with torch.no_grad():
        cond = s.encode_image(a)  # outside features(): binds the shadows itself, as the loop calls it
        x0 = s.clean_latent(cond)
    assert not s._bound
    concat = cond.parts["concat_latent_image"]
    assert concat.shape == (1, 16, 2, 8, 8) and x0.shape == (1, 16, 2, 8, 8)
    assert torch.equal(x0[:, :, 0], x0[:, :, 1]) and torch.equal(x0[:, :, :1], cond.latent)  # a still video
    with s.bound(), torch.no_grad():
        assert torch.equal(cond.latent, s.base_model.process_latent_in(concat[:, :, :1]))
        alone = s._encode_latent(a.unsqueeze(2))  # the photo as a one-frame video
    _close(concat[:, :, :1], alone, rel=1e-5)  # the causal VAE's first chunk is the photo alone
    draw = s.sample_noise(1, torch.Generator().manual_seed(2), size=(SIZE, SIZE))  # size= accepted
    req = FeatureRequest(blocks=frozenset({1}))
    img = b.clone().requires_grad_(True)
    fa = s.features(a, draw, req, clean=x0)
    fb = s.features(img, draw, req, clean=x0)
    assert torch.equal(fa.noisy, fb.noisy) and not fb.noisy.requires_grad
    assert torch.equal(fa.noisy, s.noisy_latent(x0, draw))
    sigma = float(draw.timestep[0])
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(int(draw.extra["noise_seed"][0])))
    _close(fa.noisy, (1 - sigma) * x0 + sigma * noise, rel=1e-6)  # flow matching forward process
    (g,) = torch.autograd.grad(fb.blocks[1].pow(2).mean(), img)  # through the conditioning only
    assert torch.isfinite(g).all() and g.abs().sum() > 0
    with torch.no_grad():
        oa, ob = s.features(a, draw, req), s.features(b, draw, req)
    assert not torch.equal(oa.noisy, ob.noisy)  # without clean=, each image its own z_t
    assert torch.equal(oa.noisy, fa.noisy)


def test_svd_one_noisy_latent_default_objective_and_augmentation(native):
    model, vae, cv = cm.tiny_svd()
    s = native.native_surrogate(model=model, vae=vae, clip_vision=cv, frames=3)
    a, b = _photo(3), _photo(4)
    with torch.no_grad():
        cond = s.encode_image(a)
        x0 = s.clean_latent(cond)
    assert x0.shape == (1, 3, 4, 8, 8) and torch.equal(x0[:, 0], x0[:, 2]) and torch.equal(x0[:, 0], cond.latent)
    draw = s.sample_noise(1, torch.Generator().manual_seed(5))
    req = FeatureRequest(blocks=frozenset({1}), need_output=True)
    img = b.clone().requires_grad_(True)
    fa = s.features(a, draw, req, clean=x0)
    fb = s.features(img, draw, req, clean=x0)
    assert torch.equal(fa.noisy, fb.noisy) and not fb.noisy.requires_grad
    assert torch.equal(fa.target, x0)  # apply_model returns the denoised x0 estimate
    (g,) = torch.autograd.grad(fb.output.pow(2).mean(), img)
    assert torch.isfinite(g).all() and g.abs().sum() > 0
    with torch.no_grad():
        oa, ob = s.features(a, draw, req), s.features(b, draw, req)
    assert not torch.equal(oa.noisy, ob.noisy) and torch.equal(oa.noisy, fa.noisy)

    # default objective: IRC on a down block and its mirroring up block of equal shape; the same indices as the
    # diffusers adapter's tiny SVD (both follow the generative-models block layout)
    obj = s.default_objective()
    irc = [t for t in obj.terms if isinstance(t, IRCLoss)]
    ira = [t for t in obj.terms if isinstance(t, IRALoss)]
    assert obj.notes == () and len(irc) == 1 and len(ira) == 1
    (i, j), = irc[0].pairs
    assert s.block_names[i] == "input_blocks.1" and s.block_names[j] == "output_blocks.2"
    assert ira[0].blocks == (s.block_names.index("middle_block"),) and ira[0].vae_layers == (10, 11)
    ref = SVDSurrogate.tiny(seed=0, num_frames=3).default_objective()
    assert [t.pairs for t in ref.terms if isinstance(t, IRCLoss)] == [((i, j),)]
    assert [t.blocks for t in ref.terms if isinstance(t, IRALoss)] == [ira[0].blocks]
    with torch.no_grad():
        tgt_cond = s.encode_image(default_target(SIZE, SIZE), obj.target_request().vae_layers)
        tgt = s.features(None, draw, obj.target_request(), clean=x0, cond=tgt_cond)
    adv_img = b.clone().requires_grad_(True)
    adv = s.features(adv_img, draw, obj.request(), clean=x0)
    assert adv.blocks[i].shape == adv.blocks[j].shape == (3, 32, 8, 8)
    total, terms = obj.evaluate(adv, tgt)
    assert torch.isfinite(total) and set(terms) == {"ira", "irc"}
    (g,) = torch.autograd.grad(total, adv_img)
    assert torch.isfinite(g).all() and g.abs().sum() > 0

    # augmentation: the concatenated latent is of the noisy photo, the VAE-layer hooks still see the photo itself
    aug = native.native_surrogate(model=model, vae=vae, clip_vision=cv, frames=3)
    aug.augmentation_level = 0.2
    req = FeatureRequest(vae_layers=frozenset({0, 11}), need_output=True)
    with torch.no_grad():
        plain, noisy_cond = s.features(a, draw, req, clean=x0), aug.features(a, draw, req, clean=x0)
        again = aug.features(a, draw, req, clean=x0)
    for k in (0, 11):
        _close(noisy_cond.vae[k], plain.vae[k], rel=1e-5)
    _close(noisy_cond.latent, plain.latent, rel=1e-5)
    assert (noisy_cond.output - plain.output).abs().max() > 1e-4
    assert torch.equal(again.output, noisy_cond.output)  # the augmentation noise follows the draw's seed


def test_svd_temporal_attention_maps_for_i2vguard(native):
    """I2VGuard's temporal attack on the native SVD: ``time_stack[k].attn1`` read through the shadows' attention
    slot, same output as ComfyUI's own attention, gradients, the user's modules untouched, and a ComfyUI attention
    patch that bypasses the module refused by name."""
    from anti_i2v.methods import get_method
    from anti_i2v.methods.i2vguard import I2VGuardTemporalLoss
    from anti_i2v.surrogates.attention import has_attention_slot

    model, vae, cv = cm.tiny_svd()
    user = [model.model, vae.first_stage_model, cv.model]
    before_snap, before_w = _snapshot(user), _weights(user)
    s = native.native_surrogate(model=model, vae=vae, clip_vision=cv, frames=3)
    mods = s.temporal_attention_modules()
    assert mods and all(".time_stack.0.attn1" in n for n, _ in mods)
    draw = s.sample_noise(1, torch.Generator().manual_seed(0))
    with torch.no_grad():
        plain = s.features(_photo(3), draw, FeatureRequest(need_output=True))
        clean = s.features(_photo(4), draw, FeatureRequest(attention=True))
    x = _photo(3).requires_grad_(True)
    read = s.features(x, draw, FeatureRequest(need_output=True, attention=True))
    assert list(read.attention) == [n for n, _ in mods]  # forward order
    _close(read.output, plain.output)  # the slot computes what ComfyUI's attention computes
    for a in read.attention.values():  # probabilities over the 3 frames
        assert a.shape[-2:] == (3, 3)
        torch.testing.assert_close(a.sum(-1), torch.ones_like(a.sum(-1)), atol=1e-5, rtol=0)
    (g,) = torch.autograd.grad(I2VGuardTemporalLoss().evaluate_term(read, None, clean, None), x)
    assert torch.isfinite(g).all() and g.abs().sum() > 0
    assert all(m.__dict__["attention_fn"] is None for _, m in mods)  # slots emptied again
    obj = get_method("i2vguard").objective(s)
    assert any(isinstance(t, I2VGuardTemporalLoss) for t in obj.terms)
    assert not any("temporal attack left out" in n for n in obj.notes)
    assert _snapshot(user) == before_snap
    for a, b in zip(_weights(user), before_w):
        assert torch.equal(a, b)
    for root in user:  # the slot lives on the private shadows only
        assert not any(has_attention_slot(m) or "forward" in vars(m) for m in root.modules())

    import comfy.ldm.modules.attention as ca

    patched = model.clone()
    patched.set_model_attn1_replace(lambda q, k, v, extra: ca.optimized_attention(q, k, v, extra["n_heads"]),
                                    "input", 1)
    p = native.native_surrogate(model=patched, vae=vae, clip_vision=cv, frames=3)
    with pytest.raises(SurrogateError, match=r"attention map\(s\) of .*time_stack\.0\.attn1.* were not computed"):
        p.features(_photo(3), draw, FeatureRequest(attention=True))


@pytest.mark.parametrize("fam", ["wan21", "svd"])
def test_i2vguard_diffusion_attack_uses_the_clean_generation(native, wan, fam):
    """I2VGuard's negative is the clean photo's *generated* video (ComfyUI's own sampler, once per photo), in the
    surrogate's latent layout and convention: the latent :meth:`generate` decodes, not the still video."""
    from anti_i2v.methods import get_method
    from anti_i2v.methods.i2vguard import I2VGuardDiffusionLoss

    if fam == "wan21":
        model, vae = wan
        s = native.native_surrogate(model=model, vae=vae, frames=5)
        user = [model.model, vae.first_stage_model]
    else:
        model, vae, cv = cm.tiny_svd()
        s = native.native_surrogate(model=model, vae=vae, clip_vision=cv, frames=3)
        user = [model.model, vae.first_stage_model, cv.model]
    before_snap, before_w = _snapshot(user), _weights(user)
    photo = _photo()
    with torch.no_grad():
        still = s.clean_latent(s.encode_image(photo))
    z = s.generate_latent(photo, num_inference_steps=2, seed=3)
    assert z.shape == still.shape and z.dtype == torch.float32 and not z.is_inference()
    assert torch.isfinite(z).all() and not torch.allclose(z, still, atol=1e-3)
    assert torch.equal(z, s.generate_latent(photo, num_inference_steps=2, seed=3))  # seeded
    with torch.inference_mode():  # it is the latent the decoded preview video comes from
        frames = s.vae.decode(s.model.model.process_latent_out(z.cpu().squeeze(0) if fam == "svd" else z.cpu()))
    video = s.generate(photo, num_inference_steps=2, seed=3)
    torch.testing.assert_close(frames.reshape(-1, *frames.shape[-3:]).movedim(-1, 1).float(), video,
                               atol=1e-4, rtol=0)

    obj = get_method("i2vguard").objective(s, generation_steps=2)
    assert not any("cannot generate" in n for n in obj.notes)
    (term,) = [t for t in obj.terms if isinstance(t, I2VGuardDiffusionLoss)]
    state = term.prepare(s, photo=photo, target=torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1)))
    assert state["source"] == "generated" and state["negative"].shape == still.shape
    assert _snapshot(user) == before_snap
    for a, b in zip(_weights(user), before_w):
        assert torch.equal(a, b)
