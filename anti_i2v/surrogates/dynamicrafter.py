"""DynamiCrafter (LVDM 3-D U-Net) surrogate adapter, its checkpoint converter and its loader.

DynamiCrafter (Xing et al., "DynamiCrafter: Animating Open-domain Images with Video Diffusion Priors", ECCV 2024;
Doubiiu/DynamiCrafter) is one of the paper's three backbones. Its networks are re-implemented in
:mod:`.dynamicrafter_model` with the module names of the official checkpoint; the VAE is diffusers'
``AutoencoderKL`` (SD-2 KL-f8) under a key-name mapping; the OpenCLIP ViT-H/14 towers are open_clip's own classes
built without pretrained weights.

**How the photo enters** (``scripts/evaluation/inference.py`` ``image_guided_synthesis``, rebuilt differentiably):

* **Concatenated latent**: the photo in [-1, 1] is encoded by the VAE (per frame; one frame here) and multiplied by
  ``scale_factor`` (0.18215); that latent is repeated over the T frames and concatenated on channels after the
  noisy latent (4 + 4 = 8 U-Net input channels). Upstream samples the VAE posterior; this adapter uses its mean
  (mode), as the diffusers I2V pipelines do: the SD VAE's posterior std is small and a deterministic conditioning
  keeps both passes of an iteration comparable.
* **Image tokens**: kornia bicubic resize to 224 x 224 (``align_corners=True``, antialiased) of the [-1, 1] photo,
  back to [0, 1], CLIP mean/std normalisation, the OpenCLIP ViT-H/14 visual tower's *all 257 tokens before
  ``ln_post``*, then the Resampler: 16 queries per frame x 16 frames = 256 tokens of 1024, placed **after the 77
  text tokens** in the cross-attention context. The U-Net gives frame k its own 16 tokens when the context has
  77 + 16 T tokens (T = 16 for the published models); with another frame count every frame reads all 256 (the
  upstream U-Net's rule, kept as is). Each spatial cross-attention splits the context at 77: text keys through
  ``to_k``/``to_v``, image keys through ``to_k_ip``/``to_v_ip``, outputs added.
* **Text**: a cached prompt embedding (77 x 1024, OpenCLIP ViT-H text tower, penultimate layer, ``ln_final``) in
  ``prompt_embeds.safetensors``: the converter computes it once from the checkpoint's own text encoder
  (``cond_stage_model.model.*``) for the empty prompt (or ``--prompt``); the text encoder never runs in the loop.
* **fps / frame stride**: ``fs`` (24 for the 512 model, 10 for 1024, frame stride 3 for 256) through
  ``fps_embedding`` (the 256 checkpoint names it ``framestride_embed``; the converter renames it, as upstream's
  loader does).

**Diffusion** (``lvdm/models/ddpm3d.py``): 1000 steps, betas ``linspace(sqrt(0.00085), sqrt(0.012))^2``; the 512
and 1024 models rescale them to zero terminal SNR (Lin et al. 2024, Alg. 1) and predict v; the 256 model predicts
epsilon on the plain schedule. The 512 / 1024 models train with "dynamic rescale": x0 is multiplied by
``s_t = linspace(1, base_scale, 400)[t]`` (``base_scale`` after t = 400) before noising, and their DDIM sampler
undoes it; :meth:`DynamiCrafterSurrogate.noisy_latent` and :meth:`~DynamiCrafterSurrogate.prediction_target` follow
training: ``z_t = sqrt(ab_t) s_t x0 + sqrt(1 - ab_t) eps``, ``v = sqrt(ab_t) eps - sqrt(1 - ab_t) s_t x0``.

**Blocks** (the U-Net's own lists, in forward order): ``input_blocks.0``, ``init_attn`` (the temporal attention
after the first convolution), ``input_blocks.1 ..``, ``middle_block``, ``output_blocks.*``: 26 blocks for the
published models. Outputs are (B * T, C, h, w). IRC pairs a shallow down block with the up block its skip
connection feeds (equal shapes; :meth:`DynamiCrafterSurrogate.default_objective`).

**Files**: the official ``model.ckpt`` is a pickled Lightning file (10.4 GB). :func:`convert_checkpoint`
(``anti-i2v convert-dynamicrafter model.ckpt OUT_DIR``) reads it with ``torch.load(weights_only=True)`` - never
unpickling arbitrary objects - and writes ``model.safetensors`` (keys ``model.diffusion_model.*``,
``first_stage_model.*``, ``embedder.model.visual.*``, ``image_proj_model.*``: the real names), the prompt
embedding and ``dynamicrafter.json`` (the configuration). :func:`load_surrogate` reads that folder.
"""

from __future__ import annotations

import copy
import json
import os
import pickle
import shutil
import tempfile
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor, nn

from .base import Conditioning, FeatureRequest, NoiseDraw, Surrogate, SurrogateError
from .dynamicrafter_model import RESAMPLER_512, UNET_512, LVDMUNet, Resampler, vae_ldm_key, vae_weight_to_ldm

__all__ = [
    "DynamiCrafterSurrogate",
    "convert_checkpoint",
    "read_checkpoint",
    "tiny_state_dict",
    "write_tiny_checkpoint",
    "beta_schedule",
    "CONFIG_FILE",
    "WEIGHTS_FILE",
    "VARIANTS",
    "TINY_CONFIG",
]

CONFIG_FILE = "dynamicrafter.json"
WEIGHTS_FILE = "model.safetensors"
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
TEXT_TOKENS = 77
#: key prefixes of the official checkpoint, and which of them the converted folder keeps
PREFIXES = {
    "unet": "model.diffusion_model.",
    "vae": "first_stage_model.",
    "vision": "embedder.model.visual.",
    "resampler": "image_proj_model.",
    "text": "cond_stage_model.model.",
}
_KEPT = ("unet", "vae", "vision", "resampler")

_VISION_H14 = dict(image_size=224, layers=32, width=1280, head_width=80, patch_size=14, embed_dim=1024)
_TEXT_H14 = dict(context_length=77, vocab_size=49408, width=1024, heads=16, layers=24, embed_dim=1024)
_VAE_F8 = dict(block_out_channels=[128, 256, 512, 512], layers_per_block=2, latent_channels=4)


def _variant(resolution, default_fs, parameterization, zero_snr, dynamic, base_scale, learnable):
    unet = dict(UNET_512, default_fs=default_fs, image_cross_attention_scale_learnable=learnable)
    return {
        "_class_name": "DynamiCrafter",
        "resolution": list(resolution),
        "unet": unet,
        "resampler": dict(RESAMPLER_512),
        "vae": dict(_VAE_F8),
        "vision": dict(_VISION_H14),
        "text": dict(_TEXT_H14),
        "diffusion": {
            "timesteps": 1000, "linear_start": 0.00085, "linear_end": 0.012, "parameterization": parameterization,
            "rescale_betas_zero_snr": zero_snr, "use_dynamic_rescale": dynamic, "base_scale": base_scale,
            "turning_step": 400, "scale_factor": 0.18215,
        },
        "sampling": {"timestep_spacing": "uniform_trailing" if zero_snr else "uniform",
                     "guidance_rescale": 0.7 if zero_snr else 0.0, "guidance_scale": 7.5, "eta": 1.0},
    }


#: the published models (configs/inference_{256,512,1024}_v1.0.yaml and scripts/run.sh)
VARIANTS = {
    "256": _variant((256, 256), 3, "eps", False, False, 1.0, True),
    "512": _variant((320, 512), 24, "v", True, True, 0.7, False),
    "1024": _variant((576, 1024), 10, "v", True, True, 0.3, False),
}

#: a tiny configuration of the same architecture (tests, demos): 64 x 64 pixels, 4 frames
TINY_CONFIG = {
    **copy.deepcopy(VARIANTS["512"]),
    "variant": "tiny",
    "resolution": [64, 64],
    "unet": dict(UNET_512, model_channels=32, attention_resolutions=[1, 2], num_res_blocks=1, channel_mult=[1, 2],
                 num_head_channels=16, context_dim=32, temporal_length=4),
    "resampler": dict(dim=32, depth=1, dim_head=16, heads=2, num_queries=16, embedding_dim=64, output_dim=32,
                      ff_mult=4, video_length=4),
    "vae": dict(block_out_channels=[32, 32, 32, 32], layers_per_block=1, latent_channels=4),
    "vision": dict(image_size=224, layers=2, width=64, head_width=32, patch_size=32, embed_dim=32),
    "text": dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=2, embed_dim=32),
}


# --------------------------------------------------------------------------- schedule
def beta_schedule(cfg: dict) -> Tensor:
    """The training betas (float64): LDM's "linear" schedule, rescaled to zero terminal SNR when configured.

    ``betas = linspace(sqrt(linear_start), sqrt(linear_end), T)^2``; zero-SNR (Lin et al. 2024, Alg. 1):
    ``sqrt(ab) <- (sqrt(ab) - sqrt(ab_T)) * sqrt(ab_1) / (sqrt(ab_1) - sqrt(ab_T))``, betas recovered from it.
    """
    n = int(cfg["timesteps"])
    betas = torch.linspace(float(cfg["linear_start"]) ** 0.5, float(cfg["linear_end"]) ** 0.5, n,
                           dtype=torch.float64) ** 2
    if cfg.get("rescale_betas_zero_snr"):
        sq = torch.cumprod(1.0 - betas, 0).sqrt()
        first, last = sq[0].clone(), sq[-1].clone()
        sq = (sq - last) * first / (first - last)
        ab = sq**2
        alphas = torch.cat([ab[:1], ab[1:] / ab[:-1]])
        betas = 1.0 - alphas
    return betas


def _scale_arr(cfg: dict) -> Tensor:
    """Dynamic-rescale factors s_t (float64): linspace(1, base_scale, turning_step) then base_scale."""
    n = int(cfg["timesteps"])
    if not cfg.get("use_dynamic_rescale"):
        return torch.ones(n, dtype=torch.float64)
    turn, base = int(cfg["turning_step"]), float(cfg["base_scale"])
    return torch.cat([torch.linspace(1.0, base, turn, dtype=torch.float64),
                      torch.full((n,), base, dtype=torch.float64)])[:n]


# --------------------------------------------------------------------------- building blocks
def _vision_tower(cfg: dict) -> nn.Module:
    """open_clip's ``VisionTransformer`` for ``cfg`` (no weights downloaded: random init, then loaded)."""
    from open_clip.model import CLIPVisionCfg, _build_vision_tower

    c = {k: v for k, v in cfg.items() if k != "embed_dim"}
    return _build_vision_tower(int(cfg["embed_dim"]), CLIPVisionCfg(**c))


def _text_tower(cfg: dict) -> nn.Module:
    from open_clip.model import CLIPTextCfg, _build_text_tower

    c = {k: v for k, v in cfg.items() if k != "embed_dim"}
    return _build_text_tower(int(cfg["embed_dim"]), CLIPTextCfg(**c))


def _vae(cfg: dict) -> nn.Module:
    from diffusers import AutoencoderKL

    n = len(cfg["block_out_channels"])
    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n, block_out_channels=tuple(cfg["block_out_channels"]),
        layers_per_block=int(cfg["layers_per_block"]), latent_channels=int(cfg["latent_channels"]),
        norm_num_groups=32, scaling_factor=0.18215,
    )


def _vae_expected(vae: nn.Module) -> dict[str, str]:
    """{LDM key: diffusers key} for every tensor of a diffusers ``AutoencoderKL``."""
    n = len(vae.config.block_out_channels)
    return {vae_ldm_key(k, n): k for k in vae.state_dict()}


def _build(config: dict, device: str | torch.device | None = None):
    """The four networks of ``config`` (random init; ``device="meta"`` builds shapes only)."""
    ctx = torch.device(device) if device is not None else torch.device("cpu")
    with ctx:
        unet = LVDMUNet(**config["unet"])
        vae = _vae(config["vae"])
        vision = _vision_tower(config["vision"])
        resampler = Resampler(**config["resampler"])
    return unet, vae, vision, resampler


def _expected_keys(unet, vae, vision, resampler) -> dict[str, tuple[int, ...]]:
    """{real checkpoint key: shape} of what the converted folder must hold."""
    out: dict[str, tuple[int, ...]] = {}
    for k, v in unet.state_dict().items():
        out[PREFIXES["unet"] + k] = tuple(v.shape)
    sd = vae.state_dict()
    for ldm, k in _vae_expected(vae).items():
        out[PREFIXES["vae"] + ldm] = tuple(vae_weight_to_ldm(k, sd[k]).shape)
    for k, v in vision.state_dict().items():
        out[PREFIXES["vision"] + k] = tuple(v.shape)
    for k, v in resampler.state_dict().items():
        out[PREFIXES["resampler"] + k] = tuple(v.shape)
    return out


def _load_modules(config: dict, tensors: dict[str, Tensor], where: str):
    """Build the networks and load them from ``tensors`` by the real key names; SurrogateError on a mismatch."""
    unet, vae, vision, resampler = _build(config)
    expected = _expected_keys(unet, vae, vision, resampler)
    missing = [k for k in expected if k not in tensors]
    if missing:
        raise SurrogateError(f"{where}: {len(missing)} tensor(s) of the DynamiCrafter model are missing, e.g. "
                             f"{', '.join(missing[:3])}")
    bad = [f"{k} {tuple(tensors[k].shape)} (expected {shape})" for k, shape in expected.items()
           if tuple(tensors[k].shape) != shape]
    if bad:
        raise SurrogateError(f"{where}: tensor shapes do not match the configuration: {'; '.join(bad[:3])}")

    def part(prefix):
        return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}

    unet.load_state_dict(part(PREFIXES["unet"]), strict=True)
    vsd = part(PREFIXES["vae"])
    ref = vae.state_dict()
    vae.load_state_dict({k: vsd[ldm].reshape(ref[k].shape) for ldm, k in _vae_expected(vae).items()}, strict=True)
    vision.load_state_dict(part(PREFIXES["vision"]), strict=True)
    resampler.load_state_dict(part(PREFIXES["resampler"]), strict=True)
    for m in (unet, vae, vision, resampler):
        m.eval()
        m.requires_grad_(False)
    return unet, vae, vision, resampler


def _vision_tokens(vision: nn.Module, x: Tensor) -> Tensor:
    """All tokens of the OpenCLIP visual tower before ``ln_post`` (``FrozenOpenCLIPImageEmbedderV2``)."""
    x = vision.conv1(x)
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    cls = vision.class_embedding.to(x.dtype) + torch.zeros(x.shape[0], 1, x.shape[-1], dtype=x.dtype, device=x.device)
    x = torch.cat([cls, x], dim=1) + vision.positional_embedding.to(x.dtype)
    x = vision.ln_pre(vision.patch_dropout(x))
    tr = vision.transformer
    if not getattr(tr, "batch_first", True):
        return tr(x.transpose(0, 1)).transpose(0, 1)
    return tr(x)


def text_embedding(text: nn.Module, tokens: Tensor) -> Tensor:
    """``FrozenOpenCLIPEmbedder(layer="penultimate")``: token + position embedding, every residual block but the
    last with the causal mask, ``ln_final``. (B, 77) token ids -> (B, 77, width)."""
    x = text.token_embedding(tokens) + text.positional_embedding
    mask = text.attn_mask
    tr = text.transformer
    batch_first = getattr(tr, "batch_first", True)
    if not batch_first:
        x = x.transpose(0, 1)
    for block in tr.resblocks[:-1]:
        x = block(x, attn_mask=mask)
    if not batch_first:
        x = x.transpose(0, 1)
    return text.ln_final(x)


# --------------------------------------------------------------------------- checkpoint reading and conversion
def read_checkpoint(path: str | Path) -> dict[str, Tensor]:
    """The state dict of a DynamiCrafter checkpoint: a Lightning ``.ckpt`` (``{"state_dict": ...}``), a plain
    state dict, or a ``.safetensors`` file. ``.ckpt`` files are read with ``torch.load(weights_only=True)``:
    tensors and plain containers only, never arbitrary pickled objects.

    Raises:
        SurrogateError: the file is missing, holds pickled objects other than tensors, or no state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise SurrogateError(f"checkpoint {str(path)!r} does not exist or is not a file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    obj = None
    for mmap in (True, False):
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=mmap)
            break
        except pickle.UnpicklingError as exc:
            first = str(exc).strip().splitlines()
            why = next((ln for ln in first if "Unsupported" in ln or "global" in ln), first[0] if first else "")
            raise SurrogateError(
                f"checkpoint {str(path)!r} holds pickled objects other than tensors ({why.strip()}); it is refused "
                "because unpickling them could run code. Re-save its state_dict with torch.save or as safetensors"
            ) from None
        except RuntimeError as exc:
            if mmap and "mmap" in str(exc):
                continue  # an old (non-zip) torch.save file: read it without mmap
            raise SurrogateError(f"checkpoint {str(path)!r}: cannot read it ({exc})") from None
        except (OSError, EOFError, ValueError) as exc:
            raise SurrogateError(f"checkpoint {str(path)!r}: cannot read it ({exc})") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    elif isinstance(obj, dict) and isinstance(obj.get("module"), dict):  # DeepSpeed layout (upstream strips 16 chars)
        obj = {k[16:]: v for k, v in obj["module"].items()}
    if not isinstance(obj, dict) or not any(isinstance(v, Tensor) for v in obj.values()):
        raise SurrogateError(f"checkpoint {str(path)!r} holds no state dict of tensors")
    return {k: v for k, v in obj.items() if isinstance(v, Tensor)}


def _rename_legacy(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """The 256 model's ``framestride_embed`` is the U-Net's ``fps_embedding`` (upstream's loader renames it too)."""
    return {k.replace("framestride_embed", "fps_embedding"): v for k, v in sd.items()}


def _detect_variant(sd: dict[str, Tensor], path: Path) -> str:
    if any(k.endswith(".attn2.alpha") for k in sd):  # learnable image cross-attention scale: only the 256 model
        return "256"
    for name in ("1024", "512"):
        if name in str(path.resolve()):
            return name
    raise SurrogateError(
        f"{str(path)!r}: cannot tell whether this is the 512 or the 1024 DynamiCrafter model from its weights (they "
        "share one architecture); pass variant='512' or '1024' (CLI: --variant)")


def convert_checkpoint(
    checkpoint: str | Path,
    out_dir: str | Path,
    *,
    variant: str = "auto",
    config: dict | str | Path | None = None,
    prompt: str = "",
    dtype: torch.dtype | None = None,
) -> Path:
    """Convert an official DynamiCrafter checkpoint into a folder :func:`load_surrogate` reads.

    Writes ``model.safetensors`` (the U-Net, VAE, OpenCLIP visual tower and Resampler under their real key names),
    ``prompt_embeds.safetensors`` (the OpenCLIP text embedding of ``prompt``, computed once from the checkpoint's
    ``cond_stage_model``: the text encoder is not needed afterwards) and ``dynamicrafter.json``. Files appear only
    when everything succeeded (written to a temporary folder first).

    Args:
        checkpoint: ``model.ckpt`` (read with ``torch.load(weights_only=True)``) or a ``.safetensors`` state dict.
        out_dir: output folder (created; existing converted files in it are replaced).
        variant: ``"256"``, ``"512"``, ``"1024"`` or ``"auto"`` (256 is told by its weights; 512 / 1024 by a
            "512" / "1024" in the checkpoint's path, else an error asks for it).
        config: a configuration (dict or JSON path, :data:`TINY_CONFIG`'s shape) instead of a published variant.
        prompt: the text the cached prompt embedding encodes (upstream evaluates with captions or "").
        dtype: store the weights in this dtype (e.g. ``torch.float16`` halves the folder); default: as they are.

    Raises:
        SurrogateError: unreadable or unsafe checkpoint, unknown variant, missing or mis-shaped tensors.
    """
    import open_clip
    from safetensors.torch import save_file

    ckpt = Path(checkpoint)
    sd = _rename_legacy(read_checkpoint(ckpt))
    if config is not None:
        if not isinstance(config, dict):
            try:
                config = json.loads(Path(config).read_text())
            except (OSError, ValueError) as exc:
                raise SurrogateError(f"config {str(config)!r}: cannot read it as JSON ({exc})") from None
        cfg = copy.deepcopy(config)
        cfg.setdefault("variant", "custom")
    else:
        if variant == "auto":
            variant = _detect_variant(sd, ckpt)
        if variant not in VARIANTS:
            raise SurrogateError(f"variant must be one of auto, {', '.join(VARIANTS)}, got {variant!r}")
        cfg = copy.deepcopy(VARIANTS[variant])
        cfg["variant"] = variant
    for part, prefix in PREFIXES.items():
        if not any(k.startswith(prefix) for k in sd):
            raise SurrogateError(f"{str(ckpt)!r} has no {part} weights (no key starts with {prefix!r}): not a "
                                 "DynamiCrafter checkpoint")
    expected = _expected_keys(*_build(cfg, device="meta"))
    missing = [k for k in expected if k not in sd]
    bad = [f"{k} {tuple(sd[k].shape)} (expected {s})" for k, s in expected.items()
           if k in sd and tuple(sd[k].shape) != s]
    if missing or bad:
        what = (f"missing {len(missing)} tensor(s), e.g. {', '.join(missing[:3])}" if missing else
                f"shapes differ: {'; '.join(bad[:3])}")
        raise SurrogateError(f"{str(ckpt)!r} does not match the DynamiCrafter {cfg['variant']} configuration: {what}")
    # the cached prompt embedding from the checkpoint's own OpenCLIP text tower
    text = _text_tower(cfg["text"])
    tsd = {k[len(PREFIXES["text"]):]: v for k, v in sd.items() if k.startswith(PREFIXES["text"])}
    own = text.state_dict()
    need = [k for k in own if k != "text_projection"]
    lost = [k for k in need if k not in tsd]
    if lost:
        raise SurrogateError(f"{str(ckpt)!r}: the text encoder (cond_stage_model) lacks {', '.join(lost[:3])}")
    text.load_state_dict({k: tsd[k].reshape(own[k].shape) for k in need}, strict=False)
    text.eval()
    with torch.no_grad():
        tokens = open_clip.tokenize([prompt], context_length=int(cfg["text"]["context_length"]))
        emb = text_embedding(text, tokens).float().contiguous()
    del text
    out = {}
    for k in expected:
        v = sd[k]
        if dtype is not None and v.is_floating_point():
            v = v.to(dtype)
        out[k] = v.contiguous()
    cfg["converted_from"] = ckpt.name
    cfg["prompt"] = prompt
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=out_dir))
    try:
        save_file(out, str(tmp / WEIGHTS_FILE), metadata={"format": "pt", "source": "DynamiCrafter"})
        save_file({"prompt_embeds": emb}, str(tmp / "prompt_embeds.safetensors"))
        (tmp / CONFIG_FILE).write_text(json.dumps(cfg, indent=1) + "\n")
        for name in (WEIGHTS_FILE, "prompt_embeds.safetensors", CONFIG_FILE):  # the config last: marks completion
            os.replace(tmp / name, out_dir / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


# --------------------------------------------------------------------------- tiny models in the real layout
def tiny_state_dict(seed: int = 0, config: dict | None = None) -> dict[str, Tensor]:
    """A random-weight state dict of :data:`TINY_CONFIG` in the official checkpoint's key layout (incl. the text
    encoder under ``cond_stage_model.model.*``). Zero-initialised upstream layers get random values here so that
    every path carries signal."""
    cfg = config or TINY_CONFIG
    torch.manual_seed(seed)
    unet, vae, vision, resampler = _build(cfg)
    text = _text_tower(cfg["text"])
    with torch.no_grad():
        for m in (unet, resampler, vision, text):
            for name, p in m.named_parameters():
                if name.endswith("alpha"):
                    p.fill_(0.3)
                elif p.ndim >= 2 and float(p.abs().max()) == 0.0:
                    p.normal_(0.0, 0.02)
    sd: dict[str, Tensor] = {}
    sd.update({PREFIXES["unet"] + k: v for k, v in unet.state_dict().items()})
    vsd = vae.state_dict()
    n = len(vae.config.block_out_channels)
    sd.update({PREFIXES["vae"] + vae_ldm_key(k, n): vae_weight_to_ldm(k, v) for k, v in vsd.items()})
    sd.update({PREFIXES["vision"] + k: v for k, v in vision.state_dict().items()})
    sd.update({PREFIXES["resampler"] + k: v for k, v in resampler.state_dict().items()})
    sd.update({PREFIXES["text"] + k: v for k, v in text.state_dict().items()})
    return {k: v.detach().clone().contiguous() for k, v in sd.items()}


def write_tiny_checkpoint(path: str | Path, seed: int = 0) -> Path:
    """A tiny checkpoint in the official Lightning layout (``{"state_dict": ..., "epoch", "global_step"}``, saved
    with ``torch.save``; weights-only loadable) and its configuration next to it as ``<name>.json``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": tiny_state_dict(seed), "epoch": 0, "global_step": 0}, str(path))
    path.with_suffix(".json").write_text(json.dumps(TINY_CONFIG, indent=1) + "\n")
    return path


# --------------------------------------------------------------------------- adapter
class DynamiCrafterSurrogate(Surrogate):
    """DynamiCrafter image-to-video as an Anti-I2V surrogate (see the module docstring).

    Args:
        unet: :class:`~.dynamicrafter_model.LVDMUNet`.
        vae: diffusers ``AutoencoderKL`` (SD-2 KL-f8 configuration).
        vision: open_clip ``VisionTransformer`` (ViT-H/14).
        resampler: :class:`~.dynamicrafter_model.Resampler`.
        config: the folder's configuration (``dynamicrafter.json``; :data:`VARIANTS` / :data:`TINY_CONFIG` shape).
        prompt_embeds: (1, 77, D) cached text embedding, a safetensors path, or None
            (``<folder>/prompt_embeds.safetensors``, else zeros).
        num_frames: video frames (= latent frames; 16 for the published models).
        fps: the fps / frame-stride condition; the variant's default (24 / 10 / 3) when None.
        working_size: (height, width), multiples of the U-Net's size multiple; the variant's resolution when None.
    """

    family = "dynamicrafter"
    generates_latents = True  # generate(..., output_type="latent"): I2VGuard's clean generation
    native_size = None

    def __init__(
        self,
        *,
        unet: LVDMUNet,
        vae: nn.Module,
        vision: nn.Module,
        resampler: Resampler,
        config: dict,
        prompt_embeds=None,
        num_frames: int | None = None,
        dtype: torch.dtype = torch.float32,
        gradient_checkpointing: bool = False,
        early_exit: bool = True,
        working_size: tuple[int, int] | None = None,
        fps: int | None = None,
        folder: str | Path | None = None,
    ) -> None:
        from .prompts import resolve_prompt_embeds

        if num_frames is None:
            num_frames = int(config["unet"].get("temporal_length", 16))
        super().__init__(num_frames=num_frames, dtype=dtype, gradient_checkpointing=gradient_checkpointing,
                         early_exit=early_exit, working_size=working_size)
        self.unet, self.vae, self.vision, self.resampler = unet, vae, vision, resampler
        self.config = copy.deepcopy(config)
        self.folder = None if folder is None else str(folder)
        self.variant = str(config.get("variant", "custom"))
        diff = config["diffusion"]
        if diff["parameterization"] not in ("v", "eps"):
            raise SurrogateError(f"parameterization must be 'v' or 'eps', got {diff['parameterization']!r}")
        self.parameterization = diff["parameterization"]
        self.scale_factor = float(diff["scale_factor"])
        self.num_train_timesteps = int(diff["timesteps"])
        betas = beta_schedule(diff)
        self._alphas_cumprod = torch.cumprod(1.0 - betas, 0)  # float64, CPU
        self._scale_arr = _scale_arr(diff)
        self.fps = int(config["unet"].get("default_fs", 24) if fps is None else fps)
        self.vae_scale_factor = 2 ** (len(config["vae"]["block_out_channels"]) - 1)
        self.size_multiple = self.vae_scale_factor * 2 ** (len(config["unet"]["channel_mult"]) - 1)
        self.default_size = tuple(int(v) for v in config["resolution"])
        self.clip_size = int(config["vision"]["image_size"])
        ctx = int(config["unet"]["context_dim"])
        emb, self.prompt_source = resolve_prompt_embeds(prompt_embeds, folder=folder, shape=(1, TEXT_TOKENS, ctx))
        if emb.shape[1] != TEXT_TOKENS:
            raise SurrogateError(f"prompt_embeds must hold {TEXT_TOKENS} tokens (the U-Net splits its context at "
                                 f"77), got shape {tuple(emb.shape)}")
        self.prompt_embeds = emb.float()
        if working_size is not None:
            self._check_size(working_size, "working_size")
        self._shape_cache: dict[tuple[int, int], list[torch.Size]] = {}
        for m in self.modules():
            if any(p.dtype != dtype for p in m.parameters()):
                m.to(dtype=dtype)

    # ----------------------------------------------------------------- protocol
    def denoiser(self) -> nn.Module:
        return self.unet

    def denoiser_blocks(self) -> list[tuple[str, nn.Module]]:
        """``input_blocks.0``, ``init_attn``, ``input_blocks.1 ..``, ``middle_block``, ``output_blocks.*``."""
        u = self.unet
        blocks = [("input_blocks.0", u.input_blocks[0])]
        if u.addition_attention:
            blocks.append(("init_attn", u.init_attn))
        blocks += [(f"input_blocks.{i}", b) for i, b in enumerate(u.input_blocks) if i > 0]
        blocks.append(("middle_block", u.middle_block))
        blocks += [(f"output_blocks.{i}", b) for i, b in enumerate(u.output_blocks)]
        return blocks

    def temporal_attention_modules(self) -> list[tuple[str, nn.Module]]:
        """The self-attentions of every LVDM ``TemporalTransformer`` (``init_attn`` and the one after each spatial
        transformer), in forward order: ``transformer_blocks[k].attn1`` and ``.attn2``. The published checkpoints
        run their temporal transformers self-attention only (``temporal_selfatt_only``), so ``attn2`` is a second
        self-attention over the frames, not a cross-attention: both are temporal self-attention maps."""
        from .dynamicrafter_model import TemporalTransformer

        out = []
        for block_name, block in self.denoiser_blocks():  # forward order (init_attn after input_blocks.0)
            for name, mod in block.named_modules(prefix=block_name):
                if isinstance(mod, TemporalTransformer):
                    for k, blk in enumerate(mod.transformer_blocks):
                        out += [(f"{name}.transformer_blocks.{k}.attn1", blk.attn1),
                                (f"{name}.transformer_blocks.{k}.attn2", blk.attn2)]
        return out

    def vae_encoder_layers(self) -> list[tuple[str, nn.Module]]:
        """The KL-f8 encoder's levels and mid block, under their LDM names (``encoder.down.i``, ``encoder.mid``)."""
        enc = self.vae.encoder
        layers = [(f"encoder.down.{i}", b) for i, b in enumerate(enc.down_blocks)]
        layers.append(("encoder.mid", enc.mid_block))
        return layers

    def modules(self) -> list[nn.Module]:
        return [self.unet, self.vae, self.vision, self.resampler]

    def _move_extras(self, device: torch.device) -> None:
        self.prompt_embeds = self.prompt_embeds.to(device)

    def describe(self) -> dict:
        d = super().describe()
        d.update(folder=self.folder, variant=self.variant, parameterization=self.parameterization,
                 zero_terminal_snr=bool(self.config["diffusion"].get("rescale_betas_zero_snr")),
                 dynamic_rescale=bool(self.config["diffusion"].get("use_dynamic_rescale")), fps=self.fps,
                 text=f"cached prompt embedding ({self.prompt_source})")
        return d

    def working_size(self, height: int, width: int) -> tuple[int, int]:
        """``working_size=`` when given, else the model's training resolution (upstream resizes and centre-crops to
        it; here the photo is resized to it and the perturbation mapped back to the photo's size)."""
        return self._working_size if self._working_size is not None else self.default_size

    def _check_size(self, size: Sequence[int], what: str = "size") -> tuple[int, int]:
        try:
            h, w = int(size[0]), int(size[1])
        except (TypeError, ValueError, IndexError):
            raise SurrogateError(f"{what} must be (height, width), got {size!r}") from None
        m = self.size_multiple
        if h < m or w < m or h % m or w % m:
            raise SurrogateError(f"{what} must be positive multiples of {m} (VAE factor x U-Net downsamplings), "
                                 f"got {(h, w)}")
        return h, w

    def latent_shape(self, batch: int, size: Sequence[int] | None = None) -> tuple[int, int, int, int, int]:
        """(B, C, T, h, w): LVDM's channel-first video latent."""
        h, w = self._check_size(size) if size is not None else self.working_size(*self.default_size)
        f = self.vae_scale_factor
        return (batch, int(self.config["vae"]["latent_channels"]), self.num_frames, h // f, w // f)

    def sample_noise(self, batch: int, generator: torch.Generator, *, size: Sequence[int] | None = None) -> NoiseDraw:
        """A training timestep uniform over [0, 1000) and Gaussian noise of the video latent (CPU, then moved)."""
        if batch < 1:
            raise SurrogateError(f"batch must be >= 1, got {batch}")
        t = torch.randint(0, self.num_train_timesteps, (batch,), generator=generator)
        noise = torch.randn(self.latent_shape(batch, size), generator=generator)
        return NoiseDraw(timestep=t.to(self.device), noise=noise.to(self.device))

    # ----------------------------------------------------------------- conditioning
    def clip_pixels(self, x: Tensor) -> Tensor:
        """``FrozenOpenCLIPImageEmbedderV2.preprocess`` of ``x`` in [-1, 1]: kornia bicubic resize to 224
        (``align_corners=True``, antialiased), to [0, 1], CLIP mean/std. Differentiable."""
        import kornia

        x = kornia.geometry.resize(x, (self.clip_size, self.clip_size), interpolation="bicubic", align_corners=True,
                                   antialias=True)
        x = (x + 1.0) / 2.0
        mean = torch.tensor(OPENAI_CLIP_MEAN, dtype=x.dtype, device=x.device)
        std = torch.tensor(OPENAI_CLIP_STD, dtype=x.dtype, device=x.device)
        return kornia.enhance.normalize(x, mean, std)

    def image_tokens(self, x: Tensor) -> Tensor:
        """Resampler tokens (B, 16 * 16, D) of the photo ``x`` in [-1, 1] (``embedder`` then ``image_proj_model``)."""
        feats = _vision_tokens(self.vision, self._to_model(self.clip_pixels(x.float())))
        return self.resampler(feats)

    def encode(self, image: Tensor) -> Conditioning:
        """The photo's scaled VAE latent (mode) and its Resampler tokens (differentiable).

        ``latent`` / ``parts["image_latent"]``: (B, 4, h, w), VAE mean x ``scale_factor``; ``parts["image_tokens"]``:
        (B, 256, D) for the published models.
        """
        if image.ndim != 4 or image.shape[1] != 3:
            raise SurrogateError(f"image must have shape (B, 3, H, W), got {tuple(image.shape)}")
        self._check_size(image.shape[-2:], "image size")
        x = image.to(self.device).float() * 2.0 - 1.0
        lat = self.vae.encode(self._to_model(x)).latent_dist.mode().float() * self.scale_factor
        tokens = self.image_tokens(x)
        return Conditioning(latent=lat, parts={"image_latent": lat, "image_tokens": tokens})

    def clean_latent(self, cond: Conditioning) -> Tensor:
        """The still video of the photo: the scaled latent repeated over :attr:`num_frames`, (B, C, T, h, w)."""
        return cond.latent.float().unsqueeze(2).expand(-1, -1, self.num_frames, -1, -1)

    def _coefficients(self, draw: NoiseDraw, ndim: int) -> tuple[Tensor, Tensor, Tensor]:
        t = draw.timestep.detach().long().cpu()
        if t.ndim != 1 or int(t.min()) < 0 or int(t.max()) >= self.num_train_timesteps:
            raise SurrogateError(f"timestep must be (B,) integers in [0, {self.num_train_timesteps}), got {t.tolist()}")
        shape = (-1,) + (1,) * (ndim - 1)
        ab = self._alphas_cumprod[t]
        dev = self.device
        return (ab.sqrt().float().view(shape).to(dev), (1 - ab).sqrt().float().view(shape).to(dev),
                self._scale_arr[t].float().view(shape).to(dev))

    def noisy_latent(self, x0: Tensor, draw: NoiseDraw) -> Tensor:
        """``q_sample`` of the dynamically rescaled x0: sqrt(ab_t) s_t x0 + sqrt(1 - ab_t) eps (float32)."""
        eps = self.noise_for(x0, draw, self.vae_scale_factor)
        a, b, s = self._coefficients(draw, x0.ndim)
        return a * (s * x0.float()) + b * eps

    def prediction_target(self, x0: Tensor, draw: NoiseDraw) -> Tensor:
        """v = sqrt(ab_t) eps - sqrt(1 - ab_t) s_t x0 (``get_v``), or eps for the epsilon-prediction (256) model."""
        eps = self.noise_for(x0, draw, self.vae_scale_factor)
        if self.parameterization == "eps":
            return eps
        a, b, s = self._coefficients(draw, x0.ndim)
        return a * eps - b * (s * x0.float())

    def context(self, cond: Conditioning, batch: int) -> Tensor:
        """Cross-attention context: the 77 cached text tokens, then the image tokens (B, 77 + L, D)."""
        tokens = cond.parts["image_tokens"]
        text = self.prompt_embeds.to(device=tokens.device, dtype=tokens.dtype).expand(batch, -1, -1)
        return torch.cat([text, tokens], dim=1)

    def unet_inputs(self, cond: Conditioning, noisy: Tensor, draw: NoiseDraw) -> dict[str, Tensor]:
        """What ``DiffusionWrapper`` (``conditioning_key="hybrid"``) passes to the U-Net: ``x`` = [z_t, image latent
        repeated over T] on channels, ``timesteps``, ``context``, ``fs``."""
        b, _, t = noisy.shape[:3]
        lat = cond.parts["image_latent"]
        if lat.shape[0] != b:
            raise SurrogateError(f"the conditioning has batch {lat.shape[0]} but the noisy latent {b}")
        concat = lat.unsqueeze(2).expand(-1, -1, t, -1, -1)
        return {
            "x": self._to_model(torch.cat([noisy.float(), concat.float()], dim=1)),
            "timesteps": draw.timestep.to(self.device).long(),
            "context": self._to_model(self.context(cond, b)),
            "fs": torch.full((b,), self.fps, dtype=torch.long, device=self.device),
        }

    def denoise(self, cond: Conditioning, noisy: Tensor, draw: NoiseDraw) -> Tensor:
        """The U-Net on z_t (B, C, T, h, w) with the photo's conditioning; returns v (or eps), same shape."""
        return self.unet(**self.unet_inputs(cond, noisy, draw))

    # ----------------------------------------------------------------- IRC shapes, default objective
    def block_shapes(self) -> list[torch.Size]:
        """Output shape of every block for one frame at twice the smallest size every level halves (probe, cached;
        the deepest level keeps 2 x 2 pixels for its group norms)."""
        side = 2 * self.size_multiple
        if (side, side) not in self._shape_cache:
            cfg = self.config["unet"]
            f = self.vae_scale_factor
            x = torch.zeros(1, cfg["in_channels"], 1, side // f, side // f, device=self.device, dtype=self.dtype)
            ctx = torch.zeros(1, TEXT_TOKENS + 16, cfg["context_dim"], device=self.device, dtype=self.dtype)
            t = torch.zeros(1, dtype=torch.long, device=self.device)
            self._shape_cache[(side, side)] = self.record_block_shapes(lambda: self.unet(x, t, ctx))
        return self._shape_cache[(side, side)]

    def block_shapes_match(self, i: int, j: int) -> bool:
        self.validate_request(FeatureRequest(blocks=frozenset((i, j))))
        shapes = self.block_shapes()
        return shapes[i] == shapes[j]

    def mirror_block(self, k: int) -> int | None:
        """The up-path block fed by the skip connection of down-path block ``k`` (None if ``k`` feeds none).

        The skips are the outputs of ``init_attn`` (for ``input_blocks.0``) and ``input_blocks.1 ..``;
        ``output_blocks.u`` takes the skip of ``input_blocks.(n - 1 - u)``.
        """
        names = self.block_names
        name = names[k]
        n_in = len(self.unet.input_blocks)
        if name == "init_attn" or (name == "input_blocks.0" and not self.unet.addition_attention):
            i = 0
        elif name.startswith("input_blocks.") and name != "input_blocks.0":
            i = int(name.split(".")[1])
        else:
            return None
        return names.index(f"output_blocks.{n_in - 1 - i}")

    def default_objective(self):
        """IRA on ``middle_block`` and the last two VAE-encoder layers; IRC from a shallow down block (nearest to the
        paper's depth ratio 3/42) to the up block its skip feeds, of equal shape. Published models: IRA 13,
        IRC 2 (``input_blocks.1``) -> 24 (``output_blocks.10``)."""
        from ..losses import IRALoss, IRCLoss, Objective

        n = self.num_blocks
        mid = self.block_names.index("middle_block")
        nv = self.num_vae_layers
        terms = [IRALoss(blocks=(mid,), vae_layers=tuple(range(max(nv - 2, 0), nv)), weight=1.0)]
        target = min(max(round(3 / 42 * n), 1), mid - 1)
        pair = None
        for k in sorted(range(mid), key=lambda k: (abs(k - target), k)):
            j = self.mirror_block(k)
            if j is not None and self.block_shapes_match(k, j):
                pair = (k, j)
                break
        notes: tuple[str, ...] = ()
        if pair is not None:
            terms.append(IRCLoss(pairs=(pair,), weight=1.0))
        else:
            notes = ("IRC left out: no down block of the DynamiCrafter U-Net has a mirroring up block of its shape",)
        return Objective(tuple(terms), notes)

    # ----------------------------------------------------------------- building
    @classmethod
    def from_pretrained(
        cls,
        folder: str | Path,
        *,
        num_frames: int | None = None,
        dtype: torch.dtype = torch.float32,
        gradient_checkpointing: bool = False,
        prompt_embeds=None,
        **kw,
    ) -> "DynamiCrafterSurrogate":
        """Load a folder written by :func:`convert_checkpoint` (safetensors, real key names; nothing downloaded).

        Raises:
            SurrogateError: naming the folder and the missing, unreadable or mis-shaped file or tensor.
        """
        from safetensors.torch import load_file

        root = Path(folder)
        if not root.is_dir():
            raise SurrogateError(f"DynamiCrafter model folder {str(root)!r} does not exist or is not a folder")
        cfg_path, weights = root / CONFIG_FILE, root / WEIGHTS_FILE
        for p, what in ((cfg_path, "configuration"), (weights, "weights")):
            if not p.is_file():
                raise SurrogateError(
                    f"DynamiCrafter model folder {str(root)!r} has no {p.name} ({what}); convert the official "
                    "model.ckpt first: anti-i2v convert-dynamicrafter model.ckpt OUT_DIR")
        try:
            config = json.loads(cfg_path.read_text())
            if not isinstance(config, dict) or "unet" not in config:
                raise ValueError("not a DynamiCrafter configuration")
        except (OSError, ValueError) as exc:
            raise SurrogateError(f"{str(cfg_path)!r}: unreadable ({exc})") from None
        try:
            tensors = load_file(str(weights))
        except Exception as exc:  # safetensors raises its own error types for damaged files
            raise SurrogateError(f"{str(weights)!r}: cannot read it as safetensors ({exc})") from None
        unet, vae, vision, resampler = _load_modules(config, tensors, str(weights))
        return cls(unet=unet, vae=vae, vision=vision, resampler=resampler, config=config,
                   prompt_embeds=prompt_embeds, num_frames=num_frames, dtype=dtype,
                   gradient_checkpointing=gradient_checkpointing, folder=root, **kw)

    @classmethod
    def tiny(cls, *, seed: int = 0, num_frames: int = 4, **kw) -> "DynamiCrafterSurrogate":
        """A tiny random-weight DynamiCrafter (64 x 64, 4 frames), built from the real key layout."""
        sd = _rename_legacy(tiny_state_dict(seed))
        unet, vae, vision, resampler = _load_modules(TINY_CONFIG, sd, "tiny DynamiCrafter")
        if kw.get("prompt_embeds") is None:
            g = torch.Generator().manual_seed(seed + 1)
            kw["prompt_embeds"] = torch.randn(1, TEXT_TOKENS, TINY_CONFIG["unet"]["context_dim"], generator=g)
        return cls(unet=unet, vae=vae, vision=vision, resampler=resampler, config=TINY_CONFIG,
                   num_frames=num_frames, **kw)

    @classmethod
    def save_tiny(cls, folder: str | Path, seed: int = 0) -> Path:
        """A tiny Lightning-layout checkpoint converted with :func:`convert_checkpoint` into ``folder``."""
        folder = Path(folder)
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = write_tiny_checkpoint(Path(tmp) / "model.ckpt", seed=seed)
            convert_checkpoint(ckpt, folder, config=TINY_CONFIG)
        return folder

    # ----------------------------------------------------------------- verification
    def _ddim_timesteps(self, steps: int) -> list[int]:
        n = self.num_train_timesteps
        if self.config.get("sampling", {}).get("timestep_spacing") == "uniform_trailing":
            c = n / steps
            ts = [int(v) - 1 for v in torch.arange(n, 0, -c, dtype=torch.float64).round().flip(0).tolist()]
        else:
            c = n // steps
            ts = [v + 1 for v in range(0, n, c)]
        return [min(max(t, 0), n - 1) for t in ts]

    def generate(
        self,
        image: Tensor,
        *,
        num_inference_steps: int = 3,
        seed: int = 0,
        num_frames: int | None = None,
        guidance_scale: float | None = None,
        guidance_rescale: float | None = None,
        eta: float | None = None,
        output_type: str = "video",
    ) -> Tensor:
        """A short I2V video with upstream's DDIM sampler (``lvdm/models/samplers/ddim.py``), deterministic.

        The photo is resized to the working size; the sampler starts from Gaussian noise (CPU generator from
        ``seed``), applies classifier-free guidance against the empty text and the image tokens of a zero image
        (the concatenated latent stays), ``guidance_rescale`` (``rescale_noise_cfg``), DDIM with ``eta`` and the
        dynamic-rescale correction of x0, then decodes each frame with the VAE. Defaults are the variant's
        ``scripts/run.sh`` settings (7.5, 0.7 for 512/1024, eta 1, trailing timesteps for 512/1024).
        ``output_type="latent"`` returns the sampled latent before decoding instead, (1, C, T, h, w) on the
        surrogate's device, scaled like :meth:`clean_latent` (:meth:`generate_latent`).

        Returns:
            (F, 3, h, w) float32 video in [0, 1] on CPU at the working size.
        """
        from ..protect import resize_to

        if output_type not in ("video", "latent"):
            raise ValueError(f"output_type must be 'video' or 'latent', got {output_type!r}")
        image = self._generate_image(image, num_inference_steps)
        frames = self.num_frames if num_frames is None else int(num_frames)
        if frames < 1:
            raise SurrogateError(f"num_frames must be >= 1, got {num_frames}")
        samp = self.config.get("sampling", {})
        cfg_scale = float(samp.get("guidance_scale", 7.5) if guidance_scale is None else guidance_scale)
        rescale = float(samp.get("guidance_rescale", 0.0) if guidance_rescale is None else guidance_rescale)
        eta = float(samp.get("eta", 1.0) if eta is None else eta)
        size = self.working_size(*image.shape[-2:])
        gen = torch.Generator().manual_seed(int(seed))
        old = self.num_frames
        try:
            self.num_frames = frames
            with torch.inference_mode(False), torch.no_grad():
                x = resize_to(image.to(self.device).float().clamp(0, 1), size)
                cond = self.encode(x)
                uncond = Conditioning(cond.latent, {"image_latent": cond.parts["image_latent"],
                                                    "image_tokens": self.image_tokens(torch.zeros_like(x))})
                ts = self._ddim_timesteps(int(num_inference_steps))
                ab = self._alphas_cumprod
                a = ab[ts]
                a_prev = torch.cat([ab[:1], ab[ts[:-1]]])
                sig = eta * ((1 - a_prev) / (1 - a) * (1 - a / a_prev)).clamp(min=0).sqrt()
                sarr = self._scale_arr[ts]
                sarr_prev = torch.cat([sarr[:1], sarr[:-1]])
                z = torch.randn(self.latent_shape(1, size), generator=gen).to(self.device)
                for i in reversed(range(len(ts))):
                    draw = NoiseDraw(timestep=torch.tensor([ts[i]], device=self.device), noise=z)
                    out = self.denoise(cond, z, draw).float()
                    if cfg_scale != 1.0:
                        un = self.denoise(uncond, z, draw).float()
                        guided = un + cfg_scale * (out - un)
                        if rescale > 0:
                            dims = list(range(1, out.ndim))
                            fixed = guided * (out.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True))
                            guided = rescale * fixed + (1 - rescale) * guided
                        out = guided
                    at, sq1 = float(a[i].sqrt()), float((1 - a[i]).sqrt())
                    if self.parameterization == "v":
                        eps, x0 = at * out + sq1 * z, at * z - sq1 * out
                    else:
                        eps, x0 = out, (z - sq1 * out) / at
                    x0 = x0 * float(sarr_prev[i] / sarr[i])
                    s = float(sig[i])
                    noise = torch.randn(z.shape, generator=gen).to(self.device)
                    z = float(a_prev[i].sqrt()) * x0 + max(1 - float(a_prev[i]) - s * s, 0.0) ** 0.5 * eps + s * noise
                if output_type == "latent":
                    return z.float()
                lat = z[0].permute(1, 0, 2, 3) / self.scale_factor  # (T, C, h, w), per-frame decode
                video = torch.cat([self.vae.decode(self._to_model(f[None])).sample.float() for f in lat])
        finally:
            self.num_frames = old
        return ((video.clamp(-1, 1) + 1) / 2).cpu()
