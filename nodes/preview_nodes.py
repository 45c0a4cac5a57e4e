"""AntiI2V_PreviewAttackVideo: "does it work?" - short videos from the clean and the protected photo, side by side.

Calls :func:`anti_i2v.verify.verify` (same model, seed and settings for both videos, plus drift and identity
figures) and shows the two videos next to each other on the node as an animated WebP.
"""

from __future__ import annotations

import random
import string

import torch

from anti_i2v.surrogates.base import Surrogate
from anti_i2v.verify import verify

from . import runtime
from .comfy import CATEGORY, SurrogateType, io, ui

__all__ = ["PreviewAttackVideo"]

NODE_ID = "AntiI2V_PreviewAttackVideo"
PREVIEW_FPS = 8.0


def _save_side_by_side(clean: torch.Tensor, protected: torch.Tensor, cls) -> ui.SavedImages:
    """Save (F, h, w, 3) clean | protected as one animated WebP in ComfyUI's temp folder."""
    frames = torch.cat([clean, protected], dim=2).cpu()
    prefix = "AntiI2V_preview_" + "".join(random.choice(string.ascii_lowercase) for _ in range(6))
    saved = ui.ImageSaveHelper.save_animated_webp(
        frames, filename_prefix=prefix, folder_type=io.FolderType.temp, cls=cls, fps=PREVIEW_FPS,
        lossless=False, quality=90, method=4,
    )
    return ui.SavedImages([saved], is_animated=frames.shape[0] > 1)


class PreviewAttackVideo(io.ComfyNode):
    """Generate a short I2V video from the clean and from the protected photo and show them side by side."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=NODE_ID,
            display_name="Preview Attack Video (Anti-I2V)",
            category=CATEGORY,
            description=(
                "Checks the protection: the surrogate's image-to-video pipeline makes a short video from the clean "
                "photo and one from the protected photo (same seed); both play side by side on the node (clean "
                "left, protected right) and the metrics (video drift, identity similarity) come out as JSON."
            ),
            inputs=[
                SurrogateType.Input("surrogate", tooltip="The I2V surrogate from Load I2V Surrogate."),
                io.Image.Input("clean_image", tooltip="The original photo (the first of a batch is used)."),
                io.Image.Input("protected_image", tooltip="The protected photo (same size as clean_image)."),
                io.Int.Input("steps", default=4, min=1, max=200,
                             tooltip="Denoising steps of each generation (more: closer to real use, slower)."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=False,
                             tooltip="Seed of both generations (the same for both, so only the photo differs)."),
                io.Int.Input("frames", default=0, min=0, max=1024,
                             tooltip="Frames of each video; 0 keeps the surrogate's."),
            ],
            outputs=[
                io.Image.Output(display_name="clean_video", tooltip="Frames generated from the clean photo."),
                io.Image.Output(display_name="protected_video", tooltip="Frames generated from the protected photo."),
                io.String.Output(display_name="metrics", tooltip="JSON: video drift and identity figures."),
            ],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, surrogate, clean_image, protected_image, steps: int, seed: int,
                frames: int) -> io.NodeOutput:
        if not isinstance(surrogate, Surrogate):
            raise runtime.not_a_surrogate(NODE_ID, surrogate)
        with runtime.node_errors(NODE_ID):
            if int(frames) < 0:
                raise ValueError(f"frames must be >= 0 (0 keeps the surrogate's), got {frames}")
            clean = runtime.to_library_image(clean_image, node=NODE_ID, arg="clean_image")[:1]
            protected = runtime.to_library_image(protected_image, node=NODE_ID, arg="protected_image")[:1]
            if clean.shape != protected.shape:
                raise ValueError(f"clean_image is {clean.shape[-2]}x{clean.shape[-1]} but protected_image is "
                                 f"{protected.shape[-2]}x{protected.shape[-1]}: they must have the same size")
            with runtime.loaded_for_run(surrogate):
                out = verify(surrogate, clean, protected, steps=int(steps), seed=int(seed),
                             num_frames=int(frames) or None)
        clean_video = runtime.to_comfy_image(out["clean_video"])
        protected_video = runtime.to_comfy_image(out["protected_video"])
        preview = _save_side_by_side(clean_video, protected_video, cls)
        return io.NodeOutput(clean_video, protected_video, runtime.to_json(out.get("metrics", {})), ui=preview)
