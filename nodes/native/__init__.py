"""Surrogates built from the user's own ComfyUI models, one module per family.

* :mod:`.base` - the shared machinery (private shadows of the user's modules, binding through ComfyUI's model
  management, the noise and timestep protocol, differentiable CLIP-vision encode) and :func:`detect_native_family`;
* :mod:`.wan21` - Wan 2.1 I2V / Wan 2.2 14B I2V (``WanImageToVideo``);
* :mod:`.svd` - Stable Video Diffusion (``SVD_img2vid_Conditioning``);
* :mod:`.wan22` - Wan 2.2 A14B I2V, both experts (high and low noise) in one run, and Wan 2.2 TI2V-5B
  (``Wan22ImageToVideoLatent``: first latent frame replaced, per-frame timestep);
* :mod:`.first_frame` - the first-latent-frame conditioning shared by Wan 2.2 TI2V-5B and LTX-Video;
* :mod:`.ltxv` - LTX-Video (``LTXVImgToVideo``: first latent frame replaced, per-token timestep);
* :mod:`.hunyuan` - HunyuanVideo I2V (``HunyuanImageToVideo`` v1 concat; the photo's tokens in the text
  encoder's output are not attacked, see the module).

:func:`native_surrogate` (below) is the entry point of ``AntiI2V_LoadSurrogateI2V``. The package imports
ComfyUI lazily and uses only relative imports between its own modules, so it can be loaded by path in tests.
"""

from __future__ import annotations

from typing import Any

import torch

from anti_i2v.surrogates.base import Surrogate

from .base import (
    _DTYPES, CLIP_VISION_CROPS, NATIVE_FAMILIES, NativeSurrogate, _describe_model, detect_native_family,
)
from .hunyuan import NativeHunyuanVideoSurrogate
from .ltxv import NativeLTXVSurrogate
from .svd import NativeSVDSurrogate
from .wan21 import NativeWan21Surrogate
from .wan22 import WAN22_I2V_BOUNDARY, NativeWan22MoESurrogate, NativeWan22TI2VSurrogate

__all__ = [
    "NATIVE_FAMILIES",
    "CLIP_VISION_CROPS",
    "NativeSurrogate",
    "NativeWan21Surrogate",
    "NativeWan22MoESurrogate",
    "NativeWan22TI2VSurrogate",
    "NativeSVDSurrogate",
    "NativeLTXVSurrogate",
    "NativeHunyuanVideoSurrogate",
    "detect_native_family",
    "native_surrogate",
]


def native_surrogate(*, model: Any, vae: Any, clip_vision: Any = None, positive: Any = None,
                     family: str = "auto", frames: int = 9, dtype: str | torch.dtype = "bfloat16",
                     size: tuple[int, int] | None = None, model_2: Any = None,
                     boundary: float = WAN22_I2V_BOUNDARY, clip_vision_crop: str = "auto") -> Surrogate:
    """Build a surrogate from the user's ComfyUI models (the ``model`` input of AntiI2V_LoadSurrogateI2V).

    Args:
        model: ComfyUI ``MODEL`` (Wan 2.1/2.2-14B I2V from UNETLoader, SVD from ImageOnlyCheckpointLoader,
            LTX-Video from CheckpointLoaderSimple, HunyuanVideo I2V from UNETLoader).
        vae: ComfyUI ``VAE`` of that model.
        clip_vision: ComfyUI ``CLIP_VISION`` (SVD: required; Wan 2.1: optional, adds the image tokens).
        positive: ComfyUI ``CONDITIONING`` with the text embedding (Wan, LTX-Video, HunyuanVideo: the output of
            TextEncodeHunyuanVideo_ImageToVideo, computed from the clean photo); zeros when None.
        family: ``"auto"`` (detect) or one of :data:`NATIVE_FAMILIES`; other values (e.g. ``"cogvideox"``) only load
            from a diffusers folder and raise ValueError here.
        frames: pixel frames of the attacked video (Wan: WanImageToVideo ``length``; SVD: ``video_frames``;
            LTX-Video: LTXVImgToVideo ``length``).
        dtype: ``"float32"``, ``"bfloat16"`` or ``"float16"`` (validated; see :class:`NativeSurrogate`).
        size: optional fixed (height, width) working size.
        model_2: Wan 2.2 A14B I2V: the low-noise expert (``model`` is then the high-noise one); both are attacked
            in one run (:class:`NativeWan22MoESurrogate`).
        boundary: Wan 2.2 A14B: the flow sigma where the user's graph switches experts (default 0.9).
        clip_vision_crop: how the photo is fitted to CLIP vision, as the graph's own node does it: ``"auto"``
            (Wan: ``"none"``, the crop of ``CLIPVisionEncode`` in ComfyUI's Wan 2.1 I2V template; SVD:
            ``"center"``, what ``SVD_img2vid_Conditioning`` always does), ``"none"`` (squash the whole photo) or
            ``"center"`` (centre crop). On a non-square photo the two differ: match your ``CLIPVisionEncode``.

    Returns:
        A :class:`NativeWan21Surrogate`, :class:`NativeWan22MoESurrogate`, :class:`NativeWan22TI2VSurrogate`,
        :class:`NativeSVDSurrogate`, :class:`NativeLTXVSurrogate` or :class:`NativeHunyuanVideoSurrogate`.

    Raises:
        ValueError: the model is not a supported I2V model, the family does not match it, or an input is missing.
    """
    if model is None:
        raise ValueError("model: connect a ComfyUI MODEL (Wan 2.1 I2V, SVD, LTX-Video or HunyuanVideo I2V)")
    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {list(_DTYPES)}, got {dtype!r}")
        dtype = _DTYPES[dtype]
    if int(frames) != frames or frames < 1:
        raise ValueError(f"frames must be an integer >= 1, got {frames}")
    detected = detect_native_family(model)
    if model_2 is not None:
        if detected != "wan21":
            raise ValueError(f"model_2: a second model is only used with Wan 2.2 A14B I2V (its low-noise expert); "
                             f"the connected model is {_describe_model(model)} ({detected}): disconnect model_2")
        if detect_native_family(model_2) != "wan21":
            raise ValueError(f"model_2: expected the low-noise Wan 2.2 A14B I2V model, got {_describe_model(model_2)}")
        detected = "wan22"
    elif family == "wan22":
        raise ValueError("family is 'wan22' (Wan 2.2 A14B I2V, two experts): connect the high-noise model to "
                         "'model' and the low-noise model to 'model_2'")
    if family not in ("auto",) + NATIVE_FAMILIES:
        raise ValueError(f"family {family!r} cannot be built from a connected MODEL: native surrogates support "
                         f"{', '.join(NATIVE_FAMILIES)} (choose 'auto'); disconnect the model to load {family!r} "
                         f"from a diffusers folder")
    if family != "auto" and family != detected:
        raise ValueError(f"family is {family!r} but the connected model is {_describe_model(model)} ({detected}); "
                         f"choose 'auto' or {detected!r}")
    if clip_vision_crop not in ("auto",) + CLIP_VISION_CROPS:
        raise ValueError(f"clip_vision_crop must be one of auto, {', '.join(CLIP_VISION_CROPS)}, "
                         f"got {clip_vision_crop!r}")
    common = dict(model=model, vae=vae, clip_vision=clip_vision, num_frames=int(frames), dtype=dtype, size=size)
    crop = "none" if clip_vision_crop == "auto" else clip_vision_crop
    if detected == "wan22":
        return NativeWan22MoESurrogate(positive=positive, model_low=model_2, boundary=boundary,
                                       clip_vision_crop=crop, **common)
    if detected == "wan21":
        return NativeWan21Surrogate(positive=positive, clip_vision_crop=crop, **common)
    if clip_vision_crop == "none" and detected == "svd":
        raise ValueError("clip_vision_crop 'none' does not apply to SVD: SVD_img2vid_Conditioning always "
                         "centre-crops the photo for CLIP vision; choose 'auto' or 'center'")
    if detected == "wan22_ti2v":
        return NativeWan22TI2VSurrogate(positive=positive, **common)
    if detected == "ltxv":
        return NativeLTXVSurrogate(positive=positive, **common)
    if detected == "hunyuan_i2v":
        if clip_vision is not None:
            raise ValueError("clip_vision: the HunyuanVideo I2V surrogate does not use a CLIP_VISION (the photo's "
                             "llava_llama3_vision output only reaches the model through the text encoder, which "
                             "the surrogate cannot attack; see the README); disconnect it")
        return NativeHunyuanVideoSurrogate(positive=positive, **common)
    return NativeSVDSurrogate(**common)
