"""I2V surrogate adapters: one module per family, one registry.

Each family module (``cogvideox``, ``wan21``, ``svd``, ``opensora``, ``dynamicrafter``) defines a
:class:`~.base.Surrogate` subclass with:

* ``from_pretrained(folder, *, num_frames, dtype, gradient_checkpointing, prompt_embeds)`` - load a local
  diffusers-format folder (local files only, safetensors; Open-Sora: its two official checkpoint folders;
  DynamiCrafter: a folder written by ``anti-i2v convert-dynamicrafter``);
* ``tiny(*, num_frames, seed, ...)`` - a tiny random-weight model of the real diffusers classes (tests, ``--demo``);
* ``save_tiny(folder, seed)`` - write such a tiny model as a diffusers-format folder (tests of the loader);
* ``generate(image, *, num_inference_steps, seed)`` - a short I2V video with the family's diffusers pipeline.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import torch

from .base import FeatureRequest, Features, NoiseDraw, Surrogate, SurrogateError

__all__ = [
    "FAMILIES",
    "FeatureRequest",
    "Features",
    "NoiseDraw",
    "Surrogate",
    "SurrogateError",
    "surrogate_class",
    "load_surrogate",
    "tiny_surrogate",
    "save_tiny",
    "SETTINGS_FILE",
]

#: optional per-folder settings the loader honours, e.g. ``{"working_size": [h, w]}``.
SETTINGS_FILE = "anti_i2v.json"

#: family name -> (module, class name)
FAMILIES: dict[str, tuple[str, str]] = {
    "cogvideox": ("cogvideox", "CogVideoXSurrogate"),
    "wan21": ("wan21", "Wan21Surrogate"),
    "svd": ("svd", "SVDSurrogate"),
    "opensora": ("opensora", "OpenSoraSurrogate"),
    "dynamicrafter": ("dynamicrafter", "DynamiCrafterSurrogate"),
}


def surrogate_class(family: str) -> type[Surrogate]:
    """The adapter class of ``family`` (one of :data:`FAMILIES`)."""
    if family not in FAMILIES:
        raise SurrogateError(f"unsupported surrogate {family!r}: choose one of {', '.join(FAMILIES)}")
    mod, cls = FAMILIES[family]
    return getattr(importlib.import_module(f"{__name__}.{mod}"), cls)


def load_surrogate(
    family: str,
    folder: str | Path,
    *,
    num_frames: int | None = None,
    dtype: torch.dtype = torch.float32,
    gradient_checkpointing: bool = False,
    device: str | torch.device = "cpu",
    **kwargs,
) -> Surrogate:
    """Load a surrogate from a local diffusers-format folder (never from a hub)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SurrogateError(f"model folder {str(folder)!r} does not exist or is not a folder")
    cls = surrogate_class(family)
    settings = folder / SETTINGS_FILE
    if "working_size" not in kwargs and settings.is_file():
        try:
            ws = json.loads(settings.read_text()).get("working_size")
        except (OSError, ValueError) as exc:
            raise SurrogateError(f"{settings}: cannot read it as JSON ({exc})") from None
        if ws is not None:
            kwargs["working_size"] = (int(ws[0]), int(ws[1]))
    if num_frames is not None:
        kwargs["num_frames"] = num_frames
    s = cls.from_pretrained(folder, dtype=dtype, gradient_checkpointing=gradient_checkpointing, **kwargs)
    return s.to(device)


def tiny_surrogate(family: str, *, seed: int = 0, **kwargs) -> Surrogate:
    """A tiny random-weight surrogate of ``family`` built from the real diffusers classes."""
    return surrogate_class(family).tiny(seed=seed, **kwargs)


def save_tiny(family: str, folder: str | Path, *, seed: int = 0) -> Path:
    """Write a tiny random-weight model of ``family`` as a diffusers-format folder that :func:`load_surrogate`
    reads back with the tiny working size (recorded in ``anti_i2v.json``)."""
    folder = Path(folder)
    cls = surrogate_class(family)
    cls.save_tiny(folder, seed=seed)
    h, w = cls.tiny(seed=seed).working_size(64, 64)
    (folder / SETTINGS_FILE).write_text(json.dumps({"working_size": [h, w]}) + "\n")
    return folder
