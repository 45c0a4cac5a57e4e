"""Native LTX-Video surrogate: ``LTXVImgToVideo`` conditioning, ``transformer_blocks`` hooks.

How ComfyUI 0.3.75 conditions LTX-Video on an image (``comfy_extras/nodes_lt.py``, ``comfy/model_base.py``
``LTXV``, ``comfy/samplers.py`` ``KSamplerX0Inpaint``), reproduced here with differentiable ops:

* ``LTXVImgToVideo`` VAE-encodes the photo alone (a one-frame video; the VAE compresses 8 frames to one latent
  frame after the first, 32x in space, to 128 channels) and writes it into the **first latent frame** of an
  empty ``(B, 128, (length - 1) // 8 + 1, H / 32, W / 32)`` latent, with a ``noise_mask`` of ones except
  ``1 - strength`` on that frame (``strength`` 1 by default: the frame is fully known).
* The sampler keeps masked latents at the clean image: at every step ``x = x * mask + latent_image * (1 - mask)``
  (``LTXV.scale_latent_inpaint`` returns the clean latent, no noise), so the first latent frame of ``z_t`` *is*
  the photo's latent.
* The mask also reaches the model (``extra_conds`` ``denoise_mask``) and ``LTXV.process_timestep`` turns it into
  a **per-token timestep** ``t * mask``: the image tokens are embedded at timestep 0, the others at ``t``.
* Text: T5-XXL tokens (4096 wide, projected by ``caption_projection``) and ``frame_rate`` (``LTXVConditioning``,
  25 by default) for the rotary positions.

The surrogate protocol for this way of conditioning is shared with Wan 2.2 TI2V-5B in
:class:`~.first_frame.FirstFrameSurrogate`.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor, nn


from .base import OUT_OF_PLACE, _text_conditioning
from .first_frame import FirstFrameSurrogate

__all__ = ["NativeLTXVSurrogate"]


def _block_forward(self: nn.Module, x: Tensor, context: Tensor | None = None, attention_mask: Tensor | None = None,
                   timestep: Tensor | None = None, pe: Any = None, transformer_options: dict = {}) -> Tensor:
    """``comfy.ldm.lightricks.model.BasicTransformerBlock.forward`` without its in-place updates of ``x`` (autograd
    refuses them: the block's input is saved for backward). Same operations and values."""
    import comfy.ldm.common_dit

    table = self.scale_shift_table[None, None].to(device=x.device, dtype=x.dtype)
    mod = table + timestep.reshape(x.shape[0], timestep.shape[1], self.scale_shift_table.shape[0], -1)
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mod.unbind(dim=2)
    h = comfy.ldm.common_dit.rms_norm(x)
    h = torch.addcmul(h, h, scale_msa) + shift_msa
    x = torch.addcmul(x, self.attn1(h, pe=pe, transformer_options=transformer_options), gate_msa)
    x = x + self.attn2(x, context=context, mask=attention_mask, transformer_options=transformer_options)
    y = comfy.ldm.common_dit.rms_norm(x)
    y = torch.addcmul(y, y, scale_mlp) + shift_mlp
    return torch.addcmul(x, self.ff(y), gate_mlp)


OUT_OF_PLACE[("comfy.ldm.lightricks.model", "BasicTransformerBlock")] = _block_forward


class NativeLTXVSurrogate(FirstFrameSurrogate):
    """Native LTX-Video (0.9.x, 2B and 13B) surrogate.

    Args (besides :class:`NativeSurrogate`'s):
        positive: the ComfyUI ``CONDITIONING`` of the T5-XXL text encoder (``CLIPTextEncode``, optionally through
            ``LTXVConditioning``); one zero token of width 4096 when None.
        strength: ``LTXVImgToVideo``'s ``strength`` (1: the first latent frame is fully the photo).
        frame_rate: used when ``positive`` carries none (``LTXVConditioning``'s default 25).
    """

    family = "ltxv-native"
    native_area = 512 * 768
    size_multiple = 32
    default_size = (512, 768)
    temporal_factor = 8
    #: the transformer's patch size (``SymmetricPatchifier(1)``): one token per latent pixel (layer PCA maps)
    patch_size = 1

    def __init__(self, *, positive: Any = None, strength: float = 1.0, frame_rate: float = 25.0,
                 **kwargs) -> None:
        super().__init__(positive=positive, **kwargs)
        lat = self.model.model.latent_format.latent_channels
        if getattr(self.vae, "latent_channels", None) != lat or type(self.vae.first_stage_model).__name__ != "VideoVAE":
            raise ValueError(f"vae: the connected VAE ({type(self.vae.first_stage_model).__name__}, "
                             f"{getattr(self.vae, 'latent_channels', '?')} latent channels) is not LTX-Video's "
                             f"(VideoVAE, {lat} channels); connect the VAE output of the LTX-Video checkpoint")
        if not 0.0 <= float(strength) <= 1.0:
            raise ValueError(f"strength must be in [0, 1], got {strength}")
        self.strength = float(strength)
        width = int(self.model.model.diffusion_model.caption_projection.linear_1.weight.shape[1])
        self.text_cond, self.text_extra, self.text_source = _text_conditioning(
            positive, width, "the LTX-Video model", "T5-XXL (CLIPLoader type ltxv)")
        self.text_extra.setdefault("frame_rate", float(frame_rate))
        # LTXVModel.forward requires an attention mask; T5 conditionings carry one (all tokens kept for zeros)
        self.text_extra.setdefault("attention_mask", torch.ones(1, self.text_cond.shape[1], dtype=torch.long))

    def denoiser_blocks(self) -> Sequence[tuple[str, nn.Module]]:
        return [(f"transformer_blocks.{i}", b) for i, b in enumerate(self.denoiser().transformer_blocks)]

    def vae_encoder_layers(self) -> Sequence[tuple[str, nn.Module]]:
        enc = self._vae_shadow.root.encoder
        out = [("encoder.conv_in", enc.conv_in)]
        out += [(f"encoder.down_blocks.{i}", m) for i, m in enumerate(enc.down_blocks)]
        out.append(("encoder.conv_out", enc.conv_out))
        return out

    def default_objective(self):
        """The paper's depth ratios on the transformer blocks (LTX-Video 2B, 28 blocks: IRA on block 18 and the last
        two VAE-encoder layers, IRC 2 -> 18); every block outputs the same token grid, so any pair is valid."""
        return super().default_objective()

    def describe(self) -> dict:
        d = super().describe()
        d.update({"text": self.text_source, "strength": self.strength,
                  "frame_rate": float(self.text_extra.get("frame_rate", 25.0))})
        return d

    def _sampling_inputs(self, pixels: Tensor, h: int, w: int):
        import comfy.utils

        length = int(self.num_frames)
        start = comfy.utils.common_upscale(pixels[:1].movedim(-1, 1), w, h, "bilinear", "center").movedim(1, -1)
        t = self.vae.encode(start[:, :, :, :3])
        latent = torch.zeros([1, 128, (length - 1) // 8 + 1, h // 32, w // 32])
        latent[:, :, :t.shape[2]] = t
        mask = torch.ones((1, 1, latent.shape[2], 1, 1))
        mask[:, :, :t.shape[2]] = 1.0 - self.strength
        positive = [[self.text_cond.clone(), dict(self.text_extra)]]
        negative = [[torch.zeros_like(self.text_cond), {k: self.text_extra[k] for k in ("frame_rate", "attention_mask")}]]
        return positive, negative, latent, "simple", mask
