"""Native HunyuanVideo I2V surrogate: ``HunyuanImageToVideo`` (guidance ``v1 (concat)``), double + single blocks.

How ComfyUI 0.3.75 conditions HunyuanVideo I2V on an image (``comfy_extras/nodes_hunyuan.py``
``HunyuanImageToVideo``, ``comfy/model_base.py`` ``HunyuanVideo`` / ``HunyuanVideoI2V``), reproduced here with
differentiable ops:

* The model: ``comfy.model_base.HunyuanVideoI2V``, which ComfyUI picks when the diffusion model's ``img_in``
  takes **33** input channels (16 noise + 16 image latent + 1 mask; ``supported_models.HunyuanVideoI2V``). Its
  ``concat_keys`` are ``("concat_image", "mask_inverted")``.
* ``HunyuanImageToVideo`` with ``guidance_type="v1 (concat)"`` VAE-encodes the photo alone (a one-frame video:
  the causal 3-D VAE, 8x in space, 4 frames per latent frame after the first, 16 channels) and sets
  ``concat_latent_image`` (that one latent frame) and ``concat_mask`` (ones over the
  ``(length - 1) // 4 + 1`` latent frames, 0 on the first). ``BaseModel.concat_cond`` scales the latent
  (``process_latent_in``), pads it with zero frames to the noise's length and appends ``1 - mask``: the model
  input is ``[z_t, image latent + zero frames, 1 on the first frame]`` (33 channels).
* Text: the ``positive`` CONDITIONING of the user's text encoder (``TextEncodeHunyuanVideo_ImageToVideo``:
  LLaVA-LLaMA-3 hidden states, 4096 wide, through ``txt_in``'s token refiner, plus CLIP-L's pooled output, 768
  wide, through ``vector_in``) and the distilled guidance (``guidance``, 6 by default, through ``guidance_in``).

**What the surrogate cannot cover.** In HunyuanVideo I2V the photo *also* enters through the text encoder:
``TextEncodeHunyuanVideo_ImageToVideo`` feeds the CLIP-vision output of the photo (``llava_llama3_vision``) to
the LLaVA-LLaMA-3 8B encoder, whose image tokens are part of the ``positive`` tensor. That path is computed by the
user's text encoder from the **clean** photo before this node runs; the surrogate takes ``positive`` as a
constant (without the 8B encoder in the loop it cannot differentiate through it), so the perturbation attacks the
VAE-latent path (the concatenated image latent and the still video the loss reads) and not the image tokens in
the text stream. Guidance ``v2 (replace)`` (first latent frame replaced, per-token modulation) and ``custom``
(``ref_latent`` tokens) are not reproduced: the surrogate follows ``v1 (concat)``, ComfyUI's template default.

Blocks (:meth:`NativeHunyuanVideoSurrogate.denoiser_blocks`): the 20 ``double_blocks`` (image and text streams
apart) then the 40 ``single_blocks`` (one joint stream), numbered in one list: index ``i < D`` is
``double_blocks.i``, index ``D + j`` is ``single_blocks.j`` (D = number of double blocks). A double block's
output is its image stream; a single block's joint output ``[image tokens, text tokens]`` is cut to its image
tokens before the loss reads it (a tap module called inside the block's forward on the surrogate's private
shadow), so every block gives the same ``(B, N_image, hidden)`` grid and any IRC pair is valid.

ComfyUI's ``DoubleStreamBlock`` / ``SingleStreamBlock`` (``comfy/ldm/flux/layers.py``) add their residuals in
place, which autograd refuses; the shadows run out-of-place copies of those forwards (same operations and values).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor, nn

from anti_i2v.surrogates.base import Conditioning, NoiseDraw, SurrogateError

from .base import OUT_OF_PLACE, NativeSurrogate, _text_conditioning, comfy_encoder_layers

__all__ = ["NativeHunyuanVideoSurrogate", "HUNYUAN_GUIDANCE_TYPES"]

#: HunyuanImageToVideo guidance types the surrogate reproduces
HUNYUAN_GUIDANCE_TYPES = ("v1 (concat)",)
#: CLIP-L's pooled output width (``vector_in``), ComfyUI's ``vec_in_dim`` for HunyuanVideo
POOLED_WIDTH = 768


def _apply_mod(x: Tensor, mult: Tensor, add: Tensor | None = None, dims: Any = None) -> Tensor:
    """``comfy.ldm.flux.layers.apply_mod`` without writing into ``x``."""
    if dims is None:
        return torch.addcmul(add, x, mult) if add is not None else x * mult
    pieces = []
    for start, end, k in dims:
        piece = x[:, start:end] * mult[:, k]
        if add is not None:
            piece = piece + add[:, k]
        pieces.append(piece)
    return torch.cat(pieces, dim=1)


def _double_forward(self: nn.Module, img: Tensor, txt: Tensor, vec: Tensor, pe: Tensor, attn_mask=None,
                    modulation_dims_img=None, modulation_dims_txt=None, transformer_options={}):
    """``DoubleStreamBlock.forward`` (HunyuanVideo: modulated, image tokens first) with out-of-place residuals."""
    from comfy.ldm.flux.math import attention

    img_mod1, img_mod2 = self.img_mod(vec)
    txt_mod1, txt_mod2 = self.txt_mod(vec)

    def qkv(stream_attn, norm, x, mod, dims):
        h = _apply_mod(norm(x), 1 + mod.scale, mod.shift, dims)
        t = stream_attn.qkv(h)
        q, k, v = t.view(t.shape[0], t.shape[1], 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k = stream_attn.norm(q, k, v)
        return q, k, v

    iq, ik, iv = qkv(self.img_attn, self.img_norm1, img, img_mod1, modulation_dims_img)
    tq, tk, tv = qkv(self.txt_attn, self.txt_norm1, txt, txt_mod1, modulation_dims_txt)
    if not self.flipped_img_txt:
        raise SurrogateError("HunyuanVideo double blocks put the image tokens first (flipped_img_txt)")
    attn = attention(torch.cat((iq, tq), dim=2), torch.cat((ik, tk), dim=2), torch.cat((iv, tv), dim=2),
                     pe=pe, mask=attn_mask, transformer_options=transformer_options)
    img_attn, txt_attn = attn[:, :img.shape[1]], attn[:, img.shape[1]:]
    img = img + _apply_mod(self.img_attn.proj(img_attn), img_mod1.gate, None, modulation_dims_img)
    img = img + _apply_mod(self.img_mlp(_apply_mod(self.img_norm2(img), 1 + img_mod2.scale, img_mod2.shift,
                                                   modulation_dims_img)), img_mod2.gate, None, modulation_dims_img)
    txt = txt + _apply_mod(self.txt_attn.proj(txt_attn), txt_mod1.gate, None, modulation_dims_txt)
    txt = txt + _apply_mod(self.txt_mlp(_apply_mod(self.txt_norm2(txt), 1 + txt_mod2.scale, txt_mod2.shift,
                                                   modulation_dims_txt)), txt_mod2.gate, None, modulation_dims_txt)
    if txt.dtype == torch.float16:
        txt = torch.nan_to_num(txt, nan=0.0, posinf=65504, neginf=-65504)
    return img, txt


def _single_forward(self: nn.Module, x: Tensor, vec: Tensor, pe: Tensor, attn_mask=None, modulation_dims=None,
                    transformer_options={}) -> Tensor:
    """``SingleStreamBlock.forward`` (modulated) with an out-of-place residual."""
    from comfy.ldm.flux.math import attention

    mod, _ = self.modulation(vec)
    h = self.linear1(_apply_mod(self.pre_norm(x), 1 + mod.scale, mod.shift, modulation_dims))
    qkv, mlp = torch.split(h, [3 * self.hidden_size, self.mlp_hidden_dim_first], dim=-1)
    q, k, v = qkv.view(qkv.shape[0], qkv.shape[1], 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
    q, k = self.norm(q, k, v)
    attn = attention(q, k, v, pe=pe, mask=attn_mask, transformer_options=transformer_options)
    out = self.linear2(torch.cat((attn, self.mlp_act(mlp)), 2))
    x = x + _apply_mod(out, mod.gate, None, modulation_dims)
    if x.dtype == torch.float16:
        x = torch.nan_to_num(x, nan=0.0, posinf=65504, neginf=-65504)
    return x


OUT_OF_PLACE[("comfy.ldm.flux.layers", "DoubleStreamBlock")] = _double_forward
OUT_OF_PLACE[("comfy.ldm.flux.layers", "SingleStreamBlock")] = _single_forward


class _ImageTokens(nn.Identity):
    """Identity module called with a single block's image tokens (the loss's hooks sit on it)."""


class NativeHunyuanVideoSurrogate(NativeSurrogate):
    """Native HunyuanVideo I2V surrogate (``HunyuanVideoI2V``, 33 input channels; module docstring for details).

    Args (besides :class:`NativeSurrogate`'s):
        positive: the ComfyUI ``CONDITIONING`` of ``TextEncodeHunyuanVideo_ImageToVideo`` (LLaVA-LLaMA-3 tokens,
            4096 wide, with CLIP-L's ``pooled_output``), as the user's graph computed it from the clean photo; one
            zero token and a zero pooled output when None.
        guidance_type: ``HunyuanImageToVideo``'s guidance type; only ``"v1 (concat)"`` is reproduced.
    """

    family = "hunyuan-native"
    native_area = 480 * 848
    size_multiple = 16
    default_size = (480, 848)
    temporal_factor = 4

    def __init__(self, *, positive: Any = None, guidance_type: str = "v1 (concat)", **kwargs) -> None:
        super().__init__(positive=positive, **kwargs)
        if guidance_type not in HUNYUAN_GUIDANCE_TYPES:
            raise ValueError(f"guidance_type {guidance_type!r}: the native HunyuanVideo surrogate reproduces "
                             f"{', '.join(HUNYUAN_GUIDANCE_TYPES)} (HunyuanImageToVideo's default); set your "
                             f"HunyuanImageToVideo node to it")
        self.guidance_type = guidance_type
        lat = self.model.model.latent_format.latent_channels
        if (getattr(self.vae, "latent_channels", None) != lat or getattr(self.vae, "latent_dim", 2) != 3
                or type(self.vae.first_stage_model).__name__ != "AutoencoderKL"):
            raise ValueError(f"vae: the connected VAE ({type(self.vae.first_stage_model).__name__}, "
                             f"{getattr(self.vae, 'latent_channels', '?')} latent channels) is not HunyuanVideo's "
                             f"(3-D, {lat} channels); connect hunyuan_video_vae_bf16.safetensors from a VAELoader")
        dm = self.model.model.diffusion_model
        width = int(dm.txt_in.input_embedder.weight.shape[1])
        self.text_cond, self.text_extra, self.text_source = _text_conditioning(
            positive, width, "the HunyuanVideo model", "LLaVA-LLaMA-3 (DualCLIPLoader type hunyuan_video)")
        if self.text_extra.get("pooled_output") is None:  # what CLIP-L gives; ComfyUI's y needs one
            self.text_extra["pooled_output"] = torch.zeros(1, POOLED_WIDTH)
        self._taps = [_ImageTokens() for _ in dm.single_blocks]
        self._image_tokens = 0

    # ------------------------------------------------------------- blocks
    def _install_taps(self) -> None:
        """Make each shadow single block call its tap with its output's image tokens (private shadow only)."""
        for block, tap in zip(self.denoiser().single_blocks, self._taps):
            if block.__dict__.get("_anti_i2v_tap") is tap:
                continue
            inner = block.__dict__.get("forward") or type(block).forward.__get__(block, type(block))

            def forward(*args, _inner=inner, _tap=tap, **kwargs):
                out = _inner(*args, **kwargs)
                _tap(out[:, :self._image_tokens])
                return out

            block.__dict__["forward"] = forward
            block.__dict__["_anti_i2v_tap"] = tap

    def denoiser_blocks(self) -> Sequence[tuple[str, nn.Module]]:
        """``double_blocks.0..D-1`` then ``single_blocks.0..S-1`` (each single block's image-token tap)."""
        dm = self.denoiser()
        out = [(f"double_blocks.{i}", b) for i, b in enumerate(dm.double_blocks)]
        out += [(f"single_blocks.{j}", t) for j, t in enumerate(self._taps)]
        return out

    def vae_encoder_layers(self) -> Sequence[tuple[str, nn.Module]]:
        """The 3-D VAE encoder's layers (``comfy.ldm.modules.diffusionmodules.model.Encoder``, as SVD's)."""
        return comfy_encoder_layers(self._vae_shadow.root.encoder)

    def default_objective(self):
        """The paper's depth ratios over the one block list (HunyuanVideo, 20 double + 40 single blocks: IRA on
        index 39 = ``single_blocks.19`` and the last two VAE-encoder layers, IRC 4 -> 39); every listed block
        gives the image-token grid, so any pair is valid."""
        return super().default_objective()

    @property
    def patch_size(self) -> int:
        """The transformer's spatial patch size (``img_in``: 1 x 2 x 2), for layer PCA maps."""
        return int(self.model.model.diffusion_model.patch_size[-1])

    def describe(self) -> dict:
        d = super().describe()
        d.update({"text": self.text_source, "guidance_type": self.guidance_type,
                  "image_in_text_encoder": "not attacked (the text encoder's image tokens come from the clean photo)"})
        return d

    # ------------------------------------------------------------- protocol
    @property
    def latent_frames(self) -> int:
        """``HunyuanImageToVideo``'s latent length: ``(length - 1) // 4 + 1``."""
        return (int(self.num_frames) - 1) // self.temporal_factor + 1

    def encode(self, image: Tensor) -> Conditioning:
        """``HunyuanImageToVideo``'s image latent of ``image`` (B, 3, H, W in [0, 1]), differentiable.

        ``latent``: ``process_latent_in`` of the photo's VAE latent (one latent frame), (B, 16, 1, h, w).
        ``parts["concat_latent_image"]``: the raw latent, as the node puts it into the conditioning.
        """
        import comfy.utils

        with self.bound():
            b, _, h, w = image.shape
            x = image.to(self.device, torch.float32)
            pixels = comfy.utils.common_upscale(x, w, h, "bilinear", "center")
            lat = self._encode_latent(pixels.unsqueeze(2))  # (B, 16, 1, h/8, w/8)
            return Conditioning(latent=self.base_model.process_latent_in(lat), parts={"concat_latent_image": lat})

    def clean_latent(self, cond: Conditioning) -> Tensor:
        """The still video: the photo's latent repeated over the latent frames, (B, 16, T, h, w)."""
        return cond.latent.float().expand(-1, -1, self.latent_frames, -1, -1)

    def denoise(self, cond: Conditioning, noisy: Tensor, draw: NoiseDraw) -> Tensor:
        """``apply_model`` with ``HunyuanImageToVideo`` v1's ``concat_latent_image`` / ``concat_mask``."""
        with self.bound():
            lat = cond.parts["concat_latent_image"]
            b = lat.shape[0]
            if noisy.shape[0] != b or noisy.shape[1] != lat.shape[1] or noisy.shape[3:] != lat.shape[3:]:
                raise SurrogateError(
                    f"the noisy latent has shape {tuple(noisy.shape)} but the photo latent {tuple(lat.shape)}: "
                    "batch, channels and size must match"
                )
            mask = torch.ones((1, 1, noisy.shape[2], lat.shape[-2], lat.shape[-1]), device=self.device)
            mask[:, :, :1] = 0.0  # ((start frames - 1) // 4) + 1 = 1 latent frame is known
            c = dict(self.text_extra)
            c["cross_attn"] = self.text_cond.to(self.device)
            c["concat_latent_image"] = lat
            c["concat_mask"] = mask
            sigma = draw.timestep.to(self.device, torch.float32)
            x = noisy.to(self.device).float()
            conds = self._model_conds(c, x, b)
            dm = self.denoiser()
            patch = dm.patch_size
            self._image_tokens = ((x.shape[2] // patch[0]) * (x.shape[3] // patch[1]) * (x.shape[4] // patch[2]))
            self._install_taps()
            return self._run(x, sigma, conds)

    def _sampling_inputs(self, pixels: Tensor, h: int, w: int):
        import comfy.utils

        length = int(self.num_frames)
        start = comfy.utils.common_upscale(pixels[:1].movedim(-1, 1), w, h, "bilinear", "center").movedim(1, -1)
        concat = self.vae.encode(start[:, :, :, :3])
        latent = torch.zeros([1, 16, (length - 1) // 4 + 1, h // 8, w // 8])
        mask = torch.ones((1, 1, latent.shape[2], concat.shape[-2], concat.shape[-1]))
        mask[:, :, :1] = 0.0
        extra = {"concat_latent_image": concat, "concat_mask": mask}
        positive = [[self.text_cond.clone(), {**self.text_extra, **extra}]]
        negative = [[torch.zeros_like(self.text_cond), {"pooled_output": torch.zeros_like(
            self.text_extra["pooled_output"]), **extra}]]
        return positive, negative, latent, "simple"
