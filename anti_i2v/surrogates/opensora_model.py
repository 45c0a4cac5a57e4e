"""Open-Sora 1.2 model definitions written for this pack: the STDiT3 denoiser and the video VAE.

Neither model is in diffusers or on PyPI. These modules reproduce the computation of hpcaitech/Open-Sora tag
v1.2.0 (``opensora/models/stdit/stdit3.py``, ``opensora/models/layers/blocks.py``, ``opensora/models/vae/vae.py``,
``opensora/models/vae/vae_temporal.py``; read, not copied) with **the same module tree and parameter names**, so
the official ``model.safetensors`` files of ``hpcai-tech/OpenSora-STDiT-v3`` and ``hpcai-tech/OpenSora-VAE-v1.2``
load by their own key names. Differences from upstream that do not change the maths:

* attention runs through ``torch.nn.functional.scaled_dot_product_attention`` (no xformers, no flash-attn, no
  apex); the cross-attention takes the valid caption tokens of each sample, which is what upstream's
  block-diagonal xformers mask computes;
* nothing is fetched from a hub: upstream builds the spatial VAE with ``AutoencoderKL.from_pretrained`` of
  ``PixArt-alpha/pixart_sigma_sdxlvae_T5_diffusers``; here it is a diffusers ``AutoencoderKL`` built from the
  SDXL-VAE config (:data:`SDXL_VAE_CONFIG`) and filled from ``spatial_vae.module.*`` of the VAE checkpoint;
* no sequence parallelism, no drop-path, no training-time caption dropout.

Kept on purpose, because the released weights were trained with them: the final layer's timestep-0 branch
normalises the already modulated tokens (``T2IFinalLayer`` in v1.2.0 does ``x = modulate(norm(x)); x_zero =
modulate(norm(x))``), and the 2-D positional embedding's swapped meshgrid (its first half encodes the column,
its second half the row).

STDiT3 checkpoint keys (``OpenSora-STDiT-v3/model.safetensors``): ``x_embedder.proj.*``, ``t_embedder.mlp.{0,2}.*``,
``fps_embedder.mlp.{0,2}.*``, ``t_block.1.*``, ``y_embedder.y_proj.fc{1,2}.*``, ``y_embedder.y_embedding`` (the
learned null caption, 300 x 4096), ``rope.freqs``, ``spatial_blocks.N.*`` and ``temporal_blocks.N.*``
(``scale_shift_table``, ``attn.qkv``, ``attn.q_norm.weight``, ``attn.k_norm.weight``, ``attn.proj``,
``cross_attn.q_linear``, ``cross_attn.kv_linear``, ``cross_attn.proj``, ``mlp.fc1``, ``mlp.fc2``),
``final_layer.linear.*``, ``final_layer.scale_shift_table``.

VAE checkpoint keys (``OpenSora-VAE-v1.2/model.safetensors``): ``spatial_vae.module.*`` (a diffusers
``AutoencoderKL`` state dict), ``temporal_vae.encoder.*``, ``temporal_vae.quant_conv.conv.*``,
``temporal_vae.post_quant_conv.conv.*``, ``temporal_vae.decoder.*``, and the ``scale`` / ``shift`` buffers.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

__all__ = [
    "STDiT3Config",
    "STDiT3",
    "STDiT3Block",
    "TemporalVAEConfig",
    "TemporalVAE",
    "OpenSoraVAE",
    "SDXL_VAE_CONFIG",
    "LATENT_SHIFT",
    "LATENT_SCALE",
    "SPATIAL_SCALING",
    "timestep_embedding",
]

#: the spatial VAE's latent factor (``VideoAutoencoderKL`` multiplies by 0.18215, not SDXL's 0.13025)
SPATIAL_SCALING = 0.18215
#: ``OpenSoraVAE_V1_2`` latent normalisation: ``z = (temporal latent - shift) / scale``
LATENT_SHIFT = (-0.10, 0.34, 0.27, 0.98)
LATENT_SCALE = (3.85, 2.32, 2.33, 3.06)
#: the SDXL VAE (``PixArt-alpha/pixart_sigma_sdxlvae_T5_diffusers/vae``) as a diffusers ``AutoencoderKL`` config
SDXL_VAE_CONFIG = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "act_fn": "silu",
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 1024,
    "scaling_factor": 0.13025,
}


# =============================================================================================== STDiT3
@dataclass
class STDiT3Config:
    """The fields of upstream's ``STDiT3Config`` that shape the network (defaults: STDiT3-XL/2, Open-Sora 1.2)."""

    in_channels: int = 4
    patch_size: tuple[int, int, int] = (1, 2, 2)
    hidden_size: int = 1152
    depth: int = 28
    num_heads: int = 16
    mlp_ratio: float = 4.0
    pred_sigma: bool = True
    caption_channels: int = 4096
    model_max_length: int = 300
    qk_norm: bool = True
    input_sq_size: int = 512

    @classmethod
    def from_dict(cls, data: dict) -> "STDiT3Config":
        """Read a ``config.json`` dict (unknown keys such as ``enable_flash_attn`` are ignored)."""
        kw = {f.name: data[f.name] for f in fields(cls) if f.name in data and data[f.name] is not None}
        if "patch_size" in kw:
            kw["patch_size"] = tuple(int(p) for p in kw["patch_size"])
        return cls(**kw)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["patch_size"] = list(self.patch_size)
        return {"architectures": ["STDiT3"], "model_type": "STDiT3", **d}

    @property
    def out_channels(self) -> int:
        return self.in_channels * 2 if self.pred_sigma else self.in_channels


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of (fractional) timesteps, ``[cos, sin]`` order (GLIDE / upstream TimestepEmbedder)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def _modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1 + scale) + shift


class _Mlp(nn.Module):
    """timm ``Mlp`` (fc1, tanh-GELU, fc2): the key names ``fc1`` / ``fc2``."""

    def __init__(self, in_features: int, hidden: int, out_features: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, out_features)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class _RMSNorm(nn.Module):
    """LlamaRMSNorm (computed in float32, weight applied in the input dtype)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        dtype = x.dtype
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(dtype)


class _Rotary(nn.Module):
    """Rotary position embedding over the sequence dimension (-2), interleaved pairs (rotary-embedding-torch).

    ``freqs`` is a parameter (``rope.freqs`` in the checkpoint), never trained.
    """

    def __init__(self, dim: int, theta: float = 10000.0) -> None:
        super().__init__()
        freqs = 1.0 / (theta ** (torch.arange(0, dim, 2)[: dim // 2].float() / dim))
        self.freqs = nn.Parameter(freqs, requires_grad=False)

    def rotate(self, x: Tensor) -> Tensor:
        """Rotate queries or keys ``x`` (..., N, head_dim) by position ``0..N-1``."""
        n = x.shape[-2]
        pos = torch.arange(n, device=x.device, dtype=x.dtype)
        ang = torch.einsum("n,f->nf", pos.to(self.freqs.dtype), self.freqs)
        ang = ang.repeat_interleave(2, dim=-1)  # (N, head_dim): each frequency for one (even, odd) pair
        pairs = x.unflatten(-1, (-1, 2))
        rotated = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
        return x * ang.cos().to(x.dtype) + rotated * ang.sin().to(x.dtype)


class _SelfAttention(nn.Module):
    """Multi-head self-attention with RMS qk-norm and optional rotary embedding (upstream ``Attention``).

    ``attention_fn``: the attention slot (None: SDPA) on the normed, rotated per-head q, k and v, filled to read the
    temporal blocks' maps (:func:`anti_i2v.surrogates.attention.capture_attention`)."""

    def __init__(self, dim: int, num_heads: int, qk_norm: bool, rope=None) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.q_norm = _RMSNorm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = _RMSNorm(self.head_dim) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)
        self._rope = rope  # a bound method of the model's rotary module (not a submodule: no keys here)
        self.attention_fn = None

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        if self._rope is not None:
            q, k = self._rope(q), self._rope(k)
        out = F.scaled_dot_product_attention(q, k, v) if self.attention_fn is None else self.attention_fn(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class _CrossAttention(nn.Module):
    """Cross-attention of video tokens to caption tokens (upstream ``MultiHeadCrossAttention``)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.q_linear = nn.Linear(dim, dim)
        self.kv_linear = nn.Linear(dim, dim * 2)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        b, n, c = x.shape
        q = self.q_linear(x).view(b, n, self.num_heads, self.head_dim).transpose(1, 2)
        k, v = self.kv_linear(y).view(b, y.shape[1], 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


def _select(x_mask: Tensor, x: Tensor, x_zero: Tensor, frames: int) -> Tensor:
    """Per latent frame: ``x`` where ``x_mask`` is True, ``x_zero`` (timestep-0 modulation) where False.

    Upstream ``t_mask_select``; tokens are frame-major (B, T * S, C).
    """
    b, n, c = x.shape
    keep = x_mask[:, :, None, None]
    out = torch.where(keep, x.view(b, frames, n // frames, c), x_zero.view(b, frames, n // frames, c))
    return out.reshape(b, n, c)


class STDiT3Block(nn.Module):
    """One spatial (attention within a frame) or temporal (attention across frames, rotary) STDiT3 block.

    AdaLN-single modulation from ``t_mlp`` (B, 6C) plus the block's ``scale_shift_table``; tokens of frames where
    ``x_mask`` is False use ``t0_mlp`` (the embedding of timestep 0) instead.
    """

    def __init__(self, hidden: int, num_heads: int, mlp_ratio: float, qk_norm: bool, temporal: bool, rope=None):
        super().__init__()
        self.temporal = temporal
        self.norm1 = nn.LayerNorm(hidden, eps=1e-6, elementwise_affine=False)
        self.attn = _SelfAttention(hidden, num_heads, qk_norm, rope=rope if temporal else None)
        self.cross_attn = _CrossAttention(hidden, num_heads)
        self.norm2 = nn.LayerNorm(hidden, eps=1e-6, elementwise_affine=False)
        self.mlp = _Mlp(hidden, int(hidden * mlp_ratio), hidden)
        self.scale_shift_table = nn.Parameter(torch.randn(6, hidden) / hidden**0.5)

    def forward(self, x: Tensor, y: Tensor, t_mlp: Tensor, x_mask: Tensor | None, t0_mlp: Tensor | None,
                frames: int) -> Tensor:
        b, n, c = x.shape
        s = n // frames
        mods = (self.scale_shift_table[None] + t_mlp.reshape(b, 6, -1)).chunk(6, dim=1)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mods
        if x_mask is not None:
            zero = (self.scale_shift_table[None] + t0_mlp.reshape(b, 6, -1)).chunk(6, dim=1)
            shift_msa0, scale_msa0, gate_msa0, shift_mlp0, scale_mlp0, gate_mlp0 = zero

        h = self.norm1(x)
        x_m = _modulate(h, shift_msa, scale_msa)
        if x_mask is not None:
            x_m = _select(x_mask, x_m, _modulate(h, shift_msa0, scale_msa0), frames)
        if self.temporal:  # (B, T, S, C) -> (B S, T, C)
            x_m = x_m.view(b, frames, s, c).transpose(1, 2).reshape(b * s, frames, c)
            x_m = self.attn(x_m).view(b, s, frames, c).transpose(1, 2).reshape(b, n, c)
        else:  # (B T, S, C)
            x_m = self.attn(x_m.reshape(b * frames, s, c)).reshape(b, n, c)
        x_s = gate_msa * x_m
        if x_mask is not None:
            x_s = _select(x_mask, x_s, gate_msa0 * x_m, frames)
        x = x + x_s
        x = x + self.cross_attn(x, y)
        h = self.norm2(x)
        x_m = _modulate(h, shift_mlp, scale_mlp)
        if x_mask is not None:
            x_m = _select(x_mask, x_m, _modulate(h, shift_mlp0, scale_mlp0), frames)
        x_m = self.mlp(x_m)
        x_s = gate_mlp * x_m
        if x_mask is not None:
            x_s = _select(x_mask, x_s, gate_mlp0 * x_m, frames)
        return x + x_s


class _TimestepEmbedder(nn.Module):
    """Sinusoidal features (256) -> Linear -> SiLU -> Linear (keys ``mlp.0``, ``mlp.2``)."""

    def __init__(self, hidden: int, freq_dim: int = 256) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, t: Tensor) -> Tensor:
        w = self.mlp[0].weight
        return self.mlp(timestep_embedding(t, self.freq_dim).to(w.dtype))


class _PatchEmbed3D(nn.Module):
    def __init__(self, patch: tuple[int, int, int], in_ch: int, hidden: int) -> None:
        super().__init__()
        self.patch = patch
        self.proj = nn.Conv3d(in_ch, hidden, kernel_size=patch, stride=patch)

    def forward(self, x: Tensor) -> Tensor:
        pt, ph, pw = self.patch
        _, _, d, h, w = x.shape
        x = F.pad(x, (0, (-w) % pw, 0, (-h) % ph, 0, (-d) % pt))
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, T*H*W, C), frame-major


class _CaptionEmbedder(nn.Module):
    """Caption projection (T5 width -> hidden) and the learned null caption ``y_embedding`` (a buffer)."""

    def __init__(self, in_ch: int, hidden: int, tokens: int) -> None:
        super().__init__()
        self.y_proj = _Mlp(in_ch, hidden, hidden)
        self.register_buffer("y_embedding", torch.randn(tokens, in_ch) / in_ch**0.5)

    def forward(self, y: Tensor) -> Tensor:
        return self.y_proj(y)


class _FinalLayer(nn.Module):
    """PixArt's T2I final layer with the timestep-0 branch of v1.2.0 (see the module docstring)."""

    def __init__(self, hidden: int, num_patch: int, out_ch: int) -> None:
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden, eps=1e-6, elementwise_affine=False)
        self.linear = nn.Linear(hidden, num_patch * out_ch)
        self.scale_shift_table = nn.Parameter(torch.randn(2, hidden) / hidden**0.5)

    def forward(self, x: Tensor, t: Tensor, x_mask: Tensor | None, t0: Tensor | None, frames: int) -> Tensor:
        shift, scale = (self.scale_shift_table[None] + t[:, None]).chunk(2, dim=1)
        x = _modulate(self.norm_final(x), shift, scale)
        if x_mask is not None:
            shift0, scale0 = (self.scale_shift_table[None] + t0[:, None]).chunk(2, dim=1)
            x_zero = _modulate(self.norm_final(x), shift0, scale0)  # upstream normalises the modulated x here
            x = _select(x_mask, x, x_zero, frames)
        return self.linear(x)


def _pos_embed_2d(dim: int, h: int, w: int, scale: float, base_size: int, device, dtype) -> Tensor:
    """Upstream ``PositionEmbedding2D``: (1, h*w, dim), first half from the column, second half from the row."""
    half = dim // 2
    inv_freq = 1.0 / (10000 ** (torch.arange(0, half, 2, device=device).float() / half))
    grid_r = torch.arange(h, device=device) / scale * (base_size / h)
    grid_c = torch.arange(w, device=device) / scale * (base_size / w)
    col = grid_c[None, :].expand(h, w).reshape(-1)  # upstream's "grid_h" after its (w, h) meshgrid
    row = grid_r[:, None].expand(h, w).reshape(-1)

    def sincos(t: Tensor) -> Tensor:
        out = t[:, None].float() * inv_freq[None]
        return torch.cat([out.sin(), out.cos()], dim=-1)

    return torch.cat([sincos(col), sincos(row)], dim=-1).unsqueeze(0).to(dtype)


class STDiT3(nn.Module):
    """Open-Sora 1.2's spatial-temporal DiT (upstream ``STDiT3``), parameter names as in its checkpoint.

    ``forward`` takes the noisy latent ``x`` (B, 4, T, H, W), the rectified-flow ``timestep`` (B,) in [0, 1000],
    caption embeddings ``y`` (B, L, caption_channels) (the valid tokens only; the learned null caption is
    ``y_embedder.y_embedding``), the per-frame ``x_mask`` (B, T) (False: the frame is a clean conditioning frame,
    modulated with timestep 0), ``fps`` (B,) and the pixel ``height`` / ``width`` of the video (positional scale).
    Returns (B, out_channels, T, H, W) float32; the first ``in_channels`` channels are the velocity.

    Blocks run interleaved: ``spatial_blocks[i]`` then ``temporal_blocks[i]`` for i in 0..depth-1.
    """

    _supports_gradient_checkpointing = True

    def __init__(self, config: STDiT3Config | None = None) -> None:
        super().__init__()
        cfg = config or STDiT3Config()
        self.config = cfg
        c = cfg.hidden_size
        self.gradient_checkpointing = False
        self.rope = _Rotary(c // cfg.num_heads)
        self.x_embedder = _PatchEmbed3D(tuple(cfg.patch_size), cfg.in_channels, c)
        self.t_embedder = _TimestepEmbedder(c)
        self.fps_embedder = _TimestepEmbedder(c)
        self.t_block = nn.Sequential(nn.SiLU(), nn.Linear(c, 6 * c))
        self.y_embedder = _CaptionEmbedder(cfg.caption_channels, c, cfg.model_max_length)
        self.spatial_blocks = nn.ModuleList(
            [STDiT3Block(c, cfg.num_heads, cfg.mlp_ratio, cfg.qk_norm, temporal=False) for _ in range(cfg.depth)])
        self.temporal_blocks = nn.ModuleList(
            [STDiT3Block(c, cfg.num_heads, cfg.mlp_ratio, cfg.qk_norm, temporal=True, rope=self.rope.rotate)
             for _ in range(cfg.depth)])
        self.final_layer = _FinalLayer(c, math.prod(cfg.patch_size), cfg.out_channels)

    @property
    def dtype(self) -> torch.dtype:
        return self.x_embedder.proj.weight.dtype

    def enable_gradient_checkpointing(self) -> None:
        self.gradient_checkpointing = True

    def null_caption(self, batch: int = 1) -> Tensor:
        """The learned null caption (B, model_max_length, caption_channels), what classifier-free guidance uses."""
        return self.y_embedder.y_embedding[None].expand(batch, -1, -1)

    def grid(self, x: Tensor) -> tuple[int, int, int]:
        """(T, H, W) token grid of a latent ``x`` (B, C, T, H, W), padded up to the patch size."""
        pt, ph, pw = self.config.patch_size
        _, _, t, h, w = x.shape
        return -(-t // pt), -(-h // ph), -(-w // pw)

    def _run(self, block: nn.Module, *args) -> Tensor:
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint(block, *args, use_reentrant=False)
        return block(*args)

    def forward(self, x: Tensor, timestep: Tensor, y: Tensor, x_mask: Tensor | None = None, *,
                fps: Tensor, height: Tensor, width: Tensor) -> Tensor:
        dtype = self.dtype
        b = x.shape[0]
        x = x.to(dtype)
        timestep = timestep.to(dtype)
        _, _, tx, hx, wx = x.shape
        frames, gh, gw = self.grid(x)
        s = gh * gw
        resolution_sq = (float(height[0]) * float(width[0])) ** 0.5
        pos = _pos_embed_2d(self.config.hidden_size, gh, gw, resolution_sq / self.config.input_sq_size,
                            round(s**0.5), x.device, dtype)
        fps_emb = self.fps_embedder(fps.to(dtype).reshape(-1)).expand(b, -1)
        t = self.t_embedder(timestep) + fps_emb
        t_mlp = self.t_block(t)
        t0 = t0_mlp = None
        if x_mask is not None:  # the embedding of timestep 0 for the clean (conditioning) frames
            t0 = self.t_embedder(torch.zeros_like(timestep)) + fps_emb
            t0_mlp = self.t_block(t0)
        y = self.y_embedder(y.to(dtype))
        h = self.x_embedder(x)
        h = (h.view(b, frames, s, -1) + pos).reshape(b, frames * s, -1)
        for spatial, temporal in zip(self.spatial_blocks, self.temporal_blocks):
            h = self._run(spatial, h, y, t_mlp, x_mask, t0_mlp, frames)
            h = self._run(temporal, h, y, t_mlp, x_mask, t0_mlp, frames)
        h = self.final_layer(h, t, x_mask, t0, frames)
        return self._unpatchify(h, frames, gh, gw, tx, hx, wx).float()

    def _unpatchify(self, h: Tensor, nt: int, nh: int, nw: int, rt: int, rh: int, rw: int) -> Tensor:
        pt, ph, pw = self.config.patch_size
        b = h.shape[0]
        out = self.config.out_channels
        h = h.view(b, nt, nh, nw, pt, ph, pw, out).permute(0, 7, 1, 4, 2, 5, 3, 6)
        h = h.reshape(b, out, nt * pt, nh * ph, nw * pw)
        return h[:, :, :rt, :rh, :rw]


# =============================================================================================== VAE
@dataclass
class TemporalVAEConfig:
    """``VAE_Temporal_SD`` (defaults) or a smaller test configuration of the same network."""

    in_out_channels: int = 4
    latent_embed_dim: int = 4
    embed_dim: int = 4
    filters: int = 128
    num_res_blocks: int = 4
    channel_multipliers: tuple[int, ...] = (1, 2, 2, 4)
    temporal_downsample: tuple[bool, ...] = (False, True, True)
    num_groups: int = 32

    @classmethod
    def from_dict(cls, data: dict) -> "TemporalVAEConfig":
        kw = {f.name: data[f.name] for f in fields(cls) if f.name in data and data[f.name] is not None}
        for k in ("channel_multipliers", "temporal_downsample"):
            if k in kw:
                kw[k] = tuple(kw[k])
        return cls(**kw)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["channel_multipliers"] = list(self.channel_multipliers)
        d["temporal_downsample"] = list(self.temporal_downsample)
        return d


class _CausalConv3d(nn.Module):
    """3-D convolution padded in time at the front only (key: ``conv``)."""

    def __init__(self, cin: int, cout: int, kernel, stride: tuple[int, int, int] = (1, 1, 1), bias: bool = True):
        super().__init__()
        k = (kernel,) * 3 if isinstance(kernel, int) else tuple(kernel)
        self.time_pad = (k[0] - 1) + (1 - stride[0])
        self.spatial_pad = (k[2] // 2, k[2] // 2, k[1] // 2, k[1] // 2)
        self.conv = nn.Conv3d(cin, cout, k, stride=stride, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (*self.spatial_pad, self.time_pad, 0)))


class _ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin)
        self.conv1 = _CausalConv3d(cin, cout, 3, bias=False)
        self.norm2 = nn.GroupNorm(groups, cout)
        self.conv2 = _CausalConv3d(cout, cout, 3, bias=False)
        self.conv3 = _CausalConv3d(cin, cout, 1, bias=False) if cin != cout else None

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return h + (self.conv3(x) if self.conv3 is not None else x)


class _TemporalEncoder(nn.Module):
    def __init__(self, cfg: TemporalVAEConfig) -> None:
        super().__init__()
        g, n = cfg.num_groups, cfg.num_res_blocks
        self.conv_in = _CausalConv3d(cfg.in_out_channels, cfg.filters, 3, bias=False)
        self.block_res_blocks = nn.ModuleList()
        self.conv_blocks = nn.ModuleList()
        prev = cfg.filters
        for i, mult in enumerate(cfg.channel_multipliers):
            f = cfg.filters * mult
            items = nn.ModuleList()
            for _ in range(n):
                items.append(_ResBlock(prev, f, g))
                prev = f
            self.block_res_blocks.append(items)
            if i < len(cfg.channel_multipliers) - 1:
                if cfg.temporal_downsample[i]:
                    self.conv_blocks.append(_CausalConv3d(prev, f, 3, stride=(2, 1, 1)))
                else:
                    self.conv_blocks.append(nn.Identity())
                prev = f
        self.res_blocks = nn.ModuleList([_ResBlock(prev, f, g) for _ in range(n)])
        self.norm1 = nn.GroupNorm(g, prev)
        self.conv2 = _CausalConv3d(prev, 2 * cfg.latent_embed_dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv_in(x)
        for i, items in enumerate(self.block_res_blocks):
            for blk in items:
                x = blk(x)
            if i < len(self.conv_blocks):
                x = self.conv_blocks[i](x)
        for blk in self.res_blocks:
            x = blk(x)
        return self.conv2(F.silu(self.norm1(x)))


class _TemporalDecoder(nn.Module):
    def __init__(self, cfg: TemporalVAEConfig) -> None:
        super().__init__()
        g, n = cfg.num_groups, cfg.num_res_blocks
        self.temporal_downsample = tuple(cfg.temporal_downsample)
        mults = cfg.channel_multipliers
        f = cfg.filters * mults[-1]
        self.conv1 = _CausalConv3d(cfg.latent_embed_dim, f, 3)
        self.res_blocks = nn.ModuleList([_ResBlock(f, f, g) for _ in range(n)])
        blocks: list[nn.Module] = []
        convs: list[nn.Module] = []
        prev = f
        for i in reversed(range(len(mults))):
            f = cfg.filters * mults[i]
            items = nn.ModuleList()
            for _ in range(n):
                items.append(_ResBlock(prev, f, g))
                prev = f
            blocks.insert(0, items)
            if i > 0:
                ts = 2 if cfg.temporal_downsample[i - 1] else 1
                convs.insert(0, _CausalConv3d(prev, prev * ts, 3) if cfg.temporal_downsample[i - 1] else nn.Identity())
        self.block_res_blocks = nn.ModuleList(blocks)
        self.conv_blocks = nn.ModuleList(convs)
        self.norm1 = nn.GroupNorm(g, prev)
        self.conv_out = _CausalConv3d(f, cfg.in_out_channels, 3)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1(x)
        for blk in self.res_blocks:
            x = blk(x)
        for i in reversed(range(len(self.block_res_blocks))):
            for blk in self.block_res_blocks[i]:
                x = blk(x)
            if i > 0:
                ts = 2 if self.temporal_downsample[i - 1] else 1
                x = self.conv_blocks[i - 1](x)
                b, c, t, h, w = x.shape
                x = x.view(b, c // ts, ts, t, h, w).permute(0, 1, 3, 2, 4, 5).reshape(b, c // ts, t * ts, h, w)
        return self.conv_out(F.silu(self.norm1(x)))


class TemporalVAE(nn.Module):
    """Upstream ``VAE_Temporal``: a causal 3-D KL VAE over the spatial VAE's latents (time factor 4)."""

    def __init__(self, cfg: TemporalVAEConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or TemporalVAEConfig()
        self.time_factor = 2 ** sum(bool(v) for v in self.cfg.temporal_downsample)
        self.encoder = _TemporalEncoder(self.cfg)
        self.quant_conv = _CausalConv3d(2 * self.cfg.latent_embed_dim, 2 * self.cfg.embed_dim, 1)
        self.post_quant_conv = _CausalConv3d(self.cfg.embed_dim, self.cfg.latent_embed_dim, 1)
        self.decoder = _TemporalDecoder(self.cfg)

    def _pad(self, frames: int) -> int:
        return (-frames) % self.time_factor

    def encode_moments(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Posterior (mean, logvar) of spatial latents ``x`` (B, 4, T, h, w); zero frames are put in front."""
        x = F.pad(x, (0, 0, 0, 0, self._pad(x.shape[2]), 0))
        moments = self.quant_conv(self.encoder(x))
        mean, logvar = moments.chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def decode(self, z: Tensor, num_frames: int) -> Tensor:
        x = self.decoder(self.post_quant_conv(z))
        return x[:, :, self._pad(num_frames):]

    def latent_frames(self, frames: int) -> int:
        return (frames + self._pad(frames)) // self.time_factor


class _SpatialVAE(nn.Module):
    """Holds the diffusers ``AutoencoderKL`` as ``module`` (keys ``spatial_vae.module.*``, as upstream)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module


class OpenSoraVAE(nn.Module):
    """Upstream ``VideoAutoencoderPipeline`` as ``OpenSoraVAE_V1_2`` builds it.

    Encoding: every frame through the spatial KL VAE (``x 0.18215``), then the temporal VAE in chunks of
    ``micro_frame_size`` (17) frames (4x in time, zero frames padded at the front of each chunk), then
    ``(z - shift) / scale``. Upstream draws a sample from both posteriors; :meth:`encode` returns the posterior
    means (a deterministic, differentiable latent; ``sample=True`` with a generator draws as upstream does).
    Decoding reverses it chunk by chunk (5 latent frames per 17 video frames).
    """

    def __init__(self, spatial: nn.Module, temporal: TemporalVAE, *, micro_frame_size: int = 17,
                 shift: Sequence[float] = LATENT_SHIFT, scale: Sequence[float] = LATENT_SCALE) -> None:
        super().__init__()
        self.spatial_vae = _SpatialVAE(spatial)
        self.temporal_vae = temporal
        self.micro_frame_size = int(micro_frame_size)
        self.register_buffer("scale", torch.tensor(list(scale), dtype=torch.float32)[None, :, None, None, None])
        self.register_buffer("shift", torch.tensor(list(shift), dtype=torch.float32)[None, :, None, None, None])

    @property
    def spatial(self) -> nn.Module:
        return self.spatial_vae.module

    @property
    def spatial_factor(self) -> int:
        return 2 ** (len(self.spatial.config.block_out_channels) - 1)

    @property
    def micro_latent_frames(self) -> int:
        return self.temporal_vae.latent_frames(self.micro_frame_size)

    def latent_frames(self, frames: int) -> int:
        """Latent frames of a ``frames``-frame video (upstream ``get_latent_size``)."""
        m = self.micro_frame_size
        full, rest = divmod(int(frames), m)
        return full * self.temporal_vae.latent_frames(m) + (self.temporal_vae.latent_frames(rest) if rest else 0)

    def encode_spatial(self, video: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """Spatial latents (B, 4, T, h, w) x 0.18215 of ``video`` (B, 3, T, H, W) in [-1, 1] (posterior mean,
        or a sample with ``generator``)."""
        b, _, t = video.shape[:3]
        frames = video.transpose(1, 2).reshape(b * t, *video.shape[1:2], *video.shape[3:])
        dist = self.spatial.encode(frames.to(self.spatial.dtype)).latent_dist
        lat = dist.mode() if generator is None else dist.sample(generator)
        lat = lat * SPATIAL_SCALING
        return lat.view(b, t, *lat.shape[1:]).transpose(1, 2)

    def encode_temporal(self, spatial: Tensor) -> Tensor:
        """Normalised latent (B, 4, T', h, w) of spatial latents, chunk by chunk (posterior mean), float32."""
        out = []
        tdtype = self.temporal_vae.quant_conv.conv.weight.dtype
        for i in range(0, spatial.shape[2], self.micro_frame_size):
            mean, _ = self.temporal_vae.encode_moments(spatial[:, :, i:i + self.micro_frame_size].to(tdtype))
            out.append(mean)
        z = torch.cat(out, dim=2).float()
        return (z - self.shift.float()) / self.scale.float()

    def encode(self, video: Tensor) -> Tensor:
        return self.encode_temporal(self.encode_spatial(video))

    def decode(self, z: Tensor, num_frames: int) -> Tensor:
        """Video (B, 3, num_frames, H, W) in about [-1, 1] from a normalised latent."""
        tdtype = self.temporal_vae.quant_conv.conv.weight.dtype
        z = (z.float() * self.scale.float() + self.shift.float()).to(tdtype)
        parts, left = [], int(num_frames)
        step = self.micro_latent_frames
        for i in range(0, z.shape[2], step):
            parts.append(self.temporal_vae.decode(z[:, :, i:i + step], num_frames=min(self.micro_frame_size, left)))
            left -= self.micro_frame_size
        x = torch.cat(parts, dim=2)
        b, c, t = x.shape[:3]
        frames = x.transpose(1, 2).reshape(b * t, c, *x.shape[3:])
        img = self.spatial.decode((frames / SPATIAL_SCALING).to(self.spatial.dtype)).sample
        return img.view(b, t, *img.shape[1:]).transpose(1, 2).float()
