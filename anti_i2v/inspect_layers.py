"""Layer inspection: PCA maps of denoiser block outputs, to choose the IRA / IRC layers of a new model.

Anti-I2V (Sec. 3.3 and its PCA figure) chose its layers by looking at the principal components of block
outputs during denoising: shallow blocks still show the photo's spatial structure (edges, face layout), deep
blocks show coarse semantic regions. IRC pulls a deep block ``j`` towards a shallow block ``i``; IRA works best
on the deep blocks. :func:`block_pca_maps` renders that view for any surrogate:

1. one forward pass of the surrogate on the photo (resized to its working size) without gradients, with a
   timestep and noise drawn from ``seed`` exactly as one protect iteration draws them; the forward stops after
   the deepest requested block (the surrogate's early exit);
2. for each block, the features of the **first video frame** (the frame the photo conditions) as a
   (h * w, C) matrix, centred per channel;
3. projection on the top-3 principal components (exact SVD of the centred matrix, not the randomised
   ``torch.pca_lowrank``, which draws from the global RNG; signs fixed so that the largest loading of each
   component is positive, which makes the maps deterministic);
4. each component min-max normalised to [0, 1] and used as one RGB channel, at the block's own feature grid,
   then upsampled (nearest) to the working size so every map has the same size.

Feature grids:

* convolutional blocks (SVD U-Net, native ComfyUI SVD): outputs are (B * F, C, h, w), frame-major per image, so
  the first frame is index 0;
* DiT blocks (CogVideoX, Wan 2.1, Open-Sora 1.2, native ComfyUI Wan): outputs are video tokens (B, N, C) in frame-major
  (F', h', w') order. The grid is derived from the working size and the model's configuration, without running
  anything else: ``h' = H / (VAE spatial factor x patch size)``, ``w'`` likewise, ``F' = N / (h' w')``. The VAE
  factor is read from the adapters' public attributes (``vae_scale_spatial`` for CogVideoX, ``spatial_factor``
  for Wan) or from a ComfyUI ``VAE`` (``spacial_compression_encode()``); the patch size from the transformer's
  ``config.patch_size`` (diffusers) or ``patch_size`` (ComfyUI).

This module never imports ComfyUI.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor

from .dsp import check_image
from .losses import parse_indices
from .protect import frozen_models, resize_to
from .surrogates.base import FeatureRequest, NoiseDraw, Surrogate, SurrogateError

__all__ = ["block_pca_maps", "pca_rgb", "resolve_blocks", "token_grid"]

#: families whose timestep can be set as a fraction of the noise schedule (native ComfyUI ones end in -native)
TIMESTEP_FAMILIES = ("cogvideox", "wan21", "svd", "opensora", "dynamicrafter", "wan21-native", "wan22-native",
                     "wan22-ti2v-native", "svd-native", "ltxv-native")


def resolve_blocks(surrogate: Surrogate, blocks: str | int | Iterable[int], *, name: str = "blocks") -> list[int]:
    """Block indices from text (``"0-3"``, ``"3,27"``) or integers, sorted, unique and range-checked.

    Raises:
        ValueError: malformed text or no block at all (naming ``name``).
        SurrogateError: an index outside ``0 .. surrogate.num_blocks - 1`` (the message names the valid range).
    """
    indices = sorted(set(parse_indices(blocks, name=name)))
    if not indices:
        raise ValueError(f"{name}: give at least one denoiser block index, e.g. '0-3' or '3,27' "
                         f"(valid: 0-{surrogate.num_blocks - 1})")
    surrogate.validate_request(FeatureRequest(blocks=frozenset(indices)))
    return indices


def pca_rgb(features: Tensor) -> Tensor:
    """Top-3 principal components of a feature map as an RGB image in [0, 1].

    Args:
        features: (C, h, w) feature map (any float dtype).

    Returns:
        (3, h, w) float32: channel k is the projection on the k-th principal component of the (h * w, C) centred
        matrix, min-max normalised to [0, 1]. Components that do not exist (fewer than 3 channels or pixels)
        and constant projections are 0. The sign of each component is fixed so that its largest loading is
        positive (deterministic output).
    """
    if features.ndim != 3:
        raise ValueError(f"features must have shape (C, h, w), got {tuple(features.shape)}")
    c, h, w = features.shape
    x = features.detach().float().reshape(c, h * w).T  # (h*w, C)
    x = x - x.mean(dim=0, keepdim=True)
    out = x.new_zeros(3, h * w)
    if h * w > 1 and c > 0 and torch.isfinite(x).all():
        _, _, vh = torch.linalg.svd(x, full_matrices=False)  # rows of vh: principal directions
        k = min(3, vh.shape[0])
        comps = vh[:k]
        idx = comps.abs().argmax(dim=1, keepdim=True)
        comps = comps * torch.where(comps.gather(1, idx) < 0, -1.0, 1.0)  # largest loading positive
        proj = (x @ comps.T).T  # (k, h*w)
        lo = proj.min(dim=1, keepdim=True).values
        span = proj.max(dim=1, keepdim=True).values - lo
        scaled = torch.where(span > 0, (proj - lo) / span.clamp(min=1e-30), torch.zeros_like(proj))
        out[:k] = scaled.clamp(0.0, 1.0)
    return out.reshape(3, h, w)


def _spatial_factor(surrogate: Surrogate) -> int | None:
    """The VAE's spatial compression of a surrogate (adapter attribute or ComfyUI VAE), or None."""
    for attr in ("vae_scale_spatial", "spatial_factor"):
        value = getattr(surrogate, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    vae = getattr(surrogate, "vae", None)
    fn = getattr(vae, "spacial_compression_encode", None)  # comfy.sd.VAE (sic)
    if callable(fn):
        value = fn()
        if isinstance(value, int) and value > 0:
            return value
    return None


def _patch_size(surrogate: Surrogate) -> int | None:
    """The transformer's spatial patch size (the adapter's ``patch_size``, diffusers ``config.patch_size`` or
    ComfyUI ``patch_size``), or None."""
    own = getattr(surrogate, "patch_size", None)
    if isinstance(own, int) and own > 0:
        return own
    den = surrogate.denoiser()
    cfg = getattr(den, "config", None)
    patch = getattr(cfg, "patch_size", None) if cfg is not None else None
    if patch is None:
        patch = getattr(den, "patch_size", None)
    if isinstance(patch, (tuple, list)) and patch:
        patch = patch[-1]
    return int(patch) if isinstance(patch, int) and patch > 0 else None


def token_grid(surrogate: Surrogate, tokens: int, height: int, width: int) -> tuple[int, int, int]:
    """(F', h', w') of ``tokens`` video tokens of a DiT surrogate working at ``height`` x ``width``.

    ``h' = height // (VAE spatial factor x patch)``, ``w'`` likewise and ``F' = tokens / (h' w')``.

    Raises:
        SurrogateError: the surrogate exposes no VAE factor or patch size, or the token count does not fit.
    """
    vae, patch = _spatial_factor(surrogate), _patch_size(surrogate)
    if vae is None or patch is None:
        raise SurrogateError(
            f"cannot tell the token grid of the {surrogate.family} surrogate's block outputs: layer PCA maps "
            "support convolutional blocks (B, C, h, w) and DiT blocks (B, N, C) of surrogates that expose the "
            "VAE's spatial factor and the transformer's patch size (cogvideox, wan21, svd, opensora and the native "
            "ComfyUI Wan / SVD / LTX-Video surrogates)"
        )
    stride = vae * patch
    h, w = height // stride, width // stride
    if h < 1 or w < 1 or tokens % (h * w):
        raise SurrogateError(
            f"{surrogate.family}: a block output has {tokens} tokens, which is not a whole number of "
            f"{h}x{w} token frames ({height}x{width} pixels / (VAE factor {vae} x patch {patch}))"
        )
    return tokens // (h * w), h, w


def _first_frame_map(surrogate: Surrogate, feat: Tensor, height: int, width: int) -> Tensor:
    """The first video frame of one block output as a (C, h, w) feature map."""
    if feat.ndim == 4:  # (B*F, C, h, w): U-Net blocks, frames of image 0 first
        return feat[0]
    if feat.ndim == 5:  # (B, C, F, h, w): 3-D convolutional blocks
        return feat[0, :, 0]
    if feat.ndim == 3:  # (B, N, C): DiT video tokens, frame-major
        _, h, w = token_grid(surrogate, feat.shape[1], height, width)
        return feat[0, : h * w].T.reshape(feat.shape[2], h, w)
    raise SurrogateError(f"{surrogate.family}: unsupported block output shape {tuple(feat.shape)} for layer PCA")


def _fixed_timestep(surrogate: Surrogate, draw: NoiseDraw, t: float) -> NoiseDraw:
    """``draw`` with its timestep set to the fraction ``t`` of the family's noise schedule (0 clean, 1 noise)."""
    fam = surrogate.family
    dev = draw.timestep.device
    if fam == "cogvideox":
        n = int(surrogate.scheduler.config.num_train_timesteps)
        draw.timestep = torch.tensor([round(t * (n - 1))], dtype=draw.timestep.dtype, device=dev)
    elif fam == "dynamicrafter":
        n = int(surrogate.num_train_timesteps)
        draw.timestep = torch.tensor([round(t * (n - 1))], dtype=draw.timestep.dtype, device=dev)
    elif fam == "wan21":
        n, shift = surrogate.num_train_timesteps, surrogate.shift
        sigma = shift * t / (1.0 + (shift - 1.0) * t)  # Wan21Surrogate.sample_noise's shifted sigma
        draw.timestep = torch.tensor([sigma * n], dtype=draw.timestep.dtype, device=dev)
    elif fam == "svd":
        cfg = surrogate.scheduler.config
        lo = math.log(float(cfg.get("sigma_min") or 0.002))
        hi = math.log(float(cfg.get("sigma_max") or 700.0))
        sigma = math.exp(lo + t * (hi - lo))  # log-uniform between SVD's sigma_min and sigma_max
        draw.extra["sigma"] = torch.tensor([sigma], dtype=draw.extra["sigma"].dtype, device=dev)
        draw.timestep = torch.tensor([0.25 * math.log(sigma)], dtype=draw.timestep.dtype, device=dev)
    elif callable(getattr(surrogate, "timestep_at", None)):  # adapters that map the fraction themselves (Open-Sora)
        draw.timestep = surrogate.timestep_at(t, draw)
    elif fam.endswith("-native"):
        ms = surrogate.model.model.model_sampling
        percent = min(max(1.0 - t, 1e-3), 1.0 - 1e-3)  # ComfyUI: percent 0 = start of sampling (max noise)
        draw.timestep = torch.tensor([float(ms.percent_to_sigma(percent))], dtype=torch.float32)
    else:
        raise SurrogateError(
            f"timestep: the {fam} surrogate has no known noise schedule; pass timestep=None (drawn from the "
            f"seed) or use one of {', '.join(TIMESTEP_FAMILIES)}"
        )
    return draw


def block_pca_maps(
    surrogate: Surrogate,
    image: Tensor,
    blocks: str | int | Iterable[int],
    *,
    seed: int = 0,
    timestep: float | None = None,
) -> dict[int, Tensor]:
    """PCA maps of the outputs of denoiser ``blocks`` for ``image`` (see the module docstring).

    Args:
        surrogate: any :class:`~anti_i2v.surrogates.base.Surrogate` (weights, flags and hooks are left as found).
        image: (3, H, W) or (B, 3, H, W) in [0, 1], any size (the first image is used; resized to
            ``surrogate.working_size(H, W)``).
        blocks: block indices: text as the IRA node takes it (``"0-3"``, ``"3,27"``) or integers.
        seed: seed of the timestep and noise draw (``surrogate.sample_noise`` on a CPU generator).
        timestep: None to use the drawn timestep (as a protect iteration would), or a fraction of the noise
            schedule in [0, 1] (0 nearly clean, 1 pure noise): CogVideoX ``t = round(f (T - 1))``; Wan 2.1 the
            shifted sigma of ``f``; Open-Sora ``timestep_transform(1000 f)``; SVD ``sigma`` log-uniform between
            ``sigma_min`` and ``sigma_max``; native ComfyUI models ``model_sampling.percent_to_sigma(1 - f)``.

    Returns:
        ``{block index: (3, H', W') float32 map in [0, 1] on CPU}`` in ascending block order, where
        (H', W') is the working size; each map is the block's feature grid upsampled with nearest neighbours.

    Raises:
        ValueError: a malformed ``blocks`` text, an empty block list, a bad image or ``timestep`` outside [0, 1].
        SurrogateError: a block index out of range (naming the valid range), or block outputs whose grid
            cannot be derived.

    Example:
        >>> maps = block_pca_maps(surrogate, photo, "0-3", seed=0)
        >>> sorted(maps) == [0, 1, 2, 3] and maps[0].shape[0] == 3
        True
    """
    indices = resolve_blocks(surrogate, blocks)
    if timestep is not None:
        timestep = float(timestep)
        if not (0.0 <= timestep <= 1.0):
            raise ValueError(f"timestep must be None or a fraction of the noise schedule in [0, 1], got {timestep}")
    x = check_image(image, "image")[:1]
    size = surrogate.working_size(x.shape[-2], x.shape[-1])
    x = resize_to(x.detach().to(device=surrogate.device, dtype=torch.float32), size).clamp(0.0, 1.0)
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    with torch.no_grad(), frozen_models(surrogate.modules()):
        draw = surrogate.draw_noise(1, gen, size=size)
        if timestep is not None:
            draw = _fixed_timestep(surrogate, draw, timestep)
        feats = surrogate.features(x, draw, FeatureRequest(blocks=frozenset(indices)))
        maps: dict[int, Tensor] = {}
        for i in indices:
            fmap = _first_frame_map(surrogate, feats.blocks[i], *size)
            rgb = pca_rgb(fmap).cpu()
            maps[i] = F.interpolate(rgb.unsqueeze(0), size=size, mode="nearest")[0]
    return maps
