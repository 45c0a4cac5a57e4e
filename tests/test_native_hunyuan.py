"""Native HunyuanVideo I2V surrogate (nodes/native/hunyuan.py) on tiny files loaded by ComfyUI's own loaders.

The diffusion model (``comfy_models.write_tiny_hunyuan_video``) is written in the released checkpoint's key names
and loaded by ``comfy.sd.load_diffusion_model`` (what UNETLoader calls), which detects ``HunyuanVideoI2V`` from
``img_in``'s 33 input channels; the VAE (``comfy_models.cached_hunyuan_vae``, real size: ComfyUI fixes its width)
by ``comfy.sd.VAE`` (VAELoader). Both load under inference mode, so the weights are inference tensors as in a
prompt. Tolerances: float32 kernels differ between CPUs by a few ulp, so recomputed values are compared with
``atol=1e-5``; values that are the same computation on the same inputs with ``torch.equal``.
"""

from __future__ import annotations

import pytest
import torch

from anti_i2v.inspect_layers import block_pca_maps
from anti_i2v.surrogates.base import FeatureRequest, SurrogateError
from tests import comfy_models as cm

pytestmark = pytest.mark.skipif(not (cm.COMFY_DIR / "comfy").is_dir(), reason="ComfyUI not unpacked (scripts/setup.sh)")


def _load_unet(path):
    import comfy.sd

    with torch.inference_mode():
        return comfy.sd.load_diffusion_model(str(path))


@pytest.fixture(scope="module")
def native():
    return cm.load_native()


@pytest.fixture(scope="module")
def hunyuan(native, tmp_path_factory):
    folder = tmp_path_factory.mktemp("diffusion_models")
    model = _load_unet(cm.write_tiny_hunyuan_video(folder))
    vae = cm.load_vae(cm.cached_hunyuan_vae())
    return model, vae


def _photo(seed: int = 0) -> torch.Tensor:
    return torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _positive(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(1, 5, 4096, generator=g), {"pooled_output": torch.randn(1, 768, generator=g)}]]


def _snapshot(module: torch.nn.Module) -> list:
    return [(k, v.clone(), v.requires_grad) for k, v in module.state_dict(keep_vars=True).items()]


def test_hunyuan_detected_and_built(native, hunyuan):
    model, vae = hunyuan
    assert type(model.model).__name__ == "HunyuanVideoI2V"
    assert native.detect_native_family(model) == "hunyuan_i2v"
    s = native.native_surrogate(model=model, vae=vae, positive=_positive(), frames=5, dtype="float32")
    assert isinstance(s, native.NativeHunyuanVideoSurrogate)
    assert s.block_names == ["double_blocks.0", "double_blocks.1", "single_blocks.0", "single_blocks.1"]
    assert s.vae_layer_names[0] == "encoder.conv_in" and s.vae_layer_names[-1] == "encoder.conv_out"
    assert s.latent_frames == 2 and s.working_size(100, 200) == (96, 192)
    d = s.describe()
    assert d["model_class"] == "HunyuanVideoI2V (33 input channels)" and d["text"] == "conditioning"
    assert d["guidance_type"] == "v1 (concat)"
    terms = {t.name: t for t in s.default_objective().terms}
    assert terms["ira"].blocks == (3,) and terms["irc"].pairs == ((0, 3),)


def test_hunyuan_wrong_inputs_are_refused(native, hunyuan, tmp_path):
    model, vae = hunyuan
    t2v = _load_unet(cm.write_tiny_hunyuan_video(tmp_path, in_channels=16, name=cm.HUNYUAN_T2V_FILE))
    with pytest.raises(ValueError, match=r"HunyuanVideo \(16 input channels\): HunyuanVideo text-to-video"):
        native.native_surrogate(model=t2v, vae=vae)
    with pytest.raises(ValueError, match="family is 'ltxv' but the connected model is HunyuanVideoI2V"):
        native.native_surrogate(model=model, vae=vae, family="ltxv")
    with pytest.raises(ValueError, match="positive: the conditioning has width 77 but the HunyuanVideo model"):
        native.native_surrogate(model=model, vae=vae, positive=[[torch.zeros(1, 3, 77), {}]])
    wan_vae = cm.load_vae(cm.write_tiny_wan_vae(tmp_path))
    with pytest.raises(ValueError, match="vae: the connected VAE .* is not HunyuanVideo's"):
        native.native_surrogate(model=model, vae=wan_vae)
    with pytest.raises(ValueError, match="clip_vision: the HunyuanVideo I2V surrogate does not use a CLIP_VISION"):
        native.native_surrogate(model=model, vae=vae, clip_vision=cm.tiny_clip_vision())
    with pytest.raises(ValueError, match="guidance_type 'v2 \\(replace\\)'"):
        native.NativeHunyuanVideoSurrogate(model=model, vae=vae, guidance_type="v2 (replace)")


def test_hunyuan_conditioning_equals_comfyui_node(native, hunyuan):
    """The model inputs the surrogate builds equal those of ComfyUI's own HunyuanImageToVideo (v1 concat)."""
    import sys

    import comfy.model_management
    import comfy.model_patcher

    # ComfyUI's nodes.py puts comfy/ on sys.path, and nodes_hunyuan's upsampler imports these two by their bare
    # names; here the repo's own ``nodes`` package shadows nodes.py, so give the same modules those names
    sys.modules.setdefault("model_management", comfy.model_management)
    sys.modules.setdefault("model_patcher", comfy.model_patcher)
    from comfy_extras.nodes_hunyuan import HunyuanImageToVideo

    model, vae = hunyuan
    positive = _positive(1)
    s = native.native_surrogate(model=model, vae=vae, positive=positive, frames=5, dtype="float32")
    photo = _photo()
    cond = s.encode_image(photo)
    with torch.inference_mode():
        out = HunyuanImageToVideo.execute(positive, vae, 32, 32, 5, 1, "v1 (concat)", start_image=photo.movedim(1, -1))
    pos, latent = out.args[0], out.args[1]
    ref = pos[0][1]
    assert latent["samples"].shape == (1, 16, 2, 4, 4)
    torch.testing.assert_close(cond.parts["concat_latent_image"], ref["concat_latent_image"].float(),
                               atol=1e-5, rtol=1e-5)
    # the c_concat / y / guidance / context the model receives, from the node's conditioning and from the surrogate
    noise = torch.randn(1, 16, 2, 4, 4, generator=torch.Generator().manual_seed(5))
    with s.bound():
        theirs = s._model_conds({**ref, "cross_attn": pos[0][0]}, noise, 1)
        mask = torch.ones(1, 1, 2, 4, 4)
        mask[:, :, :1] = 0
        mine = s._model_conds({**s.text_extra, "cross_attn": s.text_cond, "concat_mask": mask,
                               "concat_latent_image": cond.parts["concat_latent_image"]}, noise, 1)
    assert set(mine) == set(theirs) >= {"c_concat", "y", "guidance", "c_crossattn"}
    for k in theirs:
        torch.testing.assert_close(mine[k].float(), theirs[k].float(), atol=1e-5, rtol=1e-5)
    assert mine["c_concat"].shape == (1, 17, 2, 4, 4)
    # and the denoised output with the surrogate's own denoise equals apply_model on the node's conditioning
    draw = s.draw_noise(1, torch.Generator().manual_seed(0))
    x0 = s.clean_latent(cond)
    zt = s.noisy_latent(x0, draw)
    got = s.denoise(cond, zt, draw)
    with torch.inference_mode():
        c = model.model.extra_conds(**ref, cross_attn=pos[0][0], noise=zt, device=zt.device, latent_image=zt)
        c = {k: v.process_cond(batch_size=1, area=None).concat([]) for k, v in c.items()}
        want = model.model.apply_model(zt, draw.timestep, **c)
    torch.testing.assert_close(got, want.clone().float(), atol=1e-4, rtol=1e-4)


def test_hunyuan_gradients_and_model_unchanged(native, hunyuan):
    """Gradients reach the photo through every block kind and the VAE; the user's model keeps its weights,
    requires_grad flags and hooks; single blocks give the image tokens only."""
    model, vae = hunyuan
    before = _snapshot(model.model) + _snapshot(vae.first_stage_model)
    s = native.native_surrogate(model=model, vae=vae, positive=_positive(), frames=5, dtype="float32")
    photo = _photo(3).requires_grad_(True)
    draw = s.draw_noise(1, torch.Generator().manual_seed(0))
    clean = s.clean_latent(s.encode_image(_photo(3)))
    nv = s.num_vae_layers
    f = s.features(photo, draw, FeatureRequest(blocks=frozenset({0, 3}), vae_layers=frozenset({nv - 1})), clean=clean)
    assert f.blocks[0].shape == f.blocks[3].shape == (1, 2 * 2 * 2, 128)  # 2 latent frames x 2 x 2 tokens
    loss = f.blocks[3].float().pow(2).mean() + f.blocks[0].float().pow(2).mean() + f.vae[nv - 1].pow(2).mean()
    loss.backward()
    assert photo.grad is not None and photo.grad.abs().sum() > 0
    after = _snapshot(model.model) + _snapshot(vae.first_stage_model)
    assert [k for k, _, _ in after] == [k for k, _, _ in before]
    assert all(torch.equal(a, b) and ga == gb for (_, a, ga), (_, b, gb) in zip(after, before))
    modules = list(model.model.modules()) + list(vae.first_stage_model.modules())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in modules)
    assert not any("forward" in m.__dict__ for m in modules)


def test_hunyuan_layer_pca_maps(native, hunyuan):
    model, vae = hunyuan
    s = native.native_surrogate(model=model, vae=vae, frames=5, dtype="float32")
    maps = block_pca_maps(s, _photo(4), "1,2", seed=0, timestep=0.5)
    assert list(maps) == [1, 2]
    for m in maps.values():
        assert m.shape == (3, 32, 32) and torch.isfinite(m).all() and 0 <= m.min() and m.max() <= 1
    # 32 / (8 x patch 2) = 2 x 2 tokens per latent frame: each map is constant on 16 x 16 cells
    m = maps[2]
    assert torch.equal(m[:, ::16, ::16].repeat_interleave(16, 1).repeat_interleave(16, 2), m)
    with pytest.raises(SurrogateError, match="0-3"):
        block_pca_maps(s, _photo(4), "4")
