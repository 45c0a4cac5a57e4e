"""Tiny random-weight models in ComfyUI's own formats, built from ComfyUI's classes (tests only).

* :func:`write_tiny_wan21_i2v` - ``models/diffusion_models/wan2.1_i2v_480p_14B_bf16.safetensors``: a
  ``comfy.ldm.wan.model.WanModel(model_type="i2v", in_dim=36, dim=128, ffn_dim=256, num_heads=1, num_layers=2,
  out_dim=16)``; UNETLoader detects it as ``WAN21_I2V`` from key names and shapes alone (about 12 MB in bf16).
* :func:`write_tiny_wan_vae` - ``models/vae/wan_2.1_vae.safetensors``: ``comfy.ldm.wan.vae.WanVAE(dim=16,
  z_dim=16)``; VAELoader detects the Wan 2.1 VAE and reads ``dim`` from ``decoder.head.0.gamma``.
* :func:`write_tiny_wan_t2v` - a Wan 2.1 *text*-to-video file (16 input channels), for the "not I2V" error.
* :func:`tiny_clip_vision` - a ``comfy.clip_vision.ClipVisionModel`` from a tiny JSON config (hidden 1280 as
  Wan's ``img_emb`` requires, one layer, 28-pixel input).
* :func:`tiny_svd` - SVD as ``(MODEL, VAE, CLIP_VISION)`` built in memory from ComfyUI's classes.

Why no ``svd.safetensors`` writer: ComfyUI matches a checkpoint to ``supported_models.SVD_img2vid`` only when
its U-Net has ``model_channels == 320`` and ``context_dim == 1024`` (1.5 B parameters), and
``ImageOnlyCheckpointLoader`` builds the CLIP vision tower from fixed ViT-H/G configs (632 M+ parameters):
together several GB and minutes of CPU per forward on the shared 2-core test machine. :func:`tiny_svd`
instead builds the same ComfyUI classes (``model_base.SVD_img2vid`` from a ``supported_models.SVD_img2vid``
config, ``comfy.sd.VAE(config=...)``, ``ClipVisionModel``) with tiny configs, under ``torch.inference_mode`` so
the weights are inference tensors exactly as ComfyUI's loaders leave them.
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
COMFY_DIR = REPO_ROOT / ".cache" / "comfyui"

WAN_I2V_FILE = "wan2.1_i2v_480p_14B_bf16.safetensors"
WAN_T2V_FILE = "wan2.1_t2v_1.3B_bf16.safetensors"
WAN_VAE_FILE = "wan_2.1_vae.safetensors"
SVD_FILE = "svd.safetensors"  # not written: see the module docstring

__all__ = [
    "COMFY_DIR",
    "WAN_I2V_FILE",
    "WAN_T2V_FILE",
    "WAN_VAE_FILE",
    "ensure_comfy_path",
    "random_state_dict",
    "write_tiny_wan21_i2v",
    "write_tiny_wan_t2v",
    "write_tiny_wan_vae",
    "tiny_clip_vision",
    "tiny_svd",
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


def _wan_model(model_type: str, in_dim: int) -> torch.nn.Module:
    ensure_comfy_path()
    import comfy.ops
    from comfy.ldm.wan.model import WanModel

    return WanModel(model_type=model_type, in_dim=in_dim, dim=128, ffn_dim=256, num_heads=1, num_layers=2,
                    out_dim=16, text_dim=4096, operations=comfy.ops.disable_weight_init)


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


def write_tiny_wan_t2v(folder: str | Path, *, seed: int = 0, name: str = WAN_T2V_FILE) -> Path:
    """Write a tiny Wan 2.1 text-to-video diffusion model (16 input channels) as ``folder/name``."""
    m = _wan_model("t2v", 16)
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
    ``comfy.sd.VAE(config=...)`` (an ``AutoencoderKL`` with ``ch=32``, GroupNorm's minimum). Weights are inference tensors, as
    after ComfyUI's loaders.
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
