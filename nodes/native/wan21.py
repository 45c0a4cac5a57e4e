"""Native Wan 2.1 I2V (and Wan 2.2 14B I2V) surrogate: ``WanImageToVideo`` conditioning, ``blocks`` hooks.

See :mod:`nodes.native.base` for the shared design (shadows, binding, noise).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor, nn

from anti_i2v.surrogates.base import Conditioning, NoiseDraw, SurrogateError

from .base import CLIP_VISION_CROPS, NativeSurrogate, log

__all__ = ["NativeWan21Surrogate"]


# ---------------------------------------------------------------------------------------------- Wan
def wan_blocks(dm: nn.Module) -> list[tuple[str, nn.Module]]:
    """The ``blocks`` of ComfyUI's Wan model (2.1 and 2.2)."""
    return [(f"blocks.{i}", b) for i, b in enumerate(dm.blocks)]


def wan_vae_encoder_layers(enc: nn.Module) -> list[tuple[str, nn.Module]]:
    """The layers of ComfyUI's Wan VAE encoder the IRA loss can read (2.1's and 2.2's share the layout)."""
    out = [("encoder.conv1", enc.conv1)]
    out += [(f"encoder.downsamples.{i}", m) for i, m in enumerate(enc.downsamples)]
    out += [(f"encoder.middle.{i}", m) for i, m in enumerate(enc.middle)]
    out.append((f"encoder.head.{len(enc.head) - 1}", enc.head[-1]))
    return out


class NativeWan21Surrogate(NativeSurrogate):
    """Native Wan 2.1 I2V (and Wan 2.2 14B I2V) surrogate: ``WanImageToVideo`` conditioning, ``blocks`` hooks."""

    family = "wan21-native"
    native_area = 480 * 832
    size_multiple = 16
    default_size = (480, 832)

    def __init__(self, *, positive: Any = None, clip_vision_crop: str = "none", **kwargs) -> None:
        super().__init__(positive=positive, **kwargs)
        if clip_vision_crop not in CLIP_VISION_CROPS:
            raise ValueError(f"clip_vision_crop must be one of {', '.join(CLIP_VISION_CROPS)} (the crop of your "
                             f"CLIPVisionEncode node), got {clip_vision_crop!r}")
        self.clip_vision_crop = clip_vision_crop
        dm = self.model.model.diffusion_model
        text_dim = int(getattr(dm, "text_dim", 4096))
        if positive is None:
            # one zero token: with identical tokens, cross-attention is the same for any token count
            self.text_cond = torch.zeros(1, 1, text_dim)
            self.text_extra: dict = {}
            self.text_source = "zeros"
        else:
            if not isinstance(positive, (list, tuple)) or not positive or not isinstance(positive[0][0], Tensor):
                raise ValueError("positive: expected a ComfyUI CONDITIONING (a list of [tensor, dict])")
            emb = positive[0][0]
            if emb.shape[-1] != text_dim:
                raise ValueError(f"positive: the conditioning has width {emb.shape[-1]} but the Wan model expects "
                                 f"{text_dim} (umT5-XXL); connect the CLIPTextEncode output of the Wan text encoder")
            with torch.inference_mode(False):
                self.text_cond = emb.detach().clone()
            self.text_extra = {k: v for k, v in positive[0][1].items()
                               if k not in ("concat_latent_image", "concat_mask", "clip_vision_output")}
            self.text_source = "conditioning"
        if len(positive or []) > 1:
            log.warning("positive has %d entries; the surrogate uses the first", len(positive))

    def denoiser_blocks(self) -> Sequence[tuple[str, nn.Module]]:
        return wan_blocks(self.denoiser())

    def vae_encoder_layers(self) -> Sequence[tuple[str, nn.Module]]:
        return wan_vae_encoder_layers(self._vae_shadow.root.encoder)

    def describe(self) -> dict:
        d = super().describe()
        d["text"] = self.text_source
        return d

    def _video(self, pixels: Tensor, length: int) -> Tensor:
        """WanImageToVideo's pixel video: the start image, then grey (0.5) frames; (B, T, H, W, 3)."""
        b, h, w, _ = pixels.shape
        grey = torch.full((b, length - 1, h, w, 3), 0.5, device=pixels.device, dtype=pixels.dtype)
        return torch.cat([pixels[:, None, ..., :3], grey], dim=1)

    def encode(self, image: Tensor) -> Conditioning:
        """``WanImageToVideo``'s conditioning of ``image`` (B, 3, H, W in [0, 1]), differentiable.

        ``latent``: ``process_latent_in`` of the photo's latent (the first latent frame of the conditioning video),
        (B, 16, 1, h, w), as the diffusers Wan adapter. ``parts``: ``concat_latent_image`` (the raw VAE latent of
        [photo, grey frames], (B, 16, T, h, w)) and, with a CLIP_VISION, the CLIP-vision output tensors.
        """
        import comfy.utils

        with self.bound():
            b, _, h, w = image.shape
            length = int(self.num_frames)
            x = image.to(self.device, torch.float32)
            start = comfy.utils.common_upscale(x, w, h, "bilinear", "center").movedim(1, -1)  # (B, H, W, 3)
            video = self._video(start, length).movedim(-1, 1)  # (B, 3, T, H, W)
            lat = self._encode_latent(video)  # (B, 16, t, h/8, w/8), unscaled as VAE.encode returns
            parts: dict = {"concat_latent_image": lat}
            if self.clip_vision is not None:
                parts.update(self._cv_parts(start))
            return Conditioning(latent=self.base_model.process_latent_in(lat[:, :, :1]), parts=parts)

    def image_embedding(self, cond: Conditioning) -> Tensor | None:
        """The CLIP-vision tokens WanImageToVideo feeds the model (``penultimate_hidden_states``), or None without
        a CLIP_VISION (VGMShield's image-encoder term)."""
        emb = cond.parts.get("clip_vision.penultimate_hidden_states")
        return emb if isinstance(emb, Tensor) else None

    def clean_latent(self, cond: Conditioning) -> Tensor:
        """The still video: the photo's latent repeated over the T latent frames, (B, 16, T, h, w)."""
        t_lat = cond.parts["concat_latent_image"].shape[2]
        return cond.latent.float().expand(-1, -1, t_lat, -1, -1)

    def denoise(self, cond: Conditioning, noisy: Tensor, draw: NoiseDraw) -> Tensor:
        """``apply_model`` with the conditioning of ``WanImageToVideo`` (mask on the first latent frame)."""
        with self.bound():
            lat = cond.parts["concat_latent_image"]
            b = lat.shape[0]
            if noisy.shape[0] != b or noisy.shape[2:] != lat.shape[2:]:
                raise SurrogateError(
                    f"the noisy latent has shape {tuple(noisy.shape)} but the conditioning latent {tuple(lat.shape)}: "
                    "batch, latent frames and size must match (was num_frames changed after clean_latent?)"
                )
            mask = torch.ones((1, 1, lat.shape[2], lat.shape[-2], lat.shape[-1]), device=lat.device, dtype=lat.dtype)
            mask[:, :, :1] = 0.0  # ((start frames - 1) // 4) + 1 = 1 latent frame is known
            c = dict(self.text_extra)
            c["cross_attn"] = self.text_cond.to(self.device)
            c["concat_latent_image"] = lat
            c["concat_mask"] = mask
            if self.clip_vision is not None:
                c["clip_vision_output"] = self._cv_output(cond.parts)
            sigma = draw.timestep.to(self.device, torch.float32)
            conds = self._model_conds(c, noisy, b)
            return self._run(noisy, sigma, conds)

    def _sampling_inputs(self, pixels: Tensor, h: int, w: int):
        import comfy.utils

        length = int(self.num_frames)
        start = comfy.utils.common_upscale(pixels[:length].movedim(-1, 1), w, h, "bilinear", "center").movedim(1, -1)
        video = torch.ones((length, h, w, start.shape[-1]), dtype=start.dtype) * 0.5
        video[:start.shape[0]] = start
        concat = self.vae.encode(video[:, :, :, :3])
        latent = torch.zeros([1, 16, ((length - 1) // 4) + 1, h // 8, w // 8])
        mask = torch.ones((1, 1, latent.shape[2], concat.shape[-2], concat.shape[-1]))
        mask[:, :, :((start.shape[0] - 1) // 4) + 1] = 0.0
        extra = {"concat_latent_image": concat, "concat_mask": mask}
        if self.clip_vision is not None:
            extra["clip_vision_output"] = self.clip_vision.encode_image(start, crop=self.clip_vision_crop == "center")
        positive = [[self.text_cond.clone(), {**self.text_extra, **extra}]]
        negative = [[torch.zeros_like(self.text_cond), dict(extra)]]
        return positive, negative, latent, "simple"
