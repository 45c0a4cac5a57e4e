"""Shared part of the families whose I2V node writes the photo's latent into the first latent frame.

LTX-Video (``LTXVImgToVideo``) and Wan 2.2 TI2V-5B (``Wan22ImageToVideoLatent``) condition on an image the same
way in ComfyUI 0.3.75: the photo alone is VAE-encoded (the causal VAEs encode the first frame on its own) and
written into the first latent frame of the empty video latent, with a ``noise_mask`` of ones that is
``1 - strength`` (LTX-Video; 0 for Wan 2.2) there. The sampler (``comfy/samplers.py`` ``KSamplerX0Inpaint``; both
models' ``scale_latent_inpaint`` return the clean latent) keeps that frame at the clean latent at every step:
``x = x * mask + latent_image * (1 - mask)``. The mask also reaches the model (``extra_conds`` ``denoise_mask``),
whose ``process_timestep`` turns it into a per-token (LTX-Video) or per-frame (Wan 2.2) timestep ``t * mask``:
the image's tokens are embedded at timestep 0.

In the surrogate protocol: :meth:`FirstFrameSurrogate.encode` gives ``process_latent_in`` of the photo's latent
(what the sampler's ``latent_image`` holds there); :meth:`~FirstFrameSurrogate.clean_latent` is the still video
(that latent over all latent frames); :meth:`~FirstFrameSurrogate.denoise` replaces the first latent frame of the
shared noisy latent by the photo's latent as the sampler does (the conditioning path: the perturbed and the target
pass share z_t everywhere else) and runs ``apply_model`` with the denoise mask.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from anti_i2v.surrogates.base import Conditioning, NoiseDraw, SurrogateError

from .base import NativeSurrogate

__all__ = ["FirstFrameSurrogate"]


class FirstFrameSurrogate(NativeSurrogate):
    """Base of the first-latent-frame families. Subclasses set :attr:`temporal_factor`, ``text_cond`` /
    ``text_extra`` (the text conditioning) and :attr:`strength`, and list their blocks and VAE layers."""

    #: pixel frames per latent frame after the first (the VAE's temporal compression)
    temporal_factor = 4
    #: the I2V node's strength: the first latent frame's mask is ``1 - strength``
    strength = 1.0
    text_cond: Tensor
    text_extra: dict

    @property
    def latent_frames(self) -> int:
        """The I2V node's latent length for ``num_frames`` pixel frames: ``(length - 1) // factor + 1``."""
        return (int(self.num_frames) - 1) // self.temporal_factor + 1

    def encode(self, image: Tensor) -> Conditioning:
        """The photo's latent as the I2V node writes it into the first latent frame, differentiable.

        ``latent``: ``process_latent_in`` of the VAE latent of each photo as a one-frame video, (B, C, 1, h, w).
        """
        import comfy.utils

        with self.bound():
            b, _, h, w = image.shape
            x = image.to(self.device, torch.float32)
            pixels = comfy.utils.common_upscale(x, w, h, "bilinear", "center")  # (B, 3, H, W)
            lat = self._encode_latent(pixels.unsqueeze(2))  # (B, C, 1, h, w)
            return Conditioning(latent=self.base_model.process_latent_in(lat), parts={})

    def clean_latent(self, cond: Conditioning) -> Tensor:
        """The still video: the photo's latent repeated over the latent frames, (B, C, T, h, w)."""
        return cond.latent.float().expand(-1, -1, self.latent_frames, -1, -1)

    def conditioning_mask(self, shape: Sequence[int]) -> Tensor:
        """The I2V node's noise mask (ones, ``1 - strength`` on the first latent frame) at ``shape``, as the
        sampler's ``prepare_mask`` reshapes it."""
        import comfy.utils

        b, t = shape[0], shape[2]
        mask = torch.ones((b, 1, t, 1, 1), dtype=torch.float32)
        mask[:, :, :1] = 1.0 - self.strength
        return comfy.utils.reshape_mask(mask, tuple(shape)).to(self.device)

    def denoise(self, cond: Conditioning, noisy: Tensor, draw: NoiseDraw) -> Tensor:
        """``apply_model`` on ``noisy`` (B, C, T, h, w) with its first latent frame replaced as the sampler does
        (``x * mask + latent_image * (1 - mask)``) and the mask as per-token / per-frame timestep."""
        with self.bound():
            lat = cond.latent.to(self.device).float()
            b = lat.shape[0]
            if noisy.shape[0] != b or noisy.shape[1] != lat.shape[1] or noisy.shape[3:] != lat.shape[3:]:
                raise SurrogateError(
                    f"the noisy latent has shape {tuple(noisy.shape)} but the photo latent {tuple(lat.shape)}: "
                    "batch, channels and size must match"
                )
            mask = self.conditioning_mask(noisy.shape)
            image_frames = torch.cat([lat, torch.zeros_like(noisy[:, :, 1:])], dim=2)
            x = noisy.to(self.device).float() * mask + image_frames * (1.0 - mask)
            c = dict(self.text_extra)
            c["cross_attn"] = self.text_cond.to(self.device)
            sigma = draw.timestep.to(self.device, torch.float32)
            conds = self._model_conds(c, x, b, denoise_mask=mask)
            return self._run(x, sigma, conds)
