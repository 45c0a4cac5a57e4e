"""Tiny random-weight models in ComfyUI's own formats, built from ComfyUI's classes (tests only).

* :func:`write_tiny_wan21_i2v` - ``models/diffusion_models/wan2.1_i2v_480p_14B_fp16.safetensors``: a
  ``comfy.ldm.wan.model.WanModel(model_type="i2v", in_dim=36, dim=128, ffn_dim=256, num_heads=1, num_layers=2,
  out_dim=16)``; UNETLoader detects it as ``WAN21_I2V`` from key names and shapes alone (about 12 MB in bf16).
* :func:`write_tiny_wan_vae` - ``models/vae/wan_2.1_vae.safetensors``: ``comfy.ldm.wan.vae.WanVAE(dim=16,
  z_dim=16)``; VAELoader detects the Wan 2.1 VAE and reads ``dim`` from ``decoder.head.0.gamma``.
* :func:`write_tiny_wan_t2v` - a Wan 2.1 *text*-to-video file (16 input channels), for the "not I2V" error.
* :func:`install_clip_vision_h` - ``models/clip_vision/clip_vision_h.safetensors``: the random ViT-H/14 vision
  tower of the SVD checkpoint below (``CLIPVisionLoader`` picks its config by the layers present, and Wan's
  ``img_emb`` needs ViT-H's 1280-wide tokens, so it cannot be smaller), for ComfyUI's Wan 2.1 I2V template.
* :func:`tiny_clip_vision` - a ``comfy.clip_vision.ClipVisionModel`` from a tiny JSON config (hidden 1280 as
  Wan's ``img_emb`` requires, one layer, 28-pixel input).
* :func:`tiny_svd` - SVD as ``(MODEL, VAE, CLIP_VISION)`` built in memory from ComfyUI's classes (fast, for
  in-process tests).
* :func:`write_svd_checkpoint` / :func:`install_svd_checkpoint` - ``models/checkpoints/svd.safetensors``, a
  random-weight SVD checkpoint that ComfyUI's real ``ImageOnlyCheckpointLoader`` loads as ``SVD_img2vid`` +
  ViT-H ``CLIP_VISION`` + temporal-decoder ``VAE`` (1.9 GB in fp16, see below).

How small an ``svd.safetensors`` can be (ComfyUI 0.3.75). ``model_detection.detect_unet_config`` reads the
U-Net layout from key names and shapes, and ``supported_models.SVD_img2vid.matches`` compares only
``model_channels == 320``, ``in_channels == 8``, ``context_dim == 1024``, ``adm_in_channels == 768``, linear
transformer projections, temporal layers, and ``transformer_depth == [1, 1, 1, 1, 1, 1, 0, 0]`` (one entry per
input res block: 8 res blocks, transformers in the first 6). ``channel_mult`` is read from the weights and is
not compared, so :data:`SVD_UNET_CONFIG` keeps the real 4 levels x 2 res blocks (hence the real 25 blocks:
input 0-11, middle 12, output 13-24, so the preset's layer indices stay valid) with ``channel_mult=(1, 1, 1,
1)``: 212 M parameters instead of 1.5 B. The other two parts cannot shrink: ``comfy.sd.VAE`` builds the SD VAE
with the temporal decoder from a fixed config (``ch=128``, 98 M) and
``clip_vision.load_clipvision_from_sd`` picks a fixed JSON config by the number of layers present; SVD's
cross-attention needs the 1024-wide image embedding, which only the ViT-H config gives (632 M; ViT-L gives 768,
DINOv2 1024 but at 518 pixels). Weights missing from the file would stay uninitialised (``comfy.ops`` skips
initialisation), so every tensor is written. Figures measured on the 2-core test machine: 942 M parameters,
1.88 GB in fp16, 8-14 s to generate and write (done once, then reused from ``.cache/anti_i2v_tests``), 3-6 s
to load, 3.5 s per ViT-H encode, 3 s for 2 sampling steps of 4 frames at 64x64, and 27 s for the whole SVD
preset (2 protect steps on its shipped layers + both sampling branches) on the idle machine.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
COMFY_DIR = REPO_ROOT / ".cache" / "comfyui"

WAN_I2V_FILE = "wan2.1_i2v_480p_14B_fp16.safetensors"
WAN_T2V_FILE = "wan2.1_t2v_1.3B_bf16.safetensors"
WAN_VAE_FILE = "wan_2.1_vae.safetensors"
SVD_FILE = "svd.safetensors"
CLIP_VISION_H_FILE = "clip_vision_h.safetensors"
#: bump when the layout or the weight recipe of :func:`write_svd_checkpoint` changes (invalidates the cache)
SVD_CHECKPOINT_VERSION = 1
SVD_CACHE_DIR = REPO_ROOT / ".cache" / "anti_i2v_tests"

#: The U-Net of :func:`write_svd_checkpoint`: ``supported_models.SVD_img2vid``'s layout with channel_mult 1.
SVD_UNET_CONFIG = {
    "use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
    "legacy": False, "num_classes": "sequential", "adm_in_channels": 768, "in_channels": 8,
    "model_channels": 320, "num_res_blocks": [2, 2, 2, 2], "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
    "channel_mult": [1, 1, 1, 1], "transformer_depth_middle": 1,
    "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], "use_linear_in_transformer": True,
    "context_dim": 1024, "extra_ff_mix_layer": True, "use_spatial_context": True,
    "merge_strategy": "learned_with_images", "merge_factor": 0.0, "video_kernel_size": [3, 1, 1],
    "use_temporal_resblock": True, "use_temporal_attention": True, "disable_temporal_crossattention": False,
    "num_heads": -1, "num_head_channels": 64,
}

__all__ = [
    "COMFY_DIR",
    "WAN_I2V_FILE",
    "WAN_T2V_FILE",
    "WAN_VAE_FILE",
    "SVD_FILE",
    "SVD_UNET_CONFIG",
    "ensure_comfy_path",
    "load_native",
    "random_state_dict",
    "write_tiny_wan21_i2v",
    "write_tiny_wan_t2v",
    "WAN_I2V_FP8_SCALED_FILE",
    "write_tiny_wan21_i2v_fp8_scaled",
    "write_tiny_wan_vae",
    "WAN22_HIGH_FILE",
    "WAN22_LOW_FILE",
    "write_tiny_wan22_i2v",
    "tiny_clip_vision",
    "tiny_svd",
    "svd_checkpoint_state_dict",
    "write_svd_checkpoint",
    "cached_svd_checkpoint",
    "install_svd_checkpoint",
    "LTXV_FILE",
    "LTXV_CONFIG",
    "ltxv_checkpoint_state_dict",
    "write_tiny_ltxv_checkpoint",
    "load_checkpoint",
    "load_vae",
    "WAN22_5B_FILE",
    "WAN22_VAE_FILE",
    "write_tiny_wan22_ti2v",
    "cached_wan22_vae",
    "install_wan22_vae",
    "CLIP_VISION_H_FILE",
    "install_clip_vision_h",
    "HUNYUAN_I2V_FILE",
    "HUNYUAN_T2V_FILE",
    "HUNYUAN_VAE_FILE",
    "write_tiny_hunyuan_video",
    "cached_hunyuan_vae",
    "install_hunyuan_vae",
]


def ensure_comfy_path() -> Path:
    """Put the unpacked ComfyUI on ``sys.path`` (for ``import comfy``) in ``--cpu`` mode; returns its folder."""
    if not (COMFY_DIR / "comfy").is_dir():
        raise FileNotFoundError(f"no ComfyUI at {COMFY_DIR}: run `bash scripts/setup.sh`")
    if str(COMFY_DIR) not in sys.path:
        sys.path.append(str(COMFY_DIR))
    if "comfy.model_management" not in sys.modules:
        import comfy.cli_args  # parses no command line unless comfy.options enabled it

        comfy.cli_args.args.cpu = True  # as `main.py --cpu`: this test machine has no GPU
    return COMFY_DIR


def load_native(name: str = "anti_i2v_nodes_native"):
    """The ``nodes/native`` package loaded by path as ``name`` (independent of ``nodes/__init__.py``, which
    needs ComfyUI's node API); its modules import each other relatively. ComfyUI goes on the path first."""
    import importlib.util

    ensure_comfy_path()
    if name in sys.modules:
        return sys.modules[name]
    folder = REPO_ROOT / "nodes" / "native"
    spec = importlib.util.spec_from_file_location(name, folder / "__init__.py",
                                                  submodule_search_locations=[str(folder)])
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    try:
        spec.loader.exec_module(mod)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return mod


def random_state_dict(module: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """Seeded random weights for every tensor of ``module``'s state dict (1/sqrt(fan_in) scale).

    Matrices and kernels ~ N(0, 1/fan_in); 1-D biases zero; other 1-D/scalar weights (norm gains) one.
    """
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in module.state_dict().items():
        if not v.is_floating_point():
            out[k] = v.clone()
        elif v.ndim >= 2:
            fan_in = max(1, math.prod(v.shape[1:]))
            out[k] = torch.randn(v.shape, generator=g) / math.sqrt(fan_in)
        elif k.endswith("bias"):
            out[k] = torch.zeros(v.shape)
        else:
            out[k] = torch.ones(v.shape)
    return out


def _wan_model(model_type: str, in_dim: int, out_dim: int = 16) -> torch.nn.Module:
    ensure_comfy_path()
    import comfy.ops
    from comfy.ldm.wan.model import WanModel

    return WanModel(model_type=model_type, in_dim=in_dim, dim=128, ffn_dim=256, num_heads=1, num_layers=2,
                    out_dim=out_dim, text_dim=4096, operations=comfy.ops.disable_weight_init)


def _save(sd: dict[str, torch.Tensor], path: Path, dtype: torch.dtype) -> Path:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.to(dtype).contiguous() if v.is_floating_point() else v.contiguous() for k, v in sd.items()},
              str(path))
    return path


def write_tiny_wan21_i2v(folder: str | Path, *, seed: int = 0, name: str = WAN_I2V_FILE) -> Path:
    """Write a tiny Wan 2.1 I2V diffusion model (bf16 safetensors) as ``folder/name``; returns the path."""
    m = _wan_model("i2v", 36)
    return _save(random_state_dict(m, seed), Path(folder) / name, torch.bfloat16)


WAN_I2V_FP8_SCALED_FILE = "wan2.1_i2v_480p_14B_fp8_scaled.safetensors"


def write_tiny_wan21_i2v_fp8_scaled(folder: str | Path, *, seed: int = 0, name: str = WAN_I2V_FP8_SCALED_FILE) -> Path:
    """The tiny Wan 2.1 I2V of :func:`write_tiny_wan21_i2v` (same seed, same weights before rounding) in the layout
    of the released ``*_fp8_scaled`` files: every ``nn.Linear`` weight (the 2-D ``.weight`` tensors) stored as
    ``float8_e4m3fn`` divided by a float32 per-tensor ``<layer>.scale_weight`` (amax / 448) with a unit
    ``<layer>.scale_input``, the other tensors in bf16, and the empty ``scaled_fp8`` marker tensor that makes ComfyUI's
    loader pick ``comfy.ops.scaled_fp8_ops`` (with fp8 optimisations, used where the GPU has fp8 compute).
    """
    m = _wan_model("i2v", 36)
    out: dict[str, torch.Tensor] = {}
    for k, v in random_state_dict(m, seed).items():
        v = v.to(torch.bfloat16).float()  # the bf16 file's values
        if k.endswith(".weight") and v.ndim == 2:
            scale = v.abs().max().clamp_min(1e-12) / torch.finfo(torch.float8_e4m3fn).max
            out[k] = (v / scale).to(torch.float8_e4m3fn)
            out[k[: -len("weight")] + "scale_weight"] = scale.reshape(()).float()
            out[k[: -len("weight")] + "scale_input"] = torch.ones(())  # read only by fp8 matmul (GPUs)
        else:
            out[k] = v.to(torch.bfloat16)
    out["scaled_fp8"] = torch.empty(0, dtype=torch.float8_e4m3fn)
    return _save_atomic({k: v.contiguous() for k, v in out.items()}, Path(folder) / name)


def write_tiny_wan_t2v(folder: str | Path, *, seed: int = 0, name: str = WAN_T2V_FILE) -> Path:
    """Write a tiny Wan 2.1 text-to-video diffusion model (16 input channels) as ``folder/name``."""
    m = _wan_model("t2v", 16)
    return _save(random_state_dict(m, seed), Path(folder) / name, torch.bfloat16)


WAN22_HIGH_FILE = "wan2.2_i2v_high_noise_14B_fp16.safetensors"
WAN22_LOW_FILE = "wan2.2_i2v_low_noise_14B_fp16.safetensors"


def write_tiny_wan22_i2v(folder: str | Path, *, seed: int = 0, name: str = WAN22_HIGH_FILE) -> Path:
    """Write a tiny Wan 2.2 A14B I2V expert: Wan 2.1 I2V's layout (36 input channels) without ``img_emb``, which
    ComfyUI detects as a ``WAN21`` model; write one per expert (``WAN22_HIGH_FILE`` / ``WAN22_LOW_FILE``, other
    seeds)."""
    m = _wan_model("t2v", 36)
    return _save(random_state_dict(m, seed), Path(folder) / name, torch.bfloat16)


def write_tiny_wan_vae(folder: str | Path, *, seed: int = 0, name: str = WAN_VAE_FILE) -> Path:
    """Write a tiny Wan 2.1 VAE (``WanVAE(dim=16, z_dim=16)``, float32) as ``folder/name``."""
    ensure_comfy_path()
    from comfy.ldm.wan.vae import WanVAE

    m = WanVAE(dim=16, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
               temperal_downsample=[False, True, True], dropout=0.0)
    sd = random_state_dict(m, seed)
    # RMS_norm gains are named ".gamma" and biases of the norms "bias": random_state_dict already gives 1 / 0
    return _save(sd, Path(folder) / name, torch.float32)


def tiny_clip_vision(*, hidden: int = 1280, projection: int = 32, seed: int = 0):
    """A ``comfy.clip_vision.ClipVisionModel`` of one transformer layer on 28x28 inputs, random weights."""
    ensure_comfy_path()
    import comfy.clip_vision

    cfg = {"attention_dropout": 0.0, "dropout": 0.0, "hidden_act": "gelu", "hidden_size": hidden,
           "image_size": 28, "initializer_factor": 1.0, "initializer_range": 0.02, "intermediate_size": 64,
           "layer_norm_eps": 1e-5, "model_type": "clip_vision_model", "num_attention_heads": hidden // 64,
           "num_channels": 3, "num_hidden_layers": 2, "patch_size": 14, "projection_dim": projection,
           "torch_dtype": "float32"}
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(cfg, f)
        path = f.name
    with torch.inference_mode():
        cv = comfy.clip_vision.ClipVisionModel(path)
        cv.load_sd(random_state_dict(cv.model, seed))
    Path(path).unlink(missing_ok=True)
    return cv


def tiny_svd(*, seed: int = 0):
    """Tiny SVD built in memory from ComfyUI's classes: returns ``(MODEL, VAE, CLIP_VISION)``.

    U-Net: ``supported_models.SVD_img2vid`` with ``model_channels=32``, two levels, one temporal res block and
    one spatial-temporal transformer per level, context width 32 (the tiny CLIP projection). VAE:
    ``comfy.sd.VAE(config=...)`` (an ``AutoencoderKL`` with ``ch=32``, GroupNorm's minimum). Weights are
    inference tensors, as after ComfyUI's loaders.
    """
    ensure_comfy_path()
    import comfy.model_management
    import comfy.model_patcher
    import comfy.sd
    import comfy.supported_models

    unet_config = {
        "use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
        "legacy": False, "num_classes": "sequential", "adm_in_channels": 768, "in_channels": 8,
        "model_channels": 32, "num_res_blocks": [1, 1], "transformer_depth": [1, 1], "channel_mult": [1, 2],
        "transformer_depth_middle": 1, "transformer_depth_output": [1, 1, 1, 1], "use_linear_in_transformer": True,
        "context_dim": 32, "extra_ff_mix_layer": True, "use_spatial_context": True,
        "merge_strategy": "learned_with_images", "merge_factor": 0.0, "video_kernel_size": [3, 1, 1],
        "use_temporal_resblock": True, "use_temporal_attention": True, "disable_temporal_crossattention": False,
    }
    device = torch.device("cpu")
    with torch.inference_mode():
        cfg = comfy.supported_models.SVD_img2vid(unet_config)
        cfg.unet_config["num_head_channels"] = 16
        cfg.set_inference_dtype(torch.float32, None)
        base = cfg.get_model({}, "", device=device)
        base.diffusion_model.load_state_dict(random_state_dict(base.diffusion_model, seed))
        model = comfy.model_patcher.ModelPatcher(base, load_device=device, offload_device=device)
        ddconfig = {"double_z": True, "z_channels": 4, "resolution": 64, "in_channels": 3, "out_ch": 3, "ch": 32,
                    "ch_mult": [1, 1, 1, 1], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0}
        from comfy.ldm.models.autoencoder import AutoencoderKL

        probe = AutoencoderKL(ddconfig=ddconfig, embed_dim=4)
        vae = comfy.sd.VAE(sd=random_state_dict(probe, seed + 1), device=device, dtype=torch.float32,
                           config={"params": {"ddconfig": ddconfig, "embed_dim": 4}})
    clip_vision = tiny_clip_vision(hidden=64, projection=32, seed=seed + 2)
    return model, vae, clip_vision


# ---------------------------------------------------------------------------------------- svd.safetensors
_SVD_UNET_PREFIX = "model.diffusion_model."
_SVD_VAE_PREFIX = "first_stage_model."
_SVD_CLIP_PREFIX = "conditioner.embedders.0.open_clip.model.visual."  # SVD_img2vid.clip_vision_prefix


def _svd_meta_modules() -> dict[str, torch.nn.Module]:
    """The three parts of an SVD checkpoint as ComfyUI builds them, on the meta device (shapes only)."""
    ensure_comfy_path()
    import comfy.clip_model
    import comfy.ops
    from comfy.ldm.models.autoencoder import AutoencodingEngine
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    ddconfig = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
                "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}
    with open(COMFY_DIR / "comfy" / "clip_vision_config_h.json") as f:
        vit_h = json.load(f)
    with torch.device("meta"):
        unet = UNetModel(**SVD_UNET_CONFIG, dtype=torch.float32, device="meta",
                         operations=comfy.ops.disable_weight_init)
        # comfy.sd.VAE's branch for checkpoints with "decoder.mid.block_1.mix_factor" (SVD's temporal decoder)
        vae = AutoencodingEngine(
            regularizer_config={"target": "comfy.ldm.models.autoencoder.DiagonalGaussianRegularizer"},
            encoder_config={"target": "comfy.ldm.modules.diffusionmodules.model.Encoder", "params": ddconfig},
            decoder_config={"target": "comfy.ldm.modules.temporal_ae.VideoDecoder",
                            "params": {**ddconfig, "video_kernel_size": [3, 1, 1], "alpha": 0.0}})
        clip = comfy.clip_model.CLIPVisionModelProjection(vit_h, torch.float16, "meta", comfy.ops.manual_cast)
    return {"unet": unet, "vae": vae, "clip": clip}


def _to_open_clip(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """ComfyUI's CLIP-vision keys (transformers naming) -> the open_clip ``visual.*`` keys SVD files use.

    The inverse of ``comfy.clip_vision.convert_to_transformers`` / ``comfy.utils.transformers_convert``:
    q/k/v projections are stacked into ``attn.in_proj_*``, ``visual_projection.weight`` is stored transposed
    as ``proj``.
    """
    plain = {
        "vision_model.embeddings.class_embedding": "class_embedding",
        "vision_model.embeddings.patch_embedding.weight": "conv1.weight",
        "vision_model.embeddings.position_embedding.weight": "positional_embedding",
        "vision_model.post_layernorm.weight": "ln_post.weight",
        "vision_model.post_layernorm.bias": "ln_post.bias",
        "vision_model.pre_layrnorm.weight": "ln_pre.weight",
        "vision_model.pre_layrnorm.bias": "ln_pre.bias",
    }
    layer = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
             "self_attn.out_proj": "attn.out_proj"}
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for k, v in sd.items():
        if k in plain:
            out[plain[k]] = v
        elif k == "visual_projection.weight":
            out["proj"] = v.t().contiguous()
        elif k.startswith("vision_model.encoder.layers."):
            idx, rest = k[len("vision_model.encoder.layers."):].split(".", 1)
            name, kind = rest.rsplit(".", 1)
            if name in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
                qkv.setdefault((int(idx), kind), {})[name[-6]] = v
            else:
                out[f"transformer.resblocks.{idx}.{layer[name]}.{kind}"] = v
        else:
            raise KeyError(f"unexpected CLIP vision key {k!r}")
    for (idx, kind), parts in qkv.items():
        out[f"transformer.resblocks.{idx}.attn.in_proj_{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return out


def _uniform_fp16(shape: torch.Size, key: str, g: torch.Generator) -> torch.Tensor:
    """fp16 weights with the variance of :func:`random_state_dict` (1/fan_in), drawn uniformly (2x faster)."""
    if len(shape) >= 2:
        bound = math.sqrt(3.0 / max(1, math.prod(shape[1:])))
        return torch.empty(shape, dtype=torch.float16).uniform_(-bound, bound, generator=g)
    if key.endswith("bias"):
        return torch.zeros(shape, dtype=torch.float16)
    return torch.ones(shape, dtype=torch.float16)  # norm gains, class embedding, temporal mix factors


def svd_checkpoint_state_dict(*, seed: int = 0, meta: bool = False) -> dict[str, torch.Tensor]:
    """The fp16 state dict of :func:`write_svd_checkpoint` (942 M parameters, 1.88 GB).

    Args:
        seed: seeds the weights.
        meta: return meta tensors (keys and shapes only, nothing allocated) to check the layout cheaply.
    """
    g = torch.Generator().manual_seed(seed)

    def make(k: str, v: torch.Tensor) -> torch.Tensor:
        return torch.empty(v.shape, dtype=torch.float16, device="meta") if meta else _uniform_fp16(v.shape, k, g)

    parts = _svd_meta_modules()
    sd: dict[str, torch.Tensor] = {}
    for k, v in parts["unet"].state_dict().items():
        sd[_SVD_UNET_PREFIX + k] = make(k, v)
    for k, v in parts["vae"].state_dict().items():
        sd[_SVD_VAE_PREFIX + k] = make(k, v)
    clip = {k: make(k, v) for k, v in parts["clip"].state_dict().items()}
    for k, v in _to_open_clip(clip).items():
        sd[_SVD_CLIP_PREFIX + k] = v
    return sd


def _save_atomic(sd: dict[str, torch.Tensor], path: Path, metadata: dict | None = None) -> Path:
    """``save_file`` to a temporary file renamed into place (parallel writers never share a temp file)."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.partial")
    save_file(sd, str(tmp), metadata=metadata)
    os.replace(tmp, path)
    return path


def _cache_path(prefix: str, tag: str) -> Path:
    """``.cache/anti_i2v_tests/<prefix>-<tag>.safetensors``; other tags of ``prefix`` (stale recipes) are removed
    when this one is not there yet. ``.cache/`` is git-ignored: the weights are never committed."""
    path = SVD_CACHE_DIR / f"{prefix}-{tag}.safetensors"
    if not path.is_file():
        for old in SVD_CACHE_DIR.glob(f"{prefix}-*.safetensors"):
            old.unlink(missing_ok=True)
    return path


def _cached_random_module(meta: torch.nn.Module, prefix: str, version: int, seed: int) -> Path:
    """Random fp16 weights for every tensor of ``meta`` (a module on the meta device), written once per recipe,
    seed and key layout (the file name carries a hash of all three)."""
    import hashlib

    h = hashlib.sha256(f"v{version} seed{seed}".encode())
    for k, v in meta.state_dict().items():
        h.update(f"{k}:{tuple(v.shape)};".encode())
    path = _cache_path(prefix, h.hexdigest()[:12])
    if not path.is_file():
        g = torch.Generator().manual_seed(seed)
        _save_atomic({k: _uniform_fp16(v.shape, k, g) for k, v in meta.state_dict().items()}, path)
    return path


def _link_into(src: Path, models_dir: str | Path, folder: str, name: str) -> Path:
    """Put ``src`` at ``models_dir/folder/name`` (hard link, else a copy)."""
    dst = Path(models_dir) / folder / name
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists() or dst.is_symlink():
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)
    return dst


def write_svd_checkpoint(path: str | Path, *, seed: int = 0) -> Path:
    """Write a random-weight SVD checkpoint that ``ImageOnlyCheckpointLoader`` loads as SVD; returns the path.

    The file has the three prefixes of a real ``svd.safetensors`` (``model.diffusion_model.``,
    ``first_stage_model.``, ``conditioner.embedders.0.open_clip.model.visual.`` in open_clip naming), with the
    U-Net of :data:`SVD_UNET_CONFIG`, the SD VAE with the temporal decoder and a ViT-H/14 vision tower; see the
    module docstring for why these sizes are the smallest ComfyUI accepts. Written atomically (a temporary
    file renamed into place), fp16, about 1.88 GB.
    """
    return _save_atomic(svd_checkpoint_state_dict(seed=seed), Path(path),
                        {"anti_i2v_test": f"random-weight SVD v{SVD_CHECKPOINT_VERSION} seed {seed}"})


def _svd_manifest_tag(seed: int) -> str:
    """A short hash of the recipe, seed and every key and shape, so a cached file never outlives its layout."""
    import hashlib

    parts = _svd_meta_modules()
    h = hashlib.sha256(f"v{SVD_CHECKPOINT_VERSION} seed{seed}".encode())
    for name, module in parts.items():
        for k, v in module.state_dict().items():
            h.update(f"{name}:{k}:{tuple(v.shape)};".encode())
    return h.hexdigest()[:12]


def cached_svd_checkpoint(*, seed: int = 0) -> Path:
    """:func:`write_svd_checkpoint` once per recipe, seed and ComfyUI layout, kept in ``.cache/anti_i2v_tests``.

    The file name carries :func:`_svd_manifest_tag`; stale files of other tags are removed when a new one is
    written (each is 1.9 GB). ``.cache/`` is git-ignored: the weights are never committed.
    """
    path = _cache_path("svd-random", _svd_manifest_tag(seed))
    if not path.is_file():
        write_svd_checkpoint(path, seed=seed)
    return path


def install_svd_checkpoint(models_dir: str | Path, *, seed: int = 0, name: str = SVD_FILE) -> Path:
    """Put the cached random SVD checkpoint at ``models_dir/checkpoints/name`` (hard link, else a copy)."""
    return _link_into(cached_svd_checkpoint(seed=seed), models_dir, "checkpoints", name)


# ---------------------------------------------------------------------------------------- LTX-Video
LTXV_FILE = "ltx-video-2b-v0.9.5.safetensors"
#: the ``config`` metadata of :func:`write_tiny_ltxv_checkpoint`, in the layout of the real LTX-Video files
#: (``{"transformer": ..., "vae": ...}``; ``model_detection`` and ``comfy.sd.VAE`` read both from it). The VAE
#: keeps the real compression (patch 4 x three 2x2x2 steps = 32 in space, 8 in time, 128 latent channels;
#: ``Encoder`` fixes 128 base channels); one residual block on each side.
LTXV_CONFIG = {
    "transformer": {"num_attention_heads": 2, "attention_head_dim": 32, "num_layers": 2},
    "vae": {
        "_class_name": "CausalVideoAutoencoder", "dims": 3, "in_channels": 3, "out_channels": 3,
        "latent_channels": 128, "patch_size": 4, "norm_layer": "pixel_norm", "latent_log_var": "uniform",
        "use_quant_conv": False, "causal_decoder": False, "timestep_conditioning": False, "scaling_factor": 1.0,
        "encoder_blocks": [["res_x", {"num_layers": 1}], ["compress_all", {}], ["compress_all", {}],
                           ["compress_all", {}]],
        # reversed by the decoder: up_blocks.0 is the residual block (comfy.sd.VAE detects LTXV by its key)
        "decoder_blocks": [["compress_all", {"residual": True, "multiplier": 1}],
                           ["compress_all", {"residual": True, "multiplier": 1}],
                           ["compress_all", {"residual": True, "multiplier": 1}],
                           ["res_x", {"num_layers": 1, "inject_noise": False}]],
    },
}


def ltxv_checkpoint_state_dict(*, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights for ``comfy.ldm.lightricks.model.LTXVModel`` (inner width 64, two blocks, 4096-wide caption
    projection as T5-XXL gives) under ``model.diffusion_model.`` and the tiny ``VideoVAE`` of :data:`LTXV_CONFIG`
    under ``vae.``, as in a real LTX-Video checkpoint. Latent statistics: mean 0, std 1."""
    ensure_comfy_path()
    import comfy.ops
    from comfy.ldm.lightricks.model import LTXVModel
    from comfy.ldm.lightricks.vae.causal_video_autoencoder import VideoVAE

    tcfg = LTXV_CONFIG["transformer"]
    dit = LTXVModel(in_channels=128, cross_attention_dim=tcfg["num_attention_heads"] * tcfg["attention_head_dim"],
                    attention_head_dim=tcfg["attention_head_dim"], num_attention_heads=tcfg["num_attention_heads"],
                    caption_channels=4096, num_layers=tcfg["num_layers"], operations=comfy.ops.disable_weight_init)
    vae = VideoVAE(config=LTXV_CONFIG["vae"])
    sd = {f"model.diffusion_model.{k}": v for k, v in random_state_dict(dit, seed).items()}
    vsd = random_state_dict(vae, seed + 1)
    for k in vsd:
        if k.startswith("per_channel_statistics.") and "mean" in k.split(".")[-1] and "std" not in k:
            vsd[k] = torch.zeros_like(vsd[k])
    sd.update({f"vae.{k}": v for k, v in vsd.items()})
    return sd


def write_tiny_ltxv_checkpoint(folder: str | Path, *, seed: int = 0, name: str = LTXV_FILE) -> Path:
    """Write a tiny LTX-Video checkpoint (bf16, about 35 MB) that CheckpointLoaderSimple loads as ``LTXV``."""
    from safetensors.torch import save_file

    path = Path(folder) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    sd = {k: v.to(torch.bfloat16).contiguous() for k, v in ltxv_checkpoint_state_dict(seed=seed).items()}
    save_file(sd, str(path), metadata={"config": json.dumps(LTXV_CONFIG)})
    return path


def load_checkpoint(path: str | Path):
    """``comfy.sd.load_checkpoint_guess_config`` as CheckpointLoaderSimple calls it, in inference mode:
    ``(MODEL, CLIP or None, VAE)``."""
    ensure_comfy_path()
    import comfy.sd

    with torch.inference_mode():
        out = comfy.sd.load_checkpoint_guess_config(str(path), output_vae=True, output_clip=True)
    return out[:3]


def load_vae(path: str | Path):
    """``comfy.sd.VAE(sd=load_torch_file(path))`` as VAELoader calls it, in inference mode."""
    ensure_comfy_path()
    import comfy.sd
    import comfy.utils

    with torch.inference_mode():
        return comfy.sd.VAE(sd=comfy.utils.load_torch_file(str(path)))


# ---------------------------------------------------------------------------------------- Wan 2.2 TI2V-5B
WAN22_5B_FILE = "wan2.2_ti2v_5B_fp16.safetensors"
WAN22_VAE_FILE = "wan2.2_vae.safetensors"
#: bump when the recipe of :func:`cached_wan22_vae` changes (invalidates the cache)
WAN22_VAE_VERSION = 1


def write_tiny_wan22_ti2v(folder: str | Path, *, seed: int = 0, name: str = WAN22_5B_FILE) -> Path:
    """Write a tiny Wan 2.2 TI2V-5B diffusion model: 48 latent channels in and out, which ComfyUI detects as
    ``WAN22_T2V`` (``comfy.model_base.WAN22``) from ``head.head``'s width alone."""
    m = _wan_model("t2v", 48, out_dim=48)
    return _save(random_state_dict(m, seed), Path(folder) / name, torch.bfloat16)


def _wan22_vae_meta() -> torch.nn.Module:
    """The Wan 2.2 VAE as ``comfy.sd.VAE`` builds it (``dim`` 160 is fixed there: it cannot be made smaller)."""
    ensure_comfy_path()
    from comfy.ldm.wan.vae2_2 import WanVAE

    with torch.device("meta"):
        return WanVAE(dim=160, z_dim=48, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                      temperal_downsample=[False, True, True], dropout=0.0)


def cached_wan22_vae(*, seed: int = 0) -> Path:
    """A random-weight ``wan2.2_vae.safetensors`` (705 M parameters, fp16, 1.4 GB) that VAELoader detects as the
    Wan 2.2 VAE, written once per recipe and ComfyUI layout into ``.cache/anti_i2v_tests`` (never committed)."""
    return _cached_random_module(_wan22_vae_meta(), "wan22-vae-random", WAN22_VAE_VERSION, seed)


def install_wan22_vae(models_dir: str | Path, *, seed: int = 0, name: str = WAN22_VAE_FILE) -> Path:
    """Put the cached random Wan 2.2 VAE at ``models_dir/vae/name`` (hard link, else a copy)."""
    return _link_into(cached_wan22_vae(seed=seed), models_dir, "vae", name)


def cached_clip_vision_h(*, seed: int = 0) -> Path:
    """The ViT-H/14 tower of :func:`cached_svd_checkpoint` as a ``clip_vision_h.safetensors`` (open_clip ``visual.*``
    keys, which ``comfy.clip_vision.load`` converts), written once next to it in ``.cache/anti_i2v_tests`` (1.3 GB)."""
    from safetensors import safe_open

    svd = cached_svd_checkpoint(seed=seed)
    path = _cache_path("clip-vision-h-random", svd.name[len("svd-random-"):-len(".safetensors")])
    if not path.is_file():
        cut = len(_SVD_CLIP_PREFIX) - len("visual.")
        with safe_open(str(svd), framework="pt") as f:
            sd = {k[cut:]: f.get_tensor(k) for k in f.keys() if k.startswith(_SVD_CLIP_PREFIX)}
        _save_atomic(sd, path, {"anti_i2v_test": f"random-weight ViT-H/14 of {svd.name}"})
    return path


def install_clip_vision_h(models_dir: str | Path, *, seed: int = 0, name: str = CLIP_VISION_H_FILE) -> Path:
    """Put the cached random ViT-H at ``models_dir/clip_vision/name`` (hard link, else a copy)."""
    return _link_into(cached_clip_vision_h(seed=seed), models_dir, "clip_vision", name)


# ---------------------------------------------------------------------------------------- HunyuanVideo I2V
HUNYUAN_I2V_FILE = "hunyuan_video_image_to_video_720p_bf16.safetensors"
HUNYUAN_T2V_FILE = "hunyuan_video_t2v_720p_bf16.safetensors"
HUNYUAN_VAE_FILE = "hunyuan_video_vae_bf16.safetensors"
#: bump when the recipe of :func:`cached_hunyuan_vae` changes (invalidates the cache)
HUNYUAN_VAE_VERSION = 1

#: ComfyUI's module names -> the released checkpoint's names (the inverse of
#: ``supported_models.HunyuanVideo.process_unet_state_dict``; checked by a round trip in the writer)
_HUNYUAN_TO_RELEASED = (
    ("mlp.0.", "mlp.fc1."),
    ("mlp.2.", "mlp.fc2."),
    ("txt_in.t_embedder.in_layer.", "txt_in.t_embedder.mlp.0."),
    ("txt_in.t_embedder.out_layer.", "txt_in.t_embedder.mlp.2."),
    ("txt_in.c_embedder.in_layer.", "txt_in.c_embedder.linear_1."),
    ("txt_in.c_embedder.out_layer.", "txt_in.c_embedder.linear_2."),
    ("_in.in_layer.", "_in.mlp.0."),
    ("_in.out_layer.", "_in.mlp.2."),
    ("_mod.lin.", "_mod.linear."),
    (".modulation.lin.", ".modulation.linear."),
    ("_attn.qkv.", "_attn_qkv."),
    ("_attn.proj.", "_attn_proj."),
    ("_attn.norm.query_norm.scale", "_attn_q_norm.weight"),
    ("_attn.norm.key_norm.scale", "_attn_k_norm.weight"),
    (".norm.query_norm.scale", ".q_norm.weight"),
    (".norm.key_norm.scale", ".k_norm.weight"),
)


def write_tiny_hunyuan_video(folder: str | Path, *, in_channels: int = 33, seed: int = 0,
                             name: str = HUNYUAN_I2V_FILE) -> Path:
    """Write a tiny HunyuanVideo diffusion model in the released checkpoint's key names (bf16 safetensors).

    ``comfy.ldm.hunyuan_video.model.HunyuanVideo`` with hidden 128 (one 128-wide head: ComfyUI derives the heads
    from ``hidden / 128`` and the rotary axes 16 + 56 + 56), 2 double and 2 single blocks, the real text widths
    (LLaVA 4096, CLIP-L pooled 768) and guidance embedding. ``in_channels`` 33 is HunyuanVideo I2V (UNETLoader
    builds ``HunyuanVideoI2V``), 16 text-to-video (``HunyuanVideo``), for the wrong-model error.
    """
    ensure_comfy_path()
    import comfy.ops
    import comfy.supported_models
    from comfy.ldm.hunyuan_video.model import HunyuanVideo

    m = HunyuanVideo(image_model="hunyuan_video", in_channels=in_channels, out_channels=16, vec_in_dim=768,
                     context_in_dim=4096, hidden_size=128, mlp_ratio=4.0, num_heads=1, depth=2,
                     depth_single_blocks=2, axes_dim=[16, 56, 56], theta=256, patch_size=[1, 2, 2], qkv_bias=True,
                     guidance_embed=True, byt5=False, meanflow=False, use_cond_type_embedding=False,
                     vision_in_dim=None, operations=comfy.ops.disable_weight_init)
    sd = random_state_dict(m, seed)
    out = {}
    for k, v in sd.items():
        released = k
        for a, b in _HUNYUAN_TO_RELEASED:
            released = released.replace(a, b)
        out[released] = v
    back = comfy.supported_models.HunyuanVideo.process_unet_state_dict(None, dict(out))
    if set(back) != set(sd):
        raise AssertionError(f"HunyuanVideo key round trip failed: {sorted(set(back) ^ set(sd))[:6]}")
    return _save(out, Path(folder) / name, torch.bfloat16)


def _hunyuan_vae_meta() -> torch.nn.Module:
    """HunyuanVideo's causal 3-D VAE as ``comfy.sd.VAE`` builds it (``ch`` 128 is fixed there)."""
    ensure_comfy_path()
    from comfy.ldm.models.autoencoder import AutoencoderKL

    ddconfig = {"double_z": True, "z_channels": 16, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
                "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0,
                "conv3d": True, "time_compress": 4}
    with torch.device("meta"):
        return AutoencoderKL(ddconfig=ddconfig, embed_dim=16)


def cached_hunyuan_vae(*, seed: int = 0) -> Path:
    """A random-weight ``hunyuan_video_vae_bf16.safetensors`` (fp16) that VAELoader detects as HunyuanVideo's VAE,
    written once per recipe and ComfyUI layout into ``.cache/anti_i2v_tests`` (never committed)."""
    return _cached_random_module(_hunyuan_vae_meta(), "hunyuan-vae-random", HUNYUAN_VAE_VERSION, seed)


def install_hunyuan_vae(models_dir: str | Path, *, seed: int = 0, name: str = HUNYUAN_VAE_FILE) -> Path:
    """Put the cached random HunyuanVideo VAE at ``models_dir/vae/name`` (hard link, else a copy)."""
    return _link_into(cached_hunyuan_vae(seed=seed), models_dir, "vae", name)
