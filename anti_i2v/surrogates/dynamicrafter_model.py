"""DynamiCrafter's networks, written for this pack in the module layout of the official checkpoint.

DynamiCrafter (Xing et al., ECCV 2024; code Doubiiu/DynamiCrafter) is not in diffusers nor native in ComfyUI. This
module re-implements, from the published architecture, the parts the surrogate runs, with the *same module names*
as the official ``model.ckpt`` so that its state dict loads by real key names (``model.diffusion_model.*`` into
:class:`LVDMUNet`, ``image_proj_model.*`` into :class:`Resampler`):

* :class:`LVDMUNet` - the LVDM 3-D U-Net (``lvdm/modules/networks/openaimodel3d.py`` ``UNetModel``): 2-D ResBlocks
  with a temporal convolution (``temopral_conv``, the checkpoint's spelling), spatial transformers whose
  cross-attention reads the 77 text tokens and, through a second key/value pair (``to_k_ip``/``to_v_ip``), the image
  tokens after them; temporal self-attention transformers; ``init_attn`` after ``input_blocks[0]``; an fps (or frame
  stride) embedding added to the timestep embedding. Attention uses ``F.scaled_dot_product_attention`` (the same
  softmax(q k^T / sqrt(d)) v as upstream's einsum; no xformers).
* :class:`Resampler` - the Perceiver resampler (``lvdm/modules/encoders/resampler.py``) that maps the OpenCLIP
  ViT-H/14 tokens (257 x 1280) to 16 queries per frame (16 x 16 = 256 tokens of 1024).

The VAE (SD-2 KL-f8) is diffusers' ``AutoencoderKL`` with a key-name mapping (:func:`vae_ldm_key`), and the OpenCLIP
vision and text towers are open_clip's own model classes built without pretrained weights (see ``dynamicrafter.py``).

Only the configurations the published checkpoints use are supported (temporal self-attention only, no relative
positions, no causal temporal mask, no ResBlock up/down sampling); others raise ``ValueError`` when built.
"""

from __future__ import annotations

import math
import re
from typing import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

__all__ = [
    "LVDMUNet",
    "Resampler",
    "timestep_embedding",
    "vae_ldm_key",
    "UNET_512",
    "RESAMPLER_512",
]

#: U-Net configuration of the published 512 / 1024 models (configs/inference_512_v1.0.yaml ``unet_config``)
UNET_512 = dict(
    in_channels=8, out_channels=4, model_channels=320, attention_resolutions=[4, 2, 1], num_res_blocks=2,
    channel_mult=[1, 2, 4, 4], num_head_channels=64, transformer_depth=1, context_dim=1024, use_linear=True,
    temporal_conv=True, temporal_attention=True, temporal_length=16, addition_attention=True,
    image_cross_attention=True, image_cross_attention_scale_learnable=False, default_fs=24, fs_condition=True,
)
#: Resampler configuration of the published models (``image_proj_stage_config``)
RESAMPLER_512 = dict(dim=1024, depth=4, dim_head=64, heads=12, num_queries=16, embedding_dim=1280, output_dim=1024,
                     ff_mult=4, video_length=16)


def timestep_embedding(timesteps: Tensor, dim: int, max_period: int = 10000) -> Tensor:
    """Sinusoidal embedding (cos first, then sin) of (N,) timesteps, float32, as LVDM's ``timestep_embedding``."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    args = timesteps[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 (LVDM's ``normalization``: 32 groups)."""

    def forward(self, x: Tensor) -> Tensor:
        w = None if self.weight is None else self.weight.float()
        b = None if self.bias is None else self.bias.float()
        return F.group_norm(x.float(), self.num_groups, w, b, self.eps).type(x.dtype)


def _norm32(channels: int) -> GroupNorm32:
    return GroupNorm32(32, channels)


def _attention(q: Tensor, k: Tensor, v: Tensor, heads: int, fn=None) -> Tensor:
    """Multi-head softmax(q k^T / sqrt(d)) v on (B, N, heads * d) tensors with SDPA, or with ``fn(q, k, v)`` on
    the per-head (B, heads, N, d) tensors (an attention slot, :mod:`anti_i2v.surrogates.attention`)."""
    b = q.shape[0]
    q, k, v = (t.reshape(b, t.shape[1], heads, -1).transpose(1, 2) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v) if fn is None else fn(q, k, v)
    return out.transpose(1, 2).reshape(b, out.shape[2], -1)


class CrossAttention(nn.Module):
    """LVDM ``CrossAttention``: self-attention without context; with a context, text keys (the first
    ``text_context_len`` tokens) and, when ``image_cross_attention``, image keys (the rest) through ``to_k_ip`` /
    ``to_v_ip`` whose output is added with weight ``scale`` (times ``tanh(alpha) + 1`` when learnable).

    ``attention_fn``: the self-attention's slot (None: SDPA), filled to read the maps of the temporal transformers
    (:func:`anti_i2v.surrogates.attention.capture_attention`); cross-attention always runs SDPA."""

    def __init__(self, query_dim: int, context_dim: int | None = None, heads: int = 8, dim_head: int = 64,
                 image_cross_attention: bool = False, image_cross_attention_scale: float = 1.0,
                 image_cross_attention_scale_learnable: bool = False, text_context_len: int = 77) -> None:
        super().__init__()
        inner = heads * dim_head
        context_dim = query_dim if context_dim is None else context_dim
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim), nn.Dropout(0.0))
        self.image_cross_attention = image_cross_attention
        self.image_cross_attention_scale = image_cross_attention_scale
        self.image_cross_attention_scale_learnable = image_cross_attention_scale_learnable
        self.text_context_len = text_context_len
        self.attention_fn = None
        if image_cross_attention:
            self.to_k_ip = nn.Linear(context_dim, inner, bias=False)
            self.to_v_ip = nn.Linear(context_dim, inner, bias=False)
            if image_cross_attention_scale_learnable:
                self.register_parameter("alpha", nn.Parameter(torch.tensor(0.0)))

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        q = self.to_q(x)
        out_ip = None
        if context is None:
            out = _attention(q, self.to_k(x), self.to_v(x), self.heads, self.attention_fn)
        else:
            text = context[:, : self.text_context_len]
            out = _attention(q, self.to_k(text), self.to_v(text), self.heads)
            if self.image_cross_attention:
                img = context[:, self.text_context_len:]
                out_ip = _attention(q, self.to_k_ip(img), self.to_v_ip(img), self.heads)
        if out_ip is not None:
            w = self.image_cross_attention_scale
            if self.image_cross_attention_scale_learnable:
                out = out + w * out_ip * (torch.tanh(self.alpha) + 1)
            else:
                out = out + w * out_ip
        return self.to_out(out)


class GEGLU(nn.Module):
    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: Tensor) -> Tensor:
        x, gate = self.proj(x).chunk(2, dim=-1)
        return x * F.gelu(gate)


class FeedForward(nn.Module):
    """Gated-GELU feed-forward (``ff.net.0.proj``, ``ff.net.2``)."""

    def __init__(self, dim: int, mult: int = 4) -> None:
        super().__init__()
        inner = int(dim * mult)
        self.net = nn.Sequential(GEGLU(dim, inner), nn.Dropout(0.0), nn.Linear(inner, dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    """Self-attention, cross-attention (self-attention again when no context), gated feed-forward; pre-norm."""

    def __init__(self, dim: int, heads: int, dim_head: int, context_dim: int | None = None,
                 image_cross_attention: bool = False, image_cross_attention_scale_learnable: bool = False) -> None:
        super().__init__()
        self.attn1 = CrossAttention(dim, None, heads, dim_head)
        self.ff = FeedForward(dim)
        self.attn2 = CrossAttention(dim, context_dim, heads, dim_head, image_cross_attention=image_cross_attention,
                                    image_cross_attention_scale_learnable=image_cross_attention_scale_learnable)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x


class SpatialTransformer(nn.Module):
    """Per-frame transformer over the h*w tokens; input (B*T, C, h, w), residual."""

    def __init__(self, channels: int, heads: int, dim_head: int, depth: int, context_dim: int, use_linear: bool,
                 image_cross_attention: bool, image_cross_attention_scale_learnable: bool) -> None:
        super().__init__()
        inner = heads * dim_head
        self.norm = nn.GroupNorm(32, channels, eps=1e-6)
        self.use_linear = use_linear
        self.proj_in = nn.Linear(channels, inner) if use_linear else nn.Conv2d(channels, inner, 1)
        self.transformer_blocks = nn.ModuleList([
            BasicTransformerBlock(inner, heads, dim_head, context_dim, image_cross_attention,
                                  image_cross_attention_scale_learnable) for _ in range(depth)])
        self.proj_out = nn.Linear(inner, channels) if use_linear else nn.Conv2d(inner, channels, 1)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        _, _, h, w = x.shape
        x_in = x
        x = self.norm(x)
        if not self.use_linear:
            x = self.proj_in(x)
        x = rearrange(x, "b c h w -> b (h w) c")
        if self.use_linear:
            x = self.proj_in(x)
        for block in self.transformer_blocks:
            x = block(x, context)
        if self.use_linear:
            x = self.proj_out(x)
        x = rearrange(x, "b (h w) c -> b c h w", h=h, w=w)
        if not self.use_linear:
            x = self.proj_out(x)
        return x + x_in


class TemporalTransformer(nn.Module):
    """Self-attention over the frames of each pixel; input (B, C, T, h, w), residual (``only_self_att``)."""

    def __init__(self, channels: int, heads: int, dim_head: int, depth: int, use_linear: bool) -> None:
        super().__init__()
        inner = heads * dim_head
        self.norm = nn.GroupNorm(32, channels, eps=1e-6)
        self.use_linear = use_linear
        self.proj_in = nn.Linear(channels, inner) if use_linear else nn.Conv1d(channels, inner, 1)
        self.transformer_blocks = nn.ModuleList([BasicTransformerBlock(inner, heads, dim_head) for _ in range(depth)])
        self.proj_out = nn.Linear(inner, channels) if use_linear else nn.Conv1d(inner, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, _, _, h, w = x.shape
        x_in = x
        x = rearrange(self.norm(x), "b c t h w -> (b h w) c t")
        if not self.use_linear:
            x = self.proj_in(x)
        x = rearrange(x, "n c t -> n t c")
        if self.use_linear:
            x = self.proj_in(x)
        for block in self.transformer_blocks:
            x = block(x)
        if self.use_linear:
            x = rearrange(self.proj_out(x), "(b h w) t c -> b c t h w", b=b, h=h, w=w)
        else:
            x = self.proj_out(rearrange(x, "n t c -> n c t"))
            x = rearrange(x, "(b h w) c t -> b c t h w", b=b, h=h, w=w)
        return x + x_in


class TemporalConvBlock(nn.Module):
    """Four (GroupNorm, SiLU, 3x1x1 Conv3d) stages over (B, C, T, h, w), residual."""

    def __init__(self, channels: int) -> None:
        super().__init__()

        def stage(dropout: bool) -> nn.Sequential:
            layers: list[nn.Module] = [nn.GroupNorm(32, channels), nn.SiLU()]
            if dropout:
                layers.append(nn.Dropout(0.0))
            layers.append(nn.Conv3d(channels, channels, (3, 1, 1), padding=(1, 0, 0)))
            return nn.Sequential(*layers)

        self.conv1 = stage(False)
        self.conv2 = stage(True)
        self.conv3 = stage(True)
        self.conv4 = stage(True)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv4(self.conv3(self.conv2(self.conv1(x))))


class ResBlock(nn.Module):
    """2-D residual block with an additive timestep embedding, then (optionally) the temporal convolution."""

    def __init__(self, channels: int, emb_channels: int, out_channels: int | None = None,
                 use_temporal_conv: bool = False) -> None:
        super().__init__()
        out_channels = out_channels or channels
        self.in_layers = nn.Sequential(_norm32(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels))
        self.out_layers = nn.Sequential(_norm32(out_channels), nn.SiLU(), nn.Dropout(0.0),
                                        nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip_connection = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)
        self.use_temporal_conv = use_temporal_conv
        if use_temporal_conv:
            self.temopral_conv = TemporalConvBlock(out_channels)  # sic: the checkpoint's key

    def forward(self, x: Tensor, emb: Tensor, batch: int) -> Tensor:
        h = self.in_layers(x)
        h = h + self.emb_layers(emb).type(h.dtype)[..., None, None]
        h = self.skip_connection(x) + self.out_layers(h)
        if self.use_temporal_conv:
            h = rearrange(h, "(b t) c h w -> b c t h w", b=batch)
            h = rearrange(self.temopral_conv(h), "b c t h w -> (b t) c h w")
        return h


class Downsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class TimestepEmbedSequential(nn.Sequential):
    """Runs its layers on (B*T, C, h, w) features, giving each the inputs it takes (LVDM's dispatch)."""

    def forward(self, x: Tensor, emb: Tensor, context: Tensor | None = None, batch: int = 1) -> Tensor:  # noqa: D102
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb, batch)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            elif isinstance(layer, TemporalTransformer):
                x = rearrange(x, "(b f) c h w -> b c f h w", b=batch)
                x = rearrange(layer(x), "b c f h w -> (b f) c h w")
            else:
                x = layer(x)
        return x


class LVDMUNet(nn.Module):
    """The LVDM 3-D U-Net of DynamiCrafter (module names as ``model.diffusion_model.*`` in the checkpoint).

    Args: the ``unet_config`` parameters of the official configs (see :data:`UNET_512`); ``num_heads`` is derived
    from ``num_head_channels`` as upstream does.

    ``forward(x, timesteps, context, fs)``: ``x`` (B, in_channels, T, h, w) - the noisy latent and the image latent
    concatenated on channels; ``context`` (B, 77 + L, D) - text tokens then image tokens; ``fs`` (B,) the fps /
    frame-stride condition (``default_fs`` when None). Returns (B, out_channels, T, h, w).
    """

    def __init__(self, *, in_channels: int, out_channels: int, model_channels: int,
                 attention_resolutions: Sequence[int], num_res_blocks: int, channel_mult: Sequence[int],
                 num_head_channels: int, transformer_depth: int = 1, context_dim: int = 1024, use_linear: bool = True,
                 temporal_conv: bool = True, temporal_attention: bool = True, temporal_length: int = 16,
                 addition_attention: bool = True, image_cross_attention: bool = True,
                 image_cross_attention_scale_learnable: bool = False, default_fs: int = 24, fs_condition: bool = True,
                 **unsupported) -> None:
        super().__init__()
        for key, value in unsupported.items():
            ok = {"dropout": None, "use_checkpoint": None, "temporal_selfatt_only": True,
                  "use_relative_position": False, "use_causal_attention": False, "conv_resample": True,
                  "resblock_updown": False, "use_scale_shift_norm": False, "dims": 2, "tempspatial_aware": False,
                  "use_fp16": None}
            if key not in ok or (ok[key] is not None and value != ok[key]):
                raise ValueError(f"DynamiCrafter U-Net: unsupported setting {key}={value!r}")
        self.config = dict(
            in_channels=in_channels, out_channels=out_channels, model_channels=model_channels,
            attention_resolutions=list(attention_resolutions), num_res_blocks=num_res_blocks,
            channel_mult=list(channel_mult), num_head_channels=num_head_channels, transformer_depth=transformer_depth,
            context_dim=context_dim, use_linear=use_linear, temporal_conv=temporal_conv,
            temporal_attention=temporal_attention, temporal_length=temporal_length,
            addition_attention=addition_attention, image_cross_attention=image_cross_attention,
            image_cross_attention_scale_learnable=image_cross_attention_scale_learnable, default_fs=default_fs,
            fs_condition=fs_condition,
        )
        self.in_channels, self.out_channels, self.model_channels = in_channels, out_channels, model_channels
        self.addition_attention, self.fs_condition, self.default_fs = addition_attention, fs_condition, default_fs
        emb_dim = model_channels * 4
        self.time_embed = nn.Sequential(nn.Linear(model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        if fs_condition:
            self.fps_embedding = nn.Sequential(nn.Linear(model_channels, emb_dim), nn.SiLU(),
                                               nn.Linear(emb_dim, emb_dim))
        first = TimestepEmbedSequential(nn.Conv2d(in_channels, model_channels, 3, padding=1))
        self.input_blocks = nn.ModuleList([first])
        if addition_attention:
            self.init_attn = TimestepEmbedSequential(
                TemporalTransformer(model_channels, 8, num_head_channels, transformer_depth, use_linear=False))

        def attn_layers(ch: int) -> list[nn.Module]:
            heads = ch // num_head_channels
            layers: list[nn.Module] = [SpatialTransformer(ch, heads, num_head_channels, transformer_depth, context_dim,
                                                          use_linear, image_cross_attention,
                                                          image_cross_attention_scale_learnable)]
            if temporal_attention:
                layers.append(TemporalTransformer(ch, heads, num_head_channels, transformer_depth, use_linear))
            return layers

        chans = [model_channels]
        ch, ds = model_channels, 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [ResBlock(ch, emb_dim, mult * model_channels, temporal_conv)]
                ch = mult * model_channels
                if ds in attention_resolutions:
                    layers += attn_layers(ch)
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                chans.append(ch)
            if level != len(channel_mult) - 1:
                self.input_blocks.append(TimestepEmbedSequential(Downsample(ch)))
                chans.append(ch)
                ds *= 2
        mid = [ResBlock(ch, emb_dim, ch, temporal_conv), *attn_layers(ch), ResBlock(ch, emb_dim, ch, temporal_conv)]
        self.middle_block = TimestepEmbedSequential(*mid)
        self.output_blocks = nn.ModuleList([])
        for level, mult in list(enumerate(channel_mult))[::-1]:
            for i in range(num_res_blocks + 1):
                skip = chans.pop()
                layers = [ResBlock(ch + skip, emb_dim, model_channels * mult, temporal_conv)]
                ch = model_channels * mult
                if ds in attention_resolutions:
                    layers += attn_layers(ch)
                if level and i == num_res_blocks:
                    layers.append(Upsample(ch))
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))
        self.out = nn.Sequential(_norm32(ch), nn.SiLU(), nn.Conv2d(model_channels, out_channels, 3, padding=1))
        self.gradient_checkpointing = False

    _supports_gradient_checkpointing = True

    def enable_gradient_checkpointing(self) -> None:
        """Recompute each block in backward (``torch.utils.checkpoint``, non-reentrant)."""
        self.gradient_checkpointing = True

    def _run(self, module: nn.Module, h: Tensor, emb: Tensor, context: Tensor, b: int) -> Tensor:
        if self.gradient_checkpointing and torch.is_grad_enabled():
            from torch.utils.checkpoint import checkpoint

            return checkpoint(module, h, emb, context, b, use_reentrant=False)
        return module(h, emb, context, b)

    def forward(self, x: Tensor, timesteps: Tensor, context: Tensor, fs: Tensor | None = None) -> Tensor:
        b, _, t, _, _ = x.shape
        dtype = self.input_blocks[0][0].weight.dtype
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels).to(dtype))
        # per-frame image tokens (77 + 16 T context tokens): frame k reads its own 16; otherwise every frame reads all
        if context.shape[1] == 77 + t * 16:
            text, img = context[:, :77], context[:, 77:]
            text = text.repeat_interleave(t, dim=0)
            img = rearrange(img, "b (t l) c -> (b t) l c", t=t)
            context = torch.cat([text, img], dim=1)
        else:
            context = context.repeat_interleave(t, dim=0)
        emb = emb.repeat_interleave(t, dim=0)
        if self.fs_condition:
            if fs is None:
                fs = torch.full((b,), self.default_fs, dtype=torch.long, device=x.device)
            fs_emb = self.fps_embedding(timestep_embedding(fs, self.model_channels).to(dtype))
            emb = emb + fs_emb.repeat_interleave(t, dim=0)
        h = rearrange(x, "b c t h w -> (b t) c h w").to(dtype)
        context = context.to(dtype)
        hs = []
        for i, module in enumerate(self.input_blocks):
            h = self._run(module, h, emb, context, b)
            if i == 0 and self.addition_attention:
                h = self._run(self.init_attn, h, emb, context, b)
            hs.append(h)
        h = self._run(self.middle_block, h, emb, context, b)
        for module in self.output_blocks:
            h = self._run(module, torch.cat([h, hs.pop()], dim=1), emb, context, b)
        y = self.out(h)
        return rearrange(y, "(b t) c h w -> b c t h w", b=b)


class PerceiverAttention(nn.Module):
    """Latents attend to [image features, latents] (keys/values from both)."""

    def __init__(self, dim: int, dim_head: int, heads: int) -> None:
        super().__init__()
        inner = dim_head * heads
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, x: Tensor, latents: Tensor) -> Tensor:
        x, latents = self.norm1(x), self.norm2(latents)
        q = self.to_q(latents)
        k, v = self.to_kv(torch.cat([x, latents], dim=-2)).chunk(2, dim=-1)
        return self.to_out(_attention(q, k, v, self.heads))


class Resampler(nn.Module):
    """Perceiver resampler: ``num_queries`` learned queries per frame (``video_length`` frames) over the image tokens.

    Input (B, N, embedding_dim) image tokens; output (B, num_queries * video_length, output_dim).
    """

    def __init__(self, dim: int = 1024, depth: int = 4, dim_head: int = 64, heads: int = 12, num_queries: int = 16,
                 embedding_dim: int = 1280, output_dim: int = 1024, ff_mult: int = 4,
                 video_length: int | None = 16) -> None:
        super().__init__()
        self.config = dict(dim=dim, depth=depth, dim_head=dim_head, heads=heads, num_queries=num_queries,
                           embedding_dim=embedding_dim, output_dim=output_dim, ff_mult=ff_mult,
                           video_length=video_length)
        n = num_queries * (video_length or 1)
        self.latents = nn.Parameter(torch.randn(1, n, dim) / dim**0.5)
        self.proj_in = nn.Linear(embedding_dim, dim)
        self.proj_out = nn.Linear(dim, output_dim)
        self.norm_out = nn.LayerNorm(output_dim)
        self.layers = nn.ModuleList([
            nn.ModuleList([
                PerceiverAttention(dim, dim_head, heads),
                nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim * ff_mult, bias=False), nn.GELU(),
                              nn.Linear(dim * ff_mult, dim, bias=False)),
            ]) for _ in range(depth)])

    def forward(self, x: Tensor) -> Tensor:
        latents = self.latents.repeat(x.shape[0], 1, 1)
        x = self.proj_in(x)
        for attn, ff in self.layers:
            latents = attn(x, latents) + latents
            latents = ff(latents) + latents
        return self.norm_out(self.proj_out(latents))


# --------------------------------------------------------------------------- VAE key names
_RESNET = {"conv_shortcut": "nin_shortcut"}
_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def vae_ldm_key(key: str, num_levels: int) -> str:
    """The LDM / ``first_stage_model`` name of a diffusers ``AutoencoderKL`` state-dict key.

    ``encoder.down_blocks.i.resnets.j`` <-> ``encoder.down.i.block.j`` (``conv_shortcut`` <-> ``nin_shortcut``),
    ``...downsamplers.0`` <-> ``...downsample``; ``decoder.up_blocks.i`` <-> ``decoder.up.(L-1-i)`` (LDM numbers
    the decoder levels from the bottom), ``upsamplers.0`` <-> ``upsample``; ``mid_block.resnets.0/1`` <->
    ``mid.block_1/2``; ``mid_block.attentions.0.{group_norm,to_q,to_k,to_v,to_out.0}`` <->
    ``mid.attn_1.{norm,q,k,v,proj_out}`` (LDM stores those as 1x1 convolutions: reshape, see
    :func:`vae_weight_to_ldm`); ``conv_norm_out`` <-> ``norm_out``.
    """
    m = re.match(r"^(encoder|decoder)\.(.*)$", key)
    if not m:
        return key  # quant_conv, post_quant_conv
    part, rest = m.groups()
    if rest.startswith("conv_norm_out."):
        return f"{part}.norm_out.{rest[len('conv_norm_out.'):]}"
    m = re.match(r"^(down|up)_blocks\.(\d+)\.(resnets|downsamplers|upsamplers)\.(\d+)\.(.*)$", rest)
    if m:
        kind, i, sub, j, tail = m.groups()
        level = int(i) if kind == "down" else num_levels - 1 - int(i)
        if sub == "resnets":
            first, _, leaf = tail.partition(".")
            return f"{part}.{kind}.{level}.block.{j}.{_RESNET.get(first, first)}.{leaf}"
        return f"{part}.{kind}.{level}.{'downsample' if kind == 'down' else 'upsample'}.{tail}"
    m = re.match(r"^mid_block\.resnets\.(\d+)\.(.*)$", rest)
    if m:
        j, tail = m.groups()
        first, _, leaf = tail.partition(".")
        return f"{part}.mid.block_{int(j) + 1}.{_RESNET.get(first, first)}.{leaf}"
    m = re.match(r"^mid_block\.attentions\.0\.(.*)\.(weight|bias)$", rest)
    if m:
        name, leaf = m.groups()
        return f"{part}.mid.attn_1.{_ATTN.get(name, name)}.{leaf}"
    return key


def vae_weight_to_ldm(key: str, value: Tensor) -> Tensor:
    """A diffusers VAE tensor in the LDM layout (mid-block attention projections as 1x1 conv weights)."""
    if ".mid_block.attentions." in key and key.endswith(".weight") and value.ndim == 2:
        return value[:, :, None, None]
    return value
