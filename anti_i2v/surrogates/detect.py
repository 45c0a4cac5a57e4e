"""Which I2V family a local diffusers-format folder holds (from ``model_index.json`` or the denoiser config)."""

from __future__ import annotations

import json
from pathlib import Path

from .base import SurrogateError

__all__ = ["detect_family", "SUPPORTED"]

#: diffusers class names (pipeline or denoiser) that identify each supported image-to-video family
_I2V_CLASSES = {
    "CogVideoXImageToVideoPipeline": "cogvideox",
    "WanImageToVideoPipeline": "wan21",
    "StableVideoDiffusionPipeline": "svd",
    "UNetSpatioTemporalConditionModel": "svd",
}
#: class names of models that are not image-to-video (or not a supported family), for a clear refusal
_NOT_I2V_HINTS = ("CogVideoXPipeline", "CogVideoXVideoToVideoPipeline", "WanPipeline", "WanVideoToVideoPipeline",
                  "StableDiffusion", "Flux", "LTX", "Hunyuan", "Mochi", "AnimateDiff", "PixArt", "Sana")
SUPPORTED = "CogVideoX-5B-I2V, Wan 2.1 I2V or Stable Video Diffusion (img2vid)"


def _class_name(path: Path) -> str | None:
    try:
        return json.loads(path.read_text()).get("_class_name")
    except (OSError, ValueError, AttributeError):
        return None


def _transformer_config(folder: Path) -> dict:
    try:
        return json.loads((folder / "transformer" / "config.json").read_text())
    except (OSError, ValueError):
        return {}


def detect_family(folder: Path) -> str:
    """The surrogate family of a diffusers folder, read from ``model_index.json`` or the denoiser's config.

    Raises:
        SurrogateError: the folder holds a model that is not a supported image-to-video model (e.g. text-to-video
            CogVideoX, which conditions on no image), naming what was found.
    """
    from . import FAMILIES

    names = [n for n in (_class_name(folder / "model_index.json"), _class_name(folder / "transformer" / "config.json"),
                         _class_name(folder / "unet" / "config.json")) if n]
    for n in names:
        if n in _I2V_CLASSES:
            return _I2V_CLASSES[n]
    tcfg = _transformer_config(folder)
    if "CogVideoXTransformer3DModel" in names:
        if tcfg.get("in_channels") == 32:  # image latent concatenated on channels: the I2V variant
            return "cogvideox"
        raise SurrogateError(
            f"{folder.name!r} is a text-to-video CogVideoX (in_channels={tcfg.get('in_channels')}); "
            f"an image-to-video model is needed: {SUPPORTED}")
    if "WanTransformer3DModel" in names:
        if tcfg.get("image_dim") or tcfg.get("in_channels") == 36:
            return "wan21"
        raise SurrogateError(
            f"{folder.name!r} is a text-to-video Wan model (no image conditioning); "
            f"an image-to-video model is needed: {SUPPORTED}")
    found = ", ".join(names) or "no model_index.json or denoiser config"
    if any(h in n for n in names for h in _NOT_I2V_HINTS):
        raise SurrogateError(f"{folder.name!r} is not an image-to-video model ({found}); "
                         f"connect {SUPPORTED}")
    raise SurrogateError(f"cannot tell which I2V family {folder.name!r} is ({found}); "
                     f"set family to one of {', '.join(FAMILIES)} or use {SUPPORTED}")
