"""AntiI2V_LoadSurrogateI2V: the I2V model the protection is optimised against.

Two sources:

* the user's ComfyUI models (``model`` connected, with ``vae``, ``clip_vision``, ``positive``): a native
  surrogate built by :func:`nodes.native.native_surrogate` around ComfyUI's own Wan 2.1 / SVD models;
* a diffusers-format folder under ComfyUI's ``models/diffusers`` (CogVideoX-5B-I2V, Wan 2.1 I2V, SVD), an
  Open-Sora 1.2 folder there (``OpenSora-STDiT-v3/`` + ``OpenSora-VAE-v1.2/``) or a DynamiCrafter folder written
  by ``anti-i2v convert-dynamicrafter``, loaded
  with :func:`anti_i2v.surrogates.load_surrogate` and wrapped in a ModelPatcher for ComfyUI's memory
  management.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from anti_i2v.lowvram import LowVram
from anti_i2v.surrogates import FAMILIES, load_surrogate
from anti_i2v.surrogates.detect import SUPPORTED as _SUPPORTED
from anti_i2v.surrogates.detect import detect_family

from . import runtime
from .comfy import CATEGORY, SurrogateType, io

__all__ = ["LoadSurrogateI2V", "diffusers_folders"]

NODE_ID = "AntiI2V_LoadSurrogateI2V"
NONE_FOLDER = "(none)"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

def _diffusers_entries() -> dict[str, Path]:
    """The loadable model folders: {name: real path}, the first base folder that has a name winning.

    An entry is a direct, non-hidden subfolder of one of the ``diffusers`` base folders ComfyUI's
    ``folder_paths`` lists (``models/diffusers`` and extra paths) whose real path (symlinks resolved) lies
    inside one of those base folders; a symlink that leads elsewhere on the disk is not an entry.
    """
    import folder_paths

    roots = [r for r in folder_paths.get_folder_paths("diffusers") if os.path.isdir(r)]
    bases = [Path(r).resolve() for r in roots]
    out: dict[str, Path] = {}
    for root in roots:
        try:
            entries = list(os.scandir(root))
        except OSError:
            continue
        for e in entries:
            if e.name in out or e.name.startswith(".") or e.name in (NONE_FOLDER, "..", "."):
                continue
            try:
                if not e.is_dir():
                    continue
                real = Path(e.path).resolve(strict=True)
            except (OSError, RuntimeError):  # broken link, loop, permission
                continue
            if any(real != base and real.is_relative_to(base) for base in bases):
                out[e.name] = real
    return out


def diffusers_folders() -> list[str]:
    """Names of the loadable subfolders of ComfyUI's ``diffusers`` model folders (the ``folder`` combo's list)."""
    return sorted(_diffusers_entries())


def _refused(name) -> ValueError:
    # one message whatever exists on the disk, so a client cannot probe the server's file system with it
    return ValueError(f"{NODE_ID}: folder {name!r} is not one of the model folders in ComfyUI's models/diffusers; "
                      "pick one from the list")


def _resolve_folder(name: str) -> Path:
    """The real path of ``name``, only when it is one of :func:`diffusers_folders` (checked again here: ComfyUI
    does not check that a posted combo value is one of the options, so absolute paths, ``..`` chains and
    symlinks out of the base folders must be refused by the pack itself)."""
    if not isinstance(name, str) or not name or os.sep in name or "/" in name or (os.altsep and os.altsep in name):
        raise _refused(name)
    path = _diffusers_entries().get(name)
    if path is None or not path.is_dir():
        raise _refused(name)
    return path


class LoadSurrogateI2V(io.ComfyNode):
    """Load the I2V surrogate: from the user's ComfyUI models when ``model`` is connected, else a diffusers folder."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=NODE_ID,
            display_name="Load I2V Surrogate (Anti-I2V)",
            category=CATEGORY,
            description=(
                "Loads the image-to-video model the protection is optimised against (the surrogate). Connect "
                "your ComfyUI Wan 2.1, Wan 2.2 A14B (both experts), SVD, LTX-Video or HunyuanVideo I2V models (model, vae, "
                "clip_vision, "
                "positive, model_2) to reuse them, or pick a "
                "diffusers-format folder (CogVideoX-5B-I2V, Wan 2.1 I2V, SVD), an Open-Sora 1.2 folder "
                "(OpenSora-STDiT-v3 + OpenSora-VAE-v1.2 subfolders) or a DynamiCrafter folder converted with "
                "'anti-i2v convert-dynamicrafter' from models/diffusers."
            ),
            inputs=[
                io.Combo.Input("family", options=["auto", *FAMILIES], default="auto",
                               tooltip="Model family; 'auto' reads it from the folder's model_index.json (Open-Sora: "
                                       "its two checkpoint subfolders; DynamiCrafter: dynamicrafter.json) or from "
                                       "the connected model."),
                io.Combo.Input("folder", options=[NONE_FOLDER, *diffusers_folders()], default=NONE_FOLDER,
                               tooltip="Diffusers-format model folder under models/diffusers (ignored when "
                                       "'model' is connected). An anti_i2v.json in it with {\"working_size\": "
                                       "[h, w]} sets the optimisation size for models trained at another size."),
                io.Combo.Input("dtype", options=list(DTYPES), default="bfloat16",
                               tooltip="Compute dtype of the surrogate (bfloat16 halves memory on GPUs; use "
                                       "float32 on CPU)."),
                io.Int.Input("frames", default=9, min=1, max=1024,
                             tooltip="Pixel frames of the video the denoiser sees while protecting (fewer "
                                     "frames: faster, less memory)."),
                io.Boolean.Input("gradient_checkpointing", default=False,
                                 tooltip="Recompute denoiser blocks during backward: less memory, slower."),
                io.Model.Input("model", optional=True,
                               tooltip="Optional: your ComfyUI I2V model (Wan 2.1 I2V, Wan 2.2 A14B high-noise, SVD, "
                                       "LTX-Video or HunyuanVideo I2V) to protect against."),
                io.Vae.Input("vae", optional=True, tooltip="Optional: the VAE that goes with 'model'."),
                io.ClipVision.Input("clip_vision", optional=True,
                                    tooltip="Optional: the CLIP vision model that goes with 'model' (Wan 2.1, SVD)."),
                io.Conditioning.Input("positive", optional=True,
                                      tooltip="Optional: text conditioning for 'model' (Wan, LTX-Video, HunyuanVideo: "
                                              "the TextEncodeHunyuanVideo_ImageToVideo output); zeros when "
                                              "absent."),
                io.Model.Input("model_2", optional=True,
                               tooltip="Optional, Wan 2.2 A14B I2V: the low-noise expert ('model' is then the "
                                       "high-noise one); the protection is optimised against both."),
                io.Combo.Input("clip_vision_crop", options=["auto", "none", "center"], default="auto", optional=True,
                               tooltip="How the photo is fitted to clip_vision; must match your CLIPVisionEncode "
                                       "'crop'. auto: 'none' for Wan (ComfyUI's Wan 2.1 I2V template: the whole "
                                       "photo squashed), centre crop for SVD (its conditioning node always crops)."),
                io.Boolean.Input("low_vram", default=False, optional=True,
                                 tooltip="Fit a 24 GB card: attack fewer frames (CogVideoX 9, Wan 5, SVD 6, or "
                                         "'frames' if smaller), recompute blocks in backward, and keep the blocks "
                                         "past the deepest used and the VAE decoder on the CPU (a diffusers "
                                         "folder; with a connected ComfyUI model, ComfyUI manages its devices). "
                                         "The report states the frames and settings used. fp8: load your model "
                                         "in fp8 (UNETLoader weight_dtype fp8_e4m3fn, or an fp8_scaled file); the "
                                         "attack uses its fp8 weights as loaded."),
                io.Boolean.Input("fp8_weights", default=False, optional=True,
                                 tooltip="With low_vram and a diffusers folder: for each protect run, the "
                                         "denoiser blocks' linear layers the attack runs compute from fp8 "
                                         "(float8_e4m3fn, per-channel scale) copies on the GPU; the originals wait "
                                         "on the CPU and come back bit-exact. Changes the gradient slightly "
                                         "(the report says so). With a connected ComfyUI model, load it in fp8 "
                                         "in ComfyUI instead."),
            ],
            outputs=[SurrogateType.Output(display_name="surrogate",
                                          tooltip="The I2V surrogate for the protect and preview nodes.")],
        )

    @classmethod
    def execute(cls, family: str, folder: str, dtype: str, frames: int, gradient_checkpointing: bool,
                model=None, vae=None, clip_vision=None, positive=None, model_2=None,
                clip_vision_crop: str = "auto", low_vram: bool = False, fp8_weights: bool = False) -> io.NodeOutput:
        if dtype not in DTYPES:
            raise ValueError(f"{NODE_ID}: dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        if int(frames) < 1:
            raise ValueError(f"{NODE_ID}: frames must be >= 1, got {frames}")
        if fp8_weights and not low_vram:
            raise ValueError(f"{NODE_ID}: fp8_weights is part of the low-VRAM mode: turn low_vram on too")
        if fp8_weights and model is not None:
            raise ValueError(f"{NODE_ID}: fp8_weights applies to a diffusers folder; with a connected ComfyUI model, "
                             "load it in fp8 in ComfyUI (UNETLoader weight_dtype fp8_e4m3fn, or an fp8_scaled file) "
                             "and the attack uses those weights as loaded")
        with runtime.node_errors(NODE_ID), runtime.grad_enabled():
            if model is None and model_2 is not None:
                raise ValueError("model_2 is connected but model is not: connect the high-noise Wan 2.2 model to "
                                 "'model' and the low-noise one to 'model_2'")
            if model is not None:
                from .native import native_surrogate

                surrogate = native_surrogate(model=model, vae=vae, clip_vision=clip_vision, positive=positive,
                                             family=family, frames=int(frames), dtype=DTYPES[dtype], model_2=model_2,
                                             clip_vision_crop=clip_vision_crop)
                surrogate.gradient_checkpointing = bool(gradient_checkpointing)
                if low_vram:  # the user's MODEL: ComfyUI's model management owns its devices, we offload nothing
                    surrogate.low_vram = LowVram(offload_unused=False)
                return io.NodeOutput(surrogate)
            if folder in (None, "", NONE_FOLDER):
                raise ValueError("no model: connect your ComfyUI I2V model to 'model' or pick a diffusers "
                                 f"folder ({_SUPPORTED}) in 'folder'")
            path = _resolve_folder(folder)
            fam = detect_family(path) if family == "auto" else family
            if fam not in FAMILIES:
                raise ValueError(f"family must be one of auto, {', '.join(FAMILIES)}, got {family!r}")
            # loaded outside inference mode: inference-mode weights cannot be saved for backward
            surrogate = load_surrogate(fam, path, num_frames=int(frames), dtype=DTYPES[dtype],
                                       gradient_checkpointing=bool(gradient_checkpointing))
            if low_vram:
                surrogate.low_vram = LowVram(fp8=bool(fp8_weights))
            runtime.LOG.info("%s: loaded %s surrogate from %s (%d blocks, %d VAE layers)", NODE_ID, fam, path,
                             surrogate.num_blocks, surrogate.num_vae_layers)
        return io.NodeOutput(runtime.manage_surrogate(surrogate))
