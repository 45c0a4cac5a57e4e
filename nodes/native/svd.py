"""Native Stable Video Diffusion surrogate: ``SVD_img2vid_Conditioning`` conditioning, U-Net block hooks.

See :mod:`nodes.native.base` for the shared design (shadows, binding, noise).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from anti_i2v.surrogates.base import Conditioning, NoiseDraw, SurrogateError
from anti_i2v.surrogates.svd import unet_default_objective

from .base import NativeSurrogate, _clip_vision_encode, comfy_encoder_layers

__all__ = ["NativeSVDSurrogate"]


# ---------------------------------------------------------------------------------------------- SVD
class NativeSVDSurrogate(NativeSurrogate):
    """Native SVD surrogate: ``SVD_img2vid_Conditioning`` conditioning, U-Net block hooks.

    Args (besides :class:`NativeSurrogate`'s):
        fps, motion_bucket_id, augmentation_level: the conditioning node's values (defaults 6, 127, 0).
    """

    family = "svd-native"
    native_area = 576 * 1024
    size_multiple = 64
    default_size = (576, 1024)

    def __init__(self, *, fps: int = 6, motion_bucket_id: int = 127, augmentation_level: float = 0.0,
                 **kwargs) -> None:
        kwargs.pop("positive", None)  # SVD has no text conditioning
        super().__init__(**kwargs)
        if self.clip_vision is None:
            raise ValueError("clip_vision: SVD needs the CLIP_VISION output of ImageOnlyCheckpointLoader "
                             "(the image embedding is its cross-attention context)")
        self.fps = int(fps)
        self.motion_bucket_id = int(motion_bucket_id)
        self.augmentation_level = float(augmentation_level)
        self._layout = self._block_layout()

    def denoiser_blocks(self) -> Sequence[tuple[str, nn.Module]]:
        # forward_timestep_embed() iterates a block's layers instead of calling the block: hook its last layer
        dm = self.denoiser()
        out = [(f"input_blocks.{i}", blk[-1]) for i, blk in enumerate(dm.input_blocks)]
        out.append(("middle_block", dm.middle_block[-1]))
        out += [(f"output_blocks.{i}", blk[-1]) for i, blk in enumerate(dm.output_blocks)]
        return out

    def temporal_attention_modules(self) -> list[tuple[str, nn.Module]]:
        """The temporal self-attention of every ``SpatialVideoTransformer``, in forward order:
        ``time_stack[k].attn1`` (each spatial position attends over the frames), as diffusers' SVD
        ``temporal_transformer_blocks[k].attn1``. These are the private shadow's ComfyUI ``CrossAttention``
        modules, read through their attention slot (:mod:`nodes.native.base`); the user's model is never touched.
        """
        out = []
        for name, mod in self.denoiser().named_modules():
            if name.endswith("time_stack") and isinstance(mod, nn.ModuleList):
                for k, blk in enumerate(mod):
                    out.append((f"{name}.{k}.attn1", blk.attn1))
        return out

    def vae_encoder_layers(self) -> Sequence[tuple[str, nn.Module]]:
        return comfy_encoder_layers(self._vae_shadow.root.encoder)

    def _block_layout(self) -> list[tuple[int, int]]:
        """(channels, resolution level) of each block's output, read from the U-Net's layers."""
        dm = self.model.model.diffusion_model
        level, out = 0, []
        blocks = list(dm.input_blocks) + [dm.middle_block] + list(dm.output_blocks)
        for blk in blocks:
            ch = None
            for layer in blk:
                kind = type(layer).__name__
                if kind == "Downsample":
                    level += 1
                elif kind == "Upsample":
                    level -= 1
                for attr in ("out_channels", "in_channels", "channels"):
                    if isinstance(getattr(layer, attr, None), int):
                        ch = getattr(layer, attr)
                        break
                if kind == "Conv2d" or isinstance(layer, nn.Conv2d):
                    ch = layer.out_channels
            out.append((ch, level))
        return out

    def block_shapes_match(self, i: int, j: int) -> bool:
        return self._layout[i] == self._layout[j]

    @property
    def num_down_blocks(self) -> int:
        """``len(input_blocks)``: the middle block's index."""
        return len(self.model.model.diffusion_model.input_blocks)

    def default_objective(self):
        """IRA on ``middle_block`` + the last two VAE-encoder layers, IRC from a shallow input block to the output
        block that mirrors it (same shape); see :func:`anti_i2v.surrogates.svd.unet_default_objective`.

        Real SVD (25 blocks): IRA 12, IRC 2 -> 22 (``input_blocks.2`` -> ``output_blocks.9``, 320 channels at the
        full latent size).
        """
        return unet_default_objective(self, self.num_down_blocks)

    def encode(self, image: Tensor) -> Conditioning:
        """``SVD_img2vid_Conditioning``'s image inputs of ``image`` (B, 3, H, W in [0, 1]), differentiable.

        ``latent``: ``process_latent_in`` of the clean photo's VAE latent (scaled like the video latents, as the
        diffusers SVD adapter). ``parts``: ``pixels`` (for the per-draw augmented latent), ``image_latent`` (the
        unscaled latent SVD concatenates), ``image_embeds`` (CLIP-vision image embedding).
        """
        import comfy.utils

        with self.bound():
            b, _, h, w = image.shape
            x = image.to(self.device, torch.float32)
            pixels = comfy.utils.common_upscale(x, w, h, "bilinear", "center")  # (B, 3, H, W)
            lat = self._encode_latent(pixels)  # (B, 4, h/8, w/8); the clean photo: what VAE-layer hooks see
            cv = _clip_vision_encode(self._cv_shadow.root, self.clip_vision, x.movedim(1, -1), crop=True)
            return Conditioning(latent=self.base_model.process_latent_in(lat),
                                parts={"pixels": pixels, "image_latent": lat, "image_embeds": cv.image_embeds})

    def clean_latent(self, cond: Conditioning) -> Tensor:
        """The still video: the scaled photo latent repeated over ``num_frames``, (B, F, 4, h, w)."""
        return cond.latent.float().unsqueeze(1).expand(-1, int(self.num_frames), -1, -1, -1)

    def _latent_video(self, latent: Tensor) -> Tensor:
        """The sampler's (F, 4, h, w) frames as :meth:`clean_latent`'s (1, F, 4, h, w)."""
        return latent.unsqueeze(0)

    def conditioning_latent(self, cond: Conditioning, draw: NoiseDraw) -> Tensor:
        """The unscaled latent SVD concatenates: of ``pixels + augmentation_level * n`` (n from the draw's seed + 1)."""
        if self.augmentation_level <= 0:
            return cond.parts["image_latent"]
        pixels = cond.parts["pixels"]
        g = torch.Generator(device="cpu").manual_seed(self._seed(draw) + 1)
        aug = torch.randn(pixels.shape, generator=g).to(pixels.device)
        return self._encode_latent(pixels + aug * self.augmentation_level)

    def denoise(self, cond: Conditioning, noisy: Tensor, draw: NoiseDraw) -> Tensor:
        """``apply_model`` on the (B * F) frames of ``noisy`` (B, F, 4, h, w); returns (B, F, 4, h, w)."""
        with self.bound():
            b, frames = noisy.shape[:2]
            lat = self.conditioning_latent(cond, draw)
            if lat.shape[0] != b or lat.shape[1:] != noisy.shape[2:]:
                raise SurrogateError(f"the noisy latent has shape {tuple(noisy.shape)} but the conditioning latent "
                                     f"{tuple(lat.shape)}: batch and size must match")
            xt = noisy.reshape(b * frames, *noisy.shape[2:])
            sigma = draw.timestep.to(self.device, torch.float32).repeat_interleave(frames)
            emb = cond.parts["image_embeds"]
            per_image = []
            for i in range(b):
                c = {"cross_attn": emb[i:i + 1].unsqueeze(0), "motion_bucket_id": self.motion_bucket_id,
                     "fps": self.fps, "augmentation_level": self.augmentation_level,
                     "concat_latent_image": lat[i:i + 1]}
                per_image.append(self._model_conds(c, xt[i * frames:(i + 1) * frames], frames))
            conds = {}
            for k in per_image[0]:
                vals = [c[k] for c in per_image]
                conds[k] = torch.cat(vals) if isinstance(vals[0], Tensor) else vals[0]
            out = self._run(xt, sigma, conds)
            return out.reshape(b, frames, *out.shape[1:])

    def _sampling_inputs(self, pixels: Tensor, h: int, w: int):
        import comfy.utils

        output = self.clip_vision.encode_image(pixels)
        pooled = output.image_embeds.unsqueeze(0)
        enc = comfy.utils.common_upscale(pixels.movedim(-1, 1), w, h, "bilinear", "center").movedim(1, -1)
        t = self.vae.encode(enc[:, :, :, :3])
        common = {"motion_bucket_id": self.motion_bucket_id, "fps": self.fps,
                  "augmentation_level": self.augmentation_level}
        positive = [[pooled, {**common, "concat_latent_image": t}]]
        negative = [[torch.zeros_like(pooled), {**common, "concat_latent_image": torch.zeros_like(t)}]]
        latent = torch.zeros([int(self.num_frames), 4, h // 8, w // 8])
        return positive, negative, latent, "karras"
