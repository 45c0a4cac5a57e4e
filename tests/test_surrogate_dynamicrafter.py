"""DynamiCrafter surrogate: checkpoint conversion in the real key layout, conditioning against a hand computation of
the upstream inference path, the zero-terminal-SNR v target, early exit, shared z_t, the loop, generation, inspection.

The model is a tiny random-weight configuration of the same architecture (``TINY_CONFIG``), written as a Lightning
``model.ckpt`` (a plain dict saved with ``torch.save``, as the official file is) and converted with the real
converter. Float comparisons state their tolerance relative to the reference's scale (``_close``): float32 kernels
differ between CPUs by a few ulp; nothing here relies on ``allclose``'s default atol.
"""

from __future__ import annotations

import json
import math

import kornia
import numpy as np
import pytest
import torch
from safetensors import safe_open

from anti_i2v.cli import main as cli_main
from anti_i2v.dsp import DSPConfig
from anti_i2v.inspect_layers import block_pca_maps
from anti_i2v.losses import IRALoss, IRCLoss
from anti_i2v.protect import ProtectConfig, protect
from anti_i2v.surrogates import FAMILIES, FeatureRequest, SurrogateError, load_surrogate
from anti_i2v.surrogates.detect import detect_family
from anti_i2v.surrogates.dynamicrafter import (
    TINY_CONFIG,
    DynamiCrafterSurrogate,
    convert_checkpoint,
    tiny_state_dict,
    write_tiny_checkpoint,
)
from anti_i2v.verify import verify


def _close(a, b, rel=1e-4):
    """Equal up to ``rel`` of the reference's scale (absolute) and ``rel`` relative: holds on any CPU."""
    scale = max(1.0, float(b.detach().abs().max()))
    torch.testing.assert_close(a, b, atol=rel * scale, rtol=rel)


def _image(seed=3, size=(64, 64)) -> torch.Tensor:
    return torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def dc() -> DynamiCrafterSurrogate:
    return DynamiCrafterSurrogate.tiny(seed=0)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """A tiny Lightning checkpoint (the 256 model's legacy ``framestride_embed`` name) converted through the CLI."""
    root = tmp_path_factory.mktemp("dc")
    sd = {k.replace("fps_embedding", "framestride_embed"): v for k, v in tiny_state_dict(0).items()}
    ckpt = root / "model.ckpt"
    torch.save({"state_dict": sd, "epoch": 3, "global_step": 100}, str(ckpt))
    (root / "tiny.json").write_text(json.dumps(TINY_CONFIG))
    out = root / "converted"
    assert cli_main(["convert-dynamicrafter", str(ckpt), str(out), "--config", str(root / "tiny.json")]) == 0
    return out


# ----------------------------------------------------------------------------- 1. checkpoint format and loading
OFFICIAL_KEYS = [  # names of the official model.ckpt (upstream module paths), one of each kind
    "model.diffusion_model.input_blocks.0.0.weight",
    "model.diffusion_model.init_attn.0.proj_in.weight",
    "model.diffusion_model.input_blocks.1.0.temopral_conv.conv4.3.weight",
    "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k_ip.weight",
    "model.diffusion_model.input_blocks.1.2.transformer_blocks.0.attn1.to_q.weight",
    "model.diffusion_model.input_blocks.2.0.op.weight",
    "model.diffusion_model.middle_block.3.emb_layers.1.weight",
    "model.diffusion_model.output_blocks.1.3.conv.weight",
    "model.diffusion_model.fps_embedding.2.bias",
    "model.diffusion_model.out.2.weight",
    "first_stage_model.encoder.down.0.block.0.conv1.weight",
    "first_stage_model.encoder.down.1.downsample.conv.weight",
    "first_stage_model.encoder.mid.attn_1.q.weight",
    "first_stage_model.decoder.up.3.upsample.conv.weight",
    "first_stage_model.decoder.norm_out.weight",
    "first_stage_model.quant_conv.weight",
    "embedder.model.visual.transformer.resblocks.0.attn.in_proj_weight",
    "embedder.model.visual.class_embedding",
    "image_proj_model.layers.0.0.to_kv.weight",
    "image_proj_model.latents",
]


def test_convert_then_load_keeps_the_real_key_layout_and_outputs(dc, converted):
    assert detect_family(converted) == "dynamicrafter"
    with safe_open(str(converted / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
        assert f.get_tensor("first_stage_model.encoder.mid.attn_1.q.weight").ndim == 4  # LDM 1x1 conv layout
    assert all(k in keys for k in OFFICIAL_KEYS)
    prefixes = {"model.diffusion_model.", "first_stage_model.", "embedder.model.visual.", "image_proj_model."}
    assert all(any(k.startswith(p) for p in prefixes) for k in keys)  # text encoder dropped (cached embedding)
    assert not any("framestride_embed" in k for k in keys)  # the 256 model's legacy name was renamed
    cfg = json.loads((converted / "dynamicrafter.json").read_text())
    assert cfg["variant"] == "tiny" and cfg["diffusion"]["parameterization"] == "v"

    loaded = load_surrogate("dynamicrafter", converted, num_frames=4, working_size=(64, 64))
    assert isinstance(loaded, DynamiCrafterSurrogate) and loaded.folder == str(converted)
    for a, b in zip(dc.modules(), loaded.modules()):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    draw = dc.sample_noise(1, torch.Generator().manual_seed(0))
    req = FeatureRequest(need_output=True)
    g = torch.Generator().manual_seed(7)
    loaded.prompt_embeds = dc.prompt_embeds = torch.randn(1, 77, 32, generator=g)  # same text for both
    with torch.no_grad():
        mine, theirs = dc.features(_image(), draw, req).output, loaded.features(_image(), draw, req).output
    _close(theirs, mine)  # separately allocated modules may take other SIMD paths (seen: 1e-6 apart)


def test_cached_prompt_embedding_is_openclip_penultimate_layer(converted):
    """The converter's prompt embedding equals a hand computation of ``FrozenOpenCLIPEmbedder(layer="penultimate")``
    for "": tokens [SOT, EOT, 0...], token + position embedding, all blocks but the last (the tiny text tower has
    two: only block 0 runs) with a causal mask, ln_final."""
    from safetensors.torch import load_file

    emb = load_file(str(converted / "prompt_embeds.safetensors"))["prompt_embeds"]
    sd = {k[len("cond_stage_model.model."):]: v for k, v in tiny_state_dict(0).items()
          if k.startswith("cond_stage_model.model.")}
    tokens = torch.zeros(77, dtype=torch.long)
    tokens[0], tokens[1] = 49406, 49407
    x = sd["token_embedding.weight"][tokens] + sd["positional_embedding"]
    p = "transformer.resblocks.0."
    ln = torch.nn.functional.layer_norm
    h = ln(x, (32,), sd[p + "ln_1.weight"], sd[p + "ln_1.bias"])
    q, k, v = (h @ sd[p + "attn.in_proj_weight"].T + sd[p + "attn.in_proj_bias"]).chunk(3, dim=-1)
    heads = TINY_CONFIG["text"]["heads"]
    q, k, v = (t.reshape(77, heads, -1).transpose(0, 1) for t in (q, k, v))
    att = q @ k.transpose(1, 2) / math.sqrt(q.shape[-1]) + torch.full((77, 77), float("-inf")).triu(1)
    a = (att.softmax(-1) @ v).transpose(0, 1).reshape(77, 32)
    x = x + a @ sd[p + "attn.out_proj.weight"].T + sd[p + "attn.out_proj.bias"]
    h = ln(x, (32,), sd[p + "ln_2.weight"], sd[p + "ln_2.bias"])
    h = torch.nn.functional.gelu(h @ sd[p + "mlp.c_fc.weight"].T + sd[p + "mlp.c_fc.bias"])
    x = x + h @ sd[p + "mlp.c_proj.weight"].T + sd[p + "mlp.c_proj.bias"]
    ref = ln(x, (32,), sd["ln_final.weight"], sd["ln_final.bias"])
    assert emb.shape == (1, 77, 32)
    _close(emb[0], ref, rel=1e-5)


class Hyper:
    """Stands for any pickled object that is not a tensor or a plain container (weights_only refuses it)."""


def test_unsafe_or_wrong_checkpoints_are_refused(tmp_path):
    bad = tmp_path / "pickled.ckpt"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "hyper_parameters": Hyper()}, str(bad))
    with pytest.raises(SurrogateError, match=r"pickled objects other than tensors.*refused"):
        convert_checkpoint(bad, tmp_path / "out", config=TINY_CONFIG)
    assert not (tmp_path / "out" / "dynamicrafter.json").exists()  # nothing half-written
    assert cli_main(["convert-dynamicrafter", str(bad), str(tmp_path / "out2"), "--variant", "512"]) == 2
    partial = tmp_path / "partial.ckpt"
    sd = {k: v for k, v in tiny_state_dict(0).items() if not k.startswith("image_proj_model.")}
    torch.save({"state_dict": sd}, str(partial))
    with pytest.raises(SurrogateError, match=r"no resampler weights.*image_proj_model"):
        convert_checkpoint(partial, tmp_path / "out", config=TINY_CONFIG)
    with pytest.raises(SurrogateError, match=r"512 or the 1024.*--variant"):
        convert_checkpoint(write_tiny_checkpoint(tmp_path / "m.ckpt"), tmp_path / "o")
    with pytest.raises(SurrogateError, match=r"does not match the DynamiCrafter 512 configuration"):
        convert_checkpoint(tmp_path / "m.ckpt", tmp_path / "o", variant="512")
    half = convert_checkpoint(tmp_path / "m.ckpt", tmp_path / "half", config=TINY_CONFIG, dtype=torch.float16)
    with safe_open(str(half / "model.safetensors"), "pt") as f:
        assert f.get_tensor("image_proj_model.latents").dtype == torch.float16
    assert sorted(p.name for p in half.iterdir()) == ["dynamicrafter.json", "model.safetensors",
                                                      "prompt_embeds.safetensors"]  # no temporary left
    with pytest.raises(SurrogateError, match=r"no dynamicrafter.json.*convert-dynamicrafter"):
        DynamiCrafterSurrogate.from_pretrained(tmp_path)
    (tmp_path / "model.ckpt").write_bytes(b"x")
    with pytest.raises(SurrogateError, match="convert-dynamicrafter"):
        detect_family(tmp_path)


# ----------------------------------------------------------------------------- 2. conditioning and diffusion
def _zero_snr_alphas_cumprod() -> np.ndarray:
    """LDM "linear" betas rescaled to zero terminal SNR (Lin et al. 2024, Algorithm 1), in numpy float64."""
    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2
    s = np.sqrt(np.cumprod(1 - betas))
    s0, st = s[0], s[-1]
    s = (s - st) * s0 / (s0 - st)
    return s**2


def test_unet_inputs_match_the_upstream_inference_path(dc):
    """x = [z_t, VAE latent x 0.18215 repeated over T]; context = [77 text tokens, Resampler tokens]; fs = 24;
    each frame's spatial cross-attention reads the text and its own 16 image tokens."""
    img = _image()
    draw = dc.sample_noise(1, torch.Generator().manual_seed(2))
    seen = {}
    attn2 = dc.unet.input_blocks[1][1].transformer_blocks[0].attn2
    hooks = [
        dc.unet.register_forward_pre_hook(lambda m, a, kw: seen.update(unet=kw), with_kwargs=True),
        dc.vision.ln_post.register_forward_hook(lambda m, a, o: seen.update(tokens=a[0])),
        attn2.register_forward_pre_hook(lambda m, a: seen.update(frame_ctx=a[1])),
    ]
    try:
        with torch.no_grad():
            f = dc.features(img, draw, FeatureRequest(need_output=True))
            # hand computation with the libraries' own calls
            x = img * 2 - 1
            lat = dc.vae.encode(x).latent_dist.mean * 0.18215
            pix = kornia.geometry.resize(x, (224, 224), interpolation="bicubic", align_corners=True, antialias=True)
            mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
            std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
            dc.vision(((pix + 1) / 2 - mean) / std)  # open_clip's own forward: tokens at ln_post
            tokens = dc.resampler(seen["tokens"])
    finally:
        for h in hooks:
            h.remove()
    kw = seen["unet"]
    assert kw["x"].shape == (1, 8, 4, 8, 8)
    _close(kw["x"][:, :4], f.noisy, rel=1e-6)
    for t in range(4):
        _close(kw["x"][:, 4:, t], lat, rel=1e-5)  # the photo's latent on every frame
    assert kw["context"].shape == (1, 77 + 64, 32) and tokens.shape == (1, 64, 32)
    _close(kw["context"][:, :77], dc.prompt_embeds, rel=1e-6)  # text first
    _close(kw["context"][:, 77:], tokens, rel=1e-4)  # then the image tokens
    assert kw["fs"].tolist() == [24] and kw["timesteps"].tolist() == draw.timestep.tolist()
    ctx = seen["frame_ctx"]  # (B * T, 77 + 16, D): frame k gets image tokens 16k .. 16k + 15
    assert ctx.shape == (4, 77 + 16, 32)
    for k in range(4):
        _close(ctx[k, :77], dc.prompt_embeds[0], rel=1e-6)
        _close(ctx[k, 77:], tokens[0, 16 * k:16 * (k + 1)], rel=1e-4)


def test_zero_snr_v_target_and_forward_process(dc):
    from diffusers import DDIMScheduler

    ab = _zero_snr_alphas_cumprod()
    assert ab[-1] == pytest.approx(0.0, abs=1e-12)  # zero terminal SNR
    torch.testing.assert_close(dc._alphas_cumprod, torch.from_numpy(ab), atol=1e-9, rtol=0)
    ref = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                        rescale_betas_zero_snr=True).alphas_cumprod.double()
    torch.testing.assert_close(dc._alphas_cumprod, ref, atol=1e-6, rtol=0)  # diffusers' float32 version
    x0 = dc.clean_latent(dc.encode(_image()))
    assert x0.shape == (1, 4, 4, 8, 8) and torch.equal(x0[:, :, 0], x0[:, :, 3])
    for t, s in ((0, 1.0), (200, 1.0 - 0.3 * 200 / 399), (700, 0.7), (999, 0.7)):  # dynamic rescale s_t
        draw = dc.sample_noise(1, torch.Generator().manual_seed(t))
        draw.timestep = torch.tensor([t])
        eps = draw.noise
        a, b = math.sqrt(ab[t]), math.sqrt(1 - ab[t])
        _close(dc.noisy_latent(x0, draw), a * s * x0 + b * eps, rel=1e-6)
        _close(dc.prediction_target(x0, draw), a * eps - b * s * x0, rel=1e-6)
    draw.timestep = torch.tensor([1000])
    with pytest.raises(SurrogateError, match=r"\[0, 1000\)"):
        dc.noisy_latent(x0, draw)


# ----------------------------------------------------------------------------- 3. blocks, early exit, shared z_t
def test_blocks_and_default_objective(dc):
    assert dc.block_names == ["input_blocks.0", "init_attn", "input_blocks.1", "input_blocks.2", "input_blocks.3",
                              "middle_block", "output_blocks.0", "output_blocks.1", "output_blocks.2",
                              "output_blocks.3"]
    assert dc.vae_layer_names == [f"encoder.down.{i}" for i in range(4)] + ["encoder.mid"]
    assert [dc.mirror_block(k) for k in range(5)] == [None, 9, 8, 7, 6]
    obj = dc.default_objective()
    ira = next(t for t in obj.terms if isinstance(t, IRALoss))
    irc = next(t for t in obj.terms if isinstance(t, IRCLoss))
    assert ira.blocks == (5,) and ira.vae_layers == (3, 4) and irc.pairs == ((1, 9),) and obj.notes == ()
    assert dc.block_shapes_match(1, 9) and not dc.block_shapes_match(3, 7)


def _sibling(dc, **kw):
    return DynamiCrafterSurrogate(unet=dc.unet, vae=dc.vae, vision=dc.vision, resampler=dc.resampler,
                                  config=dc.config, prompt_embeds=dc.prompt_embeds, num_frames=4, **kw)


def test_early_exit_same_gradient_and_shared_zt(dc):
    """Early exit and gradient checkpointing give the full forward's gradient; both passes share one z_t."""
    full = _sibling(dc, early_exit=False)
    draw = dc.sample_noise(1, torch.Generator().manual_seed(1))
    req = FeatureRequest(blocks=frozenset({5}))
    with torch.no_grad():
        x0 = dc.clean_latent(dc.encode(_image(seed=9)))
    calls, grads, noisy = [], [], []
    h = dc.unet.output_blocks[-1].register_forward_hook(lambda *a: calls.append(1))
    try:
        for s in (dc, full, _sibling(dc, gradient_checkpointing=True)):
            img = _image().requires_grad_(True)
            f = s.features(img, draw, req, clean=x0)
            grads.append(torch.autograd.grad(f.blocks[5].pow(2).mean(), img)[0])
            noisy.append(f.noisy)
            calls.append("|")
    finally:
        h.remove()
    assert calls == ["|", 1, "|", "|"]  # the last block never ran with early exit
    assert grads[0].abs().sum() > 0
    for g in grads[1:]:
        torch.testing.assert_close(grads[0], g, atol=1e-5 * float(g.abs().max()), rtol=1e-5)
    assert dc.unet.gradient_checkpointing is False  # the flag is restored after the call
    assert torch.equal(noisy[0], noisy[1]) and not noisy[0].requires_grad  # one z_t, from the clean photo
    with torch.no_grad():
        own = dc.features(_image(), draw, FeatureRequest(blocks=frozenset({0}), own_latent=True), clean=x0)
    assert not torch.equal(own.noisy, noisy[0])  # AdvDM: the image's own z_t


def test_bf16_forward_and_gradient():
    s = DynamiCrafterSurrogate.tiny(seed=0, dtype=torch.bfloat16, num_frames=1)
    assert all(p.dtype == torch.bfloat16 for m in s.modules() for p in m.parameters())
    img = _image().requires_grad_(True)
    f = s.features(img, s.sample_noise(1, torch.Generator().manual_seed(0)), FeatureRequest(blocks=frozenset({5})))
    (g,) = torch.autograd.grad(f.blocks[5].float().pow(2).mean(), img)
    assert f.blocks[5].dtype == torch.bfloat16 and torch.isfinite(g).all() and g.abs().sum() > 0


# ----------------------------------------------------------------------------- 4. loop, generation, inspection
def test_protect_few_steps_leaves_the_model_unchanged(dc, photo):
    mods = [mm for m in dc.modules() for mm in m.modules()]
    before = ([p.detach().clone() for m in dc.modules() for p in m.parameters()],
              [p.requires_grad for m in dc.modules() for p in m.parameters()],
              [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in mods])
    res = protect(photo, dc, dc.default_objective(), DSPConfig(eps=16, dct_block=8),
                  ProtectConfig(steps=2, step_size=4.0, seed=0))
    assert res.protected.shape == photo.shape and max(res.linf) <= 16.0 + 1e-3
    assert float((res.protected - photo).abs().max()) > 2 / 255  # it moved
    assert len(res.history) == 2 and all(math.isfinite(h["loss"]) for h in res.history)
    assert all(torch.equal(a, b) for a, b in zip(before[0], (p for m in dc.modules() for p in m.parameters())))
    assert before[1] == [p.requires_grad for m in dc.modules() for p in m.parameters()]
    assert before[2] == [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in mods]


def test_generate_and_verify_short_videos(dc, photo):
    v = dc.generate(photo, num_inference_steps=2, seed=1, num_frames=2)
    assert v.shape == (2, 3, 64, 64) and v.dtype == torch.float32 and torch.isfinite(v).all()
    assert 0 <= float(v.min()) and float(v.max()) <= 1
    assert torch.equal(v, dc.generate(photo, num_inference_steps=2, seed=1, num_frames=2))  # deterministic
    assert dc.num_frames == 4
    out = verify(dc, photo, (photo + 0.05).clamp(0, 1), steps=1, num_frames=2, faces=False)
    assert out["clean_video"].shape == (2, 3, 64, 64)
    assert out["metrics"]["settings"]["family"] == "dynamicrafter"
    assert out["metrics"]["latent_distance"]["mean"] > 0


def test_inspect_layers_and_registration(dc, photo):
    maps = block_pca_maps(dc, photo, [1, 5], timestep=0.5)
    assert set(maps) == {1, 5} and maps[1].shape == maps[5].shape == (3, 64, 64)  # upsampled to the working size
    m5 = maps[5]  # the middle block's 4 x 4 grid: constant 16 x 16 pixel cells
    assert torch.equal(m5, m5[:, ::16, ::16].repeat_interleave(16, 1).repeat_interleave(16, 2))
    assert all(0 <= float(m.min()) and float(m.max()) <= 1 for m in maps.values())
    assert "dynamicrafter" in FAMILIES
    from anti_i2v.cli import build_parser

    args = build_parser().parse_args(["protect", "x.png", "--out", "o", "--surrogate", "dynamicrafter", "--demo"])
    assert args.surrogate == "dynamicrafter"
