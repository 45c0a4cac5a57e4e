"""Open-Sora 1.2 surrogate (this pack's STDiT3 + video VAE) on tiny random-weight configs, on CPU.

The tiny models go through the real loading code in the official checkpoint layout (``OpenSora-STDiT-v3/`` and
``OpenSora-VAE-v1.2/``, ``model.safetensors`` by the real key names). The conditioning is checked against a hand
computation of upstream's I2V inference path (tag v1.2.0: reference latent in latent frame 0, ``x_mask`` False
there, timestep-0 modulation for its tokens).
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from anti_i2v.surrogates import FAMILIES, FeatureRequest, NoiseDraw, SurrogateError, load_surrogate, save_tiny
from anti_i2v.surrogates.detect import detect_family
from anti_i2v.surrogates.opensora import STDIT_DIR, VAE_DIR, WEIGHTS, OpenSoraSurrogate, timestep_transform
from anti_i2v.surrogates.opensora_model import LATENT_SCALE, LATENT_SHIFT, _pos_embed_2d

# Tolerances: latents, features and predictions of the tiny models are O(1) float32; 1e-5 absolute and relative
# is ~100x the rounding of two code paths that order a few ops differently. Gradients (~1e-3) are compared
# relative to their largest entry.
TOL = {"rtol": 1e-5, "atol": 1e-5}


def _grad_close(a: torch.Tensor, b: torch.Tensor, rel: float = 1e-5) -> None:
    torch.testing.assert_close(a, b, rtol=rel, atol=rel * float(b.abs().max()))


def _image(seed: int = 3, batch: int = 1, h: int = 32, w: int = 48) -> torch.Tensor:
    return torch.rand(batch, 3, h, w, generator=torch.Generator().manual_seed(seed))


def _draw(s, batch: int = 1, seed: int = 0) -> NoiseDraw:
    return s.sample_noise(batch, torch.Generator().manual_seed(seed), size=(32, 48))


@pytest.fixture(scope="module")
def osora() -> OpenSoraSurrogate:
    return OpenSoraSurrogate.tiny(seed=0)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return save_tiny("opensora", tmp_path_factory.mktemp("os") / "opensora", seed=2)


def _stdit_keys(depth: int) -> set[str]:
    """Every key of an STDiT3 checkpoint (upstream names), for ``depth`` layers."""
    keys = {"x_embedder.proj.weight", "x_embedder.proj.bias", "t_block.1.weight", "t_block.1.bias",
            "y_embedder.y_embedding", "rope.freqs", "final_layer.linear.weight", "final_layer.linear.bias",
            "final_layer.scale_shift_table"}
    for emb in ("t_embedder", "fps_embedder"):
        keys |= {f"{emb}.mlp.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")}
    keys |= {f"y_embedder.y_proj.fc{i}.{p}" for i in (1, 2) for p in ("weight", "bias")}
    block = ["scale_shift_table", "attn.q_norm.weight", "attn.k_norm.weight"]
    for lin in ("attn.qkv", "attn.proj", "cross_attn.q_linear", "cross_attn.kv_linear", "cross_attn.proj",
                "mlp.fc1", "mlp.fc2"):
        block += [f"{lin}.weight", f"{lin}.bias"]
    for kind in ("spatial_blocks", "temporal_blocks"):
        keys |= {f"{kind}.{i}.{k}" for i in range(depth) for k in block}
    return keys


# --------------------------------------------------------------------------- 1. loading, real key layout
def test_checkpoint_files_use_the_official_key_names(folder):
    stdit = load_file(str(folder / STDIT_DIR / WEIGHTS))
    assert set(stdit) == _stdit_keys(4)
    assert stdit["y_embedder.y_embedding"].shape == (8, 16)  # (model_max_length, caption_channels)
    vae = load_file(str(folder / VAE_DIR / WEIGHTS))
    prefixes = ("spatial_vae.module.", "temporal_vae.encoder.", "temporal_vae.decoder.", "temporal_vae.quant_conv.",
                "temporal_vae.post_quant_conv.")
    assert all(k.startswith(prefixes) or k in ("scale", "shift") for k in vae)
    for k in ("scale", "shift", "spatial_vae.module.encoder.conv_in.weight", "spatial_vae.module.quant_conv.weight",
              "spatial_vae.module.encoder.mid_block.attentions.0.to_q.weight",
              "spatial_vae.module.decoder.conv_out.weight", "temporal_vae.encoder.conv_in.conv.weight",
              "temporal_vae.encoder.block_res_blocks.0.0.norm1.weight",
              "temporal_vae.encoder.block_res_blocks.0.0.conv1.conv.weight",
              "temporal_vae.encoder.block_res_blocks.1.0.conv3.conv.weight",  # 4 -> 8 channels: 1x1x1 shortcut
              "temporal_vae.encoder.conv_blocks.1.conv.weight", "temporal_vae.encoder.conv_blocks.1.conv.bias",
              "temporal_vae.encoder.res_blocks.0.conv2.conv.weight", "temporal_vae.encoder.conv2.conv.bias",
              "temporal_vae.quant_conv.conv.weight", "temporal_vae.post_quant_conv.conv.weight",
              "temporal_vae.decoder.conv1.conv.weight", "temporal_vae.decoder.conv_blocks.2.conv.weight",
              "temporal_vae.decoder.conv_out.conv.weight"):
        assert k in vae, k
    assert not any(k.startswith("temporal_vae.encoder.conv_blocks.0.") for k in vae)  # no time downsampling there
    assert "conv1.conv.bias" not in "".join(k for k in vae if "block_res_blocks" in k)  # res convs: bias=False
    assert vae["scale"].flatten().tolist() == pytest.approx(LATENT_SCALE) and vae["shift"].flatten().tolist() == \
        pytest.approx(LATENT_SHIFT)
    assert not list(folder.rglob("*.bin")) and not list(folder.rglob("*.pt"))


def test_save_tiny_reload_same_weights_and_outputs(folder):
    ref = OpenSoraSurrogate.tiny(seed=2)
    s = load_surrogate("opensora", folder, num_frames=5)
    assert isinstance(s, OpenSoraSurrogate) and s.working_size(300, 300) == (32, 48)
    for a, b in zip(ref.modules(), s.modules()):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys()
        for k in sa:
            torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=0, msg=k)
    assert not any(p.requires_grad for m in s.modules() for p in m.parameters())
    d = _draw(ref, seed=4)
    r = FeatureRequest(blocks=frozenset({1, 3}), vae_layers=frozenset({2, 8}), need_output=True)
    with torch.no_grad():
        fa, fb = ref.features(_image(), d, r), s.features(_image(), d, r)
    torch.testing.assert_close(fa.output, fb.output, rtol=0, atol=0)  # same weights, same ops: bit-identical
    for i in (1, 3):
        torch.testing.assert_close(fa.blocks[i], fb.blocks[i], rtol=0, atol=0)
    other = OpenSoraSurrogate.tiny(seed=3).transformer.state_dict()
    assert any(not torch.equal(other[k], v) for k, v in s.transformer.state_dict().items())
    assert detect_family(folder) == "opensora" and "opensora" in FAMILIES


def test_loader_errors_and_legacy_attention_names(folder, tmp_path):
    import shutil

    with pytest.raises(SurrogateError, match="does not exist"):
        load_surrogate("opensora", tmp_path / "nope")
    broken = tmp_path / "novae"
    shutil.copytree(folder, broken)
    shutil.rmtree(broken / VAE_DIR)
    with pytest.raises(SurrogateError, match="lacks the 'OpenSora-VAE-v1.2' subfolder"):
        load_surrogate("opensora", broken)
    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    st = load_file(str(bad / STDIT_DIR / WEIGHTS))
    st["spatial_blocks.0.extra.weight"] = torch.zeros(1)
    del st["final_layer.linear.bias"]
    save_file(st, str(bad / STDIT_DIR / WEIGHTS))
    with pytest.raises(SurrogateError, match=r"1 missing .*final_layer.linear.bias.*1 unexpected .*extra"):
        load_surrogate("opensora", bad)
    cfg = json.loads((folder / STDIT_DIR / "config.json").read_text())
    (bad / STDIT_DIR / "config.json").write_text(json.dumps({**cfg, "hidden_size": 64}))
    shutil.copy(folder / STDIT_DIR / WEIGHTS, bad / STDIT_DIR / WEIGHTS)
    with pytest.raises(SurrogateError, match="wrong shape"):
        load_surrogate("opensora", bad)
    # a VAE saved with diffusers' pre-0.15 attention names (query/key/value/proj_attn) loads the same
    legacy = tmp_path / "legacy"
    shutil.copytree(folder, legacy)
    vae = load_file(str(legacy / VAE_DIR / WEIGHTS))
    renamed = {}
    for k, v in vae.items():
        for new, old in ((".to_q.", ".query."), (".to_k.", ".key."), (".to_v.", ".value."),
                         (".to_out.0.", ".proj_attn.")):
            k = k.replace(new, old)
        renamed[k] = v
    assert any(".query." in k for k in renamed)
    save_file(renamed, str(legacy / VAE_DIR / WEIGHTS))
    a, b = load_surrogate("opensora", folder), load_surrogate("opensora", legacy)
    for k, v in a.vae.state_dict().items():
        torch.testing.assert_close(b.vae.state_dict()[k], v, rtol=0, atol=0)


# --------------------------------------------------------------------------- 2. conditioning vs upstream's path
def _hand_reference_latent(s: OpenSoraSurrogate, image: torch.Tensor) -> torch.Tensor:
    """Upstream ``collect_references_batch`` + ``VideoAutoencoderPipeline.encode`` with posterior means, by hand."""
    x = image * 2 - 1  # read_from_path normalises to [-1, 1]
    lat = s.vae.spatial.encode(x).latent_dist.mean * 0.18215  # VideoAutoencoderKL, one frame
    lat = lat.unsqueeze(2)
    lat = torch.cat([torch.zeros_like(lat).expand(-1, -1, 3, -1, -1), lat], dim=2)  # VAE_Temporal pads 3 in front
    moments = s.vae.temporal_vae.quant_conv(s.vae.temporal_vae.encoder(lat))
    mean = moments[:, :4]
    shift = torch.tensor(LATENT_SHIFT).view(1, 4, 1, 1, 1)
    scale = torch.tensor(LATENT_SCALE).view(1, 4, 1, 1, 1)
    return (mean - shift) / scale


def _sinusoid(t: float, dim: int = 256) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
    return torch.cat([torch.cos(t * freqs), torch.sin(t * freqs)])[None]


def test_conditioning_matches_upstream_inference_by_hand(osora):
    """Frame 0 of the STDiT3 input is the photo's reference latent, x_mask is False there, the rest is z_t; the
    masked frame's tokens get the timestep-0 modulation in block 0 (a spatial block: frame-local, so each frame's
    tokens equal the block run unmasked at that frame's timestep)."""
    s, image = osora, _image()
    d = _draw(s, seed=1)
    seen = {}
    hooks = [
        s.transformer.register_forward_pre_hook(lambda m, a, kw: seen.update(args=a, kw=kw), with_kwargs=True),
        s.transformer.spatial_blocks[0].register_forward_hook(lambda m, a, o: seen.update(b_in=a, b_out=o)),
    ]
    try:
        with torch.no_grad():
            f = s.features(image, d, FeatureRequest(need_output=True, need_latent=True))
    finally:
        for h in hooks:
            h.remove()
    x, timestep, y, x_mask = seen["args"]
    with torch.no_grad():
        ref = _hand_reference_latent(s, image)
    assert ref.shape == (1, 4, 1, 8, 12)
    torch.testing.assert_close(f.latent, ref, **TOL)
    torch.testing.assert_close(x[:, :, :1], ref, **TOL)  # frame 0: the reference latent
    torch.testing.assert_close(x[:, :, 1:], f.noisy[:, :, 1:], rtol=0, atol=0)  # other frames: z_t
    assert x_mask.tolist() == [[False, True]]
    torch.testing.assert_close(timestep, d.timestep, rtol=0, atol=0)
    torch.testing.assert_close(y, s.transformer.y_embedder.y_embedding[None], rtol=0, atol=0)  # null caption
    assert seen["kw"]["height"].tolist() == [32.0] and seen["kw"]["width"].tolist() == [48.0]
    assert seen["kw"]["fps"].tolist() == [24.0]
    # timestep embeddings by hand: t_block(t_embedder(sinusoid(t)) + fps_embedder(sinusoid(fps)))
    tr = s.transformer
    with torch.no_grad():
        fps = tr.fps_embedder.mlp(_sinusoid(24.0))
        t_mlp = tr.t_block(tr.t_embedder.mlp(_sinusoid(float(d.timestep[0]))) + fps)
        t0_mlp = tr.t_block(tr.t_embedder.mlp(_sinusoid(0.0)) + fps)
    h_in, y_in, t_in, mask_in, t0_in, frames = seen["b_in"]
    torch.testing.assert_close(t_in, t_mlp, **TOL)
    torch.testing.assert_close(t0_in, t0_mlp, **TOL)
    with torch.no_grad():
        at_t = tr.spatial_blocks[0](h_in, y_in, t_mlp, None, None, frames)
        at_0 = tr.spatial_blocks[0](h_in, y_in, t0_mlp, None, None, frames)
    per_frame = h_in.shape[1] // frames
    out = seen["b_out"]
    torch.testing.assert_close(out[:, :per_frame], at_0[:, :per_frame], **TOL)  # reference frame: t0
    torch.testing.assert_close(out[:, per_frame:], at_t[:, per_frame:], **TOL)  # the rest: t
    assert (at_0[:, :per_frame] - at_t[:, :per_frame]).abs().max() > 1e-3  # the two modulations differ
    # the velocity target and the forward process (RFlowScheduler.add_noise)
    tt = float(d.timestep[0]) / 1000
    x0 = s.clean_latent(s.encode(image))
    torch.testing.assert_close(f.noisy, (1 - tt) * x0 + tt * d.noise, **TOL)
    torch.testing.assert_close(f.target, x0 - d.noise, **TOL)
    # the still video's first latent frame is NOT the photo's latent alone: the temporal VAE's GroupNorms pool
    # statistics over time (which is why frame 0 of z_t is replaced by the reference latent, as upstream does)
    assert (x0[:, :, :1] - ref).abs().max() > 1e-3


def test_positions_timesteps_and_frames_follow_upstream():
    """2-D positions (upstream's swapped meshgrid), the timestep transform and latent frame counts."""
    h, w, dim, scale, base = 3, 5, 16, 0.75, 4
    half = dim // 2
    inv = 1.0 / (10000 ** (torch.arange(0, half, 2).float() / half))
    gh = torch.arange(h) / scale * (base / h)
    gw = torch.arange(w) / scale * (base / w)
    a, b = torch.meshgrid(gw, gh, indexing="ij")  # upstream: "here w goes first"
    a, b = a.t().reshape(-1), b.t().reshape(-1)

    def sc(t):
        o = torch.einsum("i,d->id", t, inv)
        return torch.cat([o.sin(), o.cos()], -1)

    want = torch.cat([sc(a), sc(b)], -1)[None]
    torch.testing.assert_close(_pos_embed_2d(dim, h, w, scale, base, "cpu", torch.float32), want, **TOL)
    # timestep transform: ratio sqrt(HW / 512^2) * sqrt(num_frames // 17 * 5)
    t = torch.tensor([500.0])
    r = math.sqrt(240 * 426 / 512**2) * math.sqrt(15)
    assert float(timestep_transform(t, 240, 426, 51)) == pytest.approx(1000 * r * 0.5 / (1 + (r - 1) * 0.5), rel=1e-6)
    r1 = math.sqrt(32 * 48 / 512**2) * math.sqrt(2)  # 5 frames: the 2 real latent frames (upstream's formula gives 0)
    assert float(timestep_transform(t, 32, 48, 5)) == pytest.approx(1000 * r1 * 0.5 / (1 + (r1 - 1) * 0.5), rel=1e-6)
    s = OpenSoraSurrogate.tiny()
    assert [s.latent_frames(n) for n in (5, 8, 17, 18, 51)] == [2, 2, 5, 6, 15]
    assert s.vae.latent_frames(1) == 1  # a photo alone: one latent frame
    with pytest.raises(SurrogateError, match=r"num_frames must be an integer >= 5"):
        s.latent_frames(4)  # one latent frame would be all reference, nothing generated


# --------------------------------------------------------------------------- 3. one z_t, early exit, numbering
def test_target_and_adversarial_pass_share_one_zt(osora):
    s = osora
    photo, other = _image(3), _image(8)
    d = _draw(s, seed=5)
    with torch.no_grad():
        clean = s.clean_latent(s.encode(photo))
        r = FeatureRequest(blocks=frozenset({1}), need_output=True)
        fa = s.features(photo, d, r, clean=clean)
        fb = s.features(other, d, r, clean=clean)
        own_b = s.features(other, d, r)
    assert clean.shape == d.noise.shape == (1, 4, 2, 8, 12)
    assert torch.equal(fa.noisy, fb.noisy) and torch.equal(fa.target, fb.target)
    assert (fa.blocks[1] - fb.blocks[1]).abs().max() > 1e-3  # only the reference frame differs, and it matters
    assert (own_b.noisy - fb.noisy).abs().max() > 1e-4  # without clean=: the image's own still video


def test_early_exit_same_gradient_and_split_numbering(osora):
    s = osora
    d = _draw(s)
    calls = []
    h = s.transformer.temporal_blocks[3].register_forward_hook(lambda *a: calls.append(1))
    grads = {}
    try:
        for early in (True, False):
            s.early_exit = early
            calls.clear()
            x = _image().requires_grad_(True)
            f = s.features(x, d, FeatureRequest(blocks=frozenset({1})))
            grads[early], = torch.autograd.grad(f.blocks[1].pow(2).mean(), x)
            assert len(calls) == (0 if early else 1)
    finally:
        h.remove()
        s.early_exit = True
    assert grads[True].abs().sum() > 0
    _grad_close(grads[True], grads[False])
    s.gradient_checkpointing = True  # recomputed blocks: the same gradient, and the model's flag restored after
    try:
        x = _image().requires_grad_(True)
        f = s.features(x, d, FeatureRequest(blocks=frozenset({1})))
        ckpt, = torch.autograd.grad(f.blocks[1].pow(2).mean(), x)
    finally:
        s.gradient_checkpointing = False
    _grad_close(ckpt, grads[True])
    assert s.transformer.gradient_checkpointing is False
    # split numbering: 2i spatial, 2i + 1 temporal; the paper's layer i is 2i + 1
    split = OpenSoraSurrogate.tiny(seed=0, split_blocks=True)
    assert split.num_blocks == 8 and split.block_names[2] == "transformer.spatial_blocks.1"
    assert split.block_names[3] == "transformer.temporal_blocks.1" and split.layer_index(1) == 3
    with torch.no_grad():
        a = s.features(_image(), d, FeatureRequest(blocks=frozenset({1})))
        b = split.features(_image(), d, FeatureRequest(blocks=frozenset({2, 3})))
    torch.testing.assert_close(a.blocks[1], b.blocks[3], rtol=0, atol=0)
    assert (b.blocks[2] - b.blocks[3]).abs().max() > 1e-3
    obj, sobj = s.default_objective(), split.default_objective()
    assert obj.terms[0].blocks == (3,) and obj.terms[1].pairs == ((0, 3),)
    assert sobj.terms[0].blocks == (7,) and sobj.terms[1].pairs == ((1, 7),)
    assert obj.terms[0].vae_layers == (7, 8)


def test_real_depth_objective_is_the_papers_3_to_19():
    """STDiT3-XL/2's depth 28: IRC 3 -> 19, IRA on 19 (built on the meta device: no weights are allocated)."""
    from anti_i2v.surrogates.opensora_model import STDiT3, STDiT3Config

    s = OpenSoraSurrogate.tiny()
    with torch.device("meta"):
        big = STDiT3(STDiT3Config(hidden_size=64, num_heads=2, caption_channels=16, model_max_length=8))
    real = OpenSoraSurrogate.__new__(OpenSoraSurrogate)
    real.__dict__.update(s.__dict__, transformer=big)
    assert real.num_blocks == 28
    obj = real.default_objective()
    assert obj.terms[0].blocks == (19,) and obj.terms[1].pairs == ((3, 19),)
    real.split_blocks = True
    assert real.num_blocks == 56 and real.default_objective().terms[1].pairs == ((7, 39),)


# --------------------------------------------------------------------------- 4. protect, generate, inspect, CLI
def test_protect_changes_the_loss_and_leaves_the_model_unchanged(osora):
    from anti_i2v.dsp import DSPConfig
    from anti_i2v.protect import ProtectConfig, protect

    s = osora
    before = [(p.detach().clone(), p.requires_grad) for m in s.modules() for p in m.parameters()]
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for r in s.modules() for m in r.modules())
    x = _image(5, h=40, w=44)
    res = protect(x, s, s.default_objective(), DSPConfig(eps=16, dct_block=8),
                  ProtectConfig(steps=3, step_size=4, seed=1))
    losses = [h["loss"] for h in res.history]
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses) and losses[0] != losses[-1]
    assert 4 / 255 < float((res.protected - x).abs().max()) <= 16 / 255 + 1e-6
    after = [(p, p.requires_grad) for m in s.modules() for p in m.parameters()]
    assert all(torch.equal(a, b) and ga == gb for (a, ga), (b, gb) in zip(before, after))
    assert hooks == sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for r in s.modules() for m in r.modules())


def test_generate_verify_and_layer_pca(osora):
    from anti_i2v.inspect_layers import block_pca_maps
    from anti_i2v.verify import verify

    s = osora
    photo = _image(6, h=40, w=60)
    v1 = s.generate(photo, num_inference_steps=2, seed=3)
    v2 = s.generate(photo, num_inference_steps=2, seed=3)
    assert v1.shape == (5, 3, 32, 48) and torch.equal(v1, v2) and 0 <= float(v1.min()) and float(v1.max()) <= 1
    assert s.generate(photo, num_inference_steps=1, num_frames=9).shape == (9, 3, 32, 48) and s.num_frames == 5
    protected = (photo + 0.05 * torch.randn(photo.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    out = verify(s, photo, protected, steps=1, seed=0, faces=False)
    assert out["clean_video"].shape == out["protected_video"].shape == (5, 3, 32, 48)
    assert out["metrics"]["latent_distance"]["relative"] > 0
    maps = block_pca_maps(s, photo, "0-3", seed=0)
    assert sorted(maps) == [0, 1, 2, 3]
    assert all(m.shape == (3, 32, 48) and 0 <= float(m.min()) and float(m.max()) <= 1 for m in maps.values())
    lo = block_pca_maps(s, photo, "3", seed=0, timestep=0.1)[3]
    hi = block_pca_maps(s, photo, "3", seed=0, timestep=0.9)[3]
    assert (lo - hi).abs().max() > 1e-3  # the fraction reaches the model


def test_cli_demo_and_model_folder(folder, tmp_path):
    import numpy as np
    from PIL import Image

    from anti_i2v.cli import main

    src = tmp_path / "a.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)).save(src)
    assert main(["protect", str(src), "--out", str(tmp_path / "o1"), "--surrogate", "opensora", "--demo",
                 "--steps", "1", "--quiet"]) == 0
    rep = json.loads((tmp_path / "o1" / "a.report.json").read_text())
    assert rep["settings"]["surrogate"]["family"] == "opensora" and rep["demo"]
    assert main(["protect", str(src), "--out", str(tmp_path / "o2"), "--model", str(folder), "--steps", "1",
                 "--quiet"]) == 0  # --surrogate auto detects the Open-Sora layout
    rep = json.loads((tmp_path / "o2" / "a.report.json").read_text())
    assert rep["settings"]["surrogate"]["family"] == "opensora" and not rep["demo"]


def test_rotary_positions_and_the_rflow_sampler_by_hand(osora):
    """Temporal rotary embedding: norm-preserving and relative (q_m . k_n depends on m - n only); the sampler:
    upstream's shifted timesteps, Euler steps z += v dt on the generated frames, frame 0 held at the reference."""
    from anti_i2v.surrogates.opensora_model import _Rotary

    rope = _Rotary(8)
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 1, 1, 8, generator=g), torch.randn(1, 1, 1, 8, generator=g)
    qs, ks = rope.rotate(q.expand(-1, -1, 6, -1)), rope.rotate(k.expand(-1, -1, 6, -1))
    torch.testing.assert_close(qs.norm(dim=-1), q.norm(dim=-1).expand(-1, -1, 6), **TOL)
    dots = (qs[0, 0, :, None] * ks[0, 0, None]).sum(-1)  # (m, n)
    torch.testing.assert_close(dots[1, 3], dots[0, 2], **TOL)
    torch.testing.assert_close(dots[4, 5], dots[2, 3], **TOL)
    assert (dots[0, 2] - dots[0, 0]).abs() > 1e-3  # and it does depend on the offset
    # sampler: record what the transformer sees and returns, and the latent handed to the decoder
    s, photo = osora, _image(4)
    seen, final = [], {}
    h = s.transformer.register_forward_hook(lambda m, a, o: seen.append((a[0].clone(), a[1].clone(), o.clone())))
    decode = s.vae.decode

    def spy(z, num_frames):
        final["z"] = z.clone()
        return decode(z, num_frames=num_frames)

    s.vae.decode = spy  # an instance attribute shadows the method for this call only
    try:
        s.generate(photo, num_inference_steps=2, seed=1)
    finally:
        h.remove()
        del s.vae.decode
    assert len(seen) == 2
    ts = [float(timestep_transform(torch.tensor([t]), 32, 48, 5)) for t in (1000.0, 500.0)]
    assert [float(t[0]) for _, t, _ in seen] == pytest.approx(ts, rel=1e-6)
    with torch.no_grad():
        ref = s.encode(photo).latent
    (x1, _, o1), (x2, _, o2) = seen
    torch.testing.assert_close(x1[:, :, :1], ref, **TOL)
    torch.testing.assert_close(x2[:, :, :1], ref, **TOL)
    torch.testing.assert_close(x2[:, :, 1:], x1[:, :, 1:] + o1[:, :4, 1:] * (ts[0] - ts[1]) / 1000, **TOL)
    torch.testing.assert_close(final["z"][:, :, 1:], x2[:, :, 1:] + o2[:, :4, 1:] * ts[1] / 1000, **TOL)
    torch.testing.assert_close(final["z"][:, :, :1], ref, **TOL)
