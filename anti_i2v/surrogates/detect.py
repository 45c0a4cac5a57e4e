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
SUPPORTED = ("CogVideoX-5B-I2V, Wan 2.1 I2V, Stable Video Diffusion (img2vid), Open-Sora 1.2 or DynamiCrafter (a "
             "folder written by anti-i2v convert-dynamicrafter)")
#: the configuration file of a converted DynamiCrafter folder (see surrogates/dynamicrafter.py)
_DYNAMICRAFTER_CONFIG = "dynamicrafter.json"


def _class_name(path: Path, problems: list[str] | None = None) -> str | None:
    """The ``_class_name`` in a JSON file; None if the file is missing or unreadable (a reason goes to ``problems``)."""
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except ValueError as exc:
        why = f"not valid JSON: {exc}"
    except OSError as exc:
        why = exc.strerror or str(exc)
    else:
        if isinstance(data, dict):
            return data.get("_class_name")
        why = f"a JSON {type(data).__name__}, not an object"
    if problems is not None:
        problems.append(f"{path.parent.name + '/' if path.name == 'config.json' else ''}{path.name} is unreadable "
                        f"({why})")
    return None


def _transformer_config(folder: Path) -> dict:
    try:
        data = json.loads((folder / "transformer" / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def detect_family(folder: Path) -> str:
    """The surrogate family of a diffusers folder, read from ``model_index.json`` or the denoiser's config.

    Raises:
        SurrogateError: the folder holds a model that is not a supported image-to-video model (e.g. text-to-video
            CogVideoX, which conditions on no image), naming what was found.
    """
    from . import FAMILIES
    from .opensora import is_opensora_folder

    if is_opensora_folder(folder):  # OpenSora-STDiT-v3/ + OpenSora-VAE-v1.2/ (not a diffusers folder)
        return "opensora"
    if (folder / _DYNAMICRAFTER_CONFIG).is_file():
        return "dynamicrafter"
    if list(folder.glob("*.ckpt")) and not (folder / "model_index.json").exists():
        raise SurrogateError(
            f"{folder.name!r} holds a .ckpt checkpoint (e.g. DynamiCrafter's pickled model.ckpt), which is not loaded "
            "directly; convert it first: anti-i2v convert-dynamicrafter model.ckpt OUT_DIR")
    problems: list[str] = []
    names = [n for n in (_class_name(folder / "model_index.json", problems),
                         _class_name(folder / "transformer" / "config.json", problems),
                         _class_name(folder / "unet" / "config.json", problems)) if n]
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
    found = "; ".join(([", ".join(names)] if names else []) + problems) or "no model_index.json or denoiser config"
    if any(h in n for n in names for h in _NOT_I2V_HINTS):
        raise SurrogateError(f"{folder.name!r} is not an image-to-video model ({found}); "
                         f"connect {SUPPORTED}")
    raise SurrogateError(f"cannot tell which I2V family {folder.name!r} is ({found}); "
                     f"set family to one of {', '.join(FAMILIES)} or use {SUPPORTED}")
