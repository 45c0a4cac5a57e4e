"""Reading attention maps with attention processors (I2VGuard's temporal attack).

A forward hook on an attention module only sees its output (one tensor): the attention probabilities are internal.
:func:`capture_attention` swaps the computation of each chosen module for one that computes the same output and
keeps the probabilities, for the duration of one call, and puts the original back in a ``finally`` (also when the
forward stops early or fails). Two kinds of module take part:

* **diffusers** ``Attention`` (SVD's ``TemporalBasicTransformerBlock.attn1``): its processor is swapped for
  :class:`AttentionMapProcessor`, which reproduces diffusers' classic ``AttnProcessor`` (queries, keys,
  ``Attention.get_attention_scores``, values, output projection). Only plain self-attention modules are supported
  (no spatial / group norm, no q/k norm, no rotary embedding); a module with any of those raises, so nothing is
  captured from a computation this processor does not reproduce;
* modules with an **attention slot**: an ``attention_fn`` attribute, ``None`` for the module's own fused attention
  (SDPA), otherwise a callable ``fn(q, k, v) -> out`` on per-head tensors ``(B, heads, N, d)`` taken *after* the
  module's q/k norms and rotary embedding. Our own model code has the slot (DynamiCrafter's LVDM
  ``CrossAttention``, Open-Sora's STDiT3 ``_SelfAttention``), and so do the private shadows of ComfyUI's
  ``CrossAttention`` the native surrogates run (``nodes/native/base.py``; the user's modules are never touched).
  :class:`MapCaptureFn` fills the slot.

Both compute the softmax in float32 and store the probabilities as ``(batch * heads, queries, keys)`` float32
tensors with their autograd graph.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch
from torch import Tensor, nn

__all__ = ["AttentionMapProcessor", "MapCaptureFn", "capture_attention", "check_plain_attention", "has_attention_slot"]


def check_plain_attention(name: str, attn: nn.Module) -> None:
    """Raise ValueError unless ``attn`` is a diffusers ``Attention`` the capture processor reproduces exactly."""
    needed = ("to_q", "to_k", "to_v", "to_out", "head_to_batch_dim", "batch_to_head_dim", "get_attention_scores")
    missing = [a for a in needed if not hasattr(attn, a)]
    if missing:
        raise ValueError(f"{name}: neither a diffusers Attention module (no {', '.join(missing)}) nor a module with "
                         "an attention slot (attention_fn)")
    extra = [a for a in ("spatial_norm", "group_norm", "norm_q", "norm_k") if getattr(attn, a, None) is not None]
    if extra or getattr(attn, "norm_cross", None):
        raise ValueError(f"{name}: attention with {', '.join(extra) or 'norm_cross'} is not supported by the "
                         "attention-map capture (plain self-attention only)")


class AttentionMapProcessor:
    """An attention processor that computes the classic attention and stores its probabilities.

    Args:
        name: key under which the map is stored.
        store: dict receiving ``name -> probabilities`` (batch * heads, queries, keys), float32, with graph.
    """

    def __init__(self, name: str, store: dict[str, Tensor]) -> None:
        self.name = name
        self.store = store

    def __call__(self, attn, hidden_states: Tensor, encoder_hidden_states: Tensor | None = None,
                 attention_mask: Tensor | None = None, temb: Tensor | None = None, *args, **kwargs) -> Tensor:
        residual = hidden_states
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            b, c, h, w = hidden_states.shape
            hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        batch, seq, _ = context.shape
        attention_mask = attn.prepare_attention_mask(attention_mask, seq, batch)
        query = attn.head_to_batch_dim(attn.to_q(hidden_states))
        key = attn.head_to_batch_dim(attn.to_k(context))
        value = attn.head_to_batch_dim(attn.to_v(context))
        probs = attn.get_attention_scores(query, key, attention_mask)
        self.store[self.name] = probs.float()
        out = attn.batch_to_head_dim(torch.bmm(probs, value))
        out = attn.to_out[1](attn.to_out[0](out))
        if input_ndim == 4:
            out = out.transpose(-1, -2).reshape(b, c, h, w)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


class MapCaptureFn:
    """Fills an attention slot: ``softmax(q k^T / sqrt(d)) v`` computed explicitly (float32 scores), probabilities
    stored under ``name`` as ``(B * heads, queries, keys)``.

    Args:
        name: key under which the map is stored.
        store: dict receiving ``name -> probabilities``, float32, with graph.
    """

    def __init__(self, name: str, store: dict[str, Tensor]) -> None:
        self.name = name
        self.store = store

    def __call__(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * (q.shape[-1] ** -0.5)
        probs = scores.softmax(dim=-1)
        self.store[self.name] = probs.flatten(0, 1)
        return torch.matmul(probs, v.float()).to(v.dtype)


def has_attention_slot(module: nn.Module) -> bool:
    """Whether ``module`` computes its attention through an ``attention_fn`` slot (see the module docstring)."""
    return "attention_fn" in vars(module)


@contextlib.contextmanager
def capture_attention(modules: Sequence[tuple[str, nn.Module]], store: dict[str, Tensor]) -> Iterator[None]:
    """Swap the attention of ``modules`` for a map-keeping one and restore the originals afterwards.

    Raises:
        ValueError: a module is neither a plain diffusers ``Attention`` nor a module with an attention slot.
    """
    saved: list = []
    try:
        for name, attn in modules:
            if has_attention_slot(attn):
                saved.append(("slot", attn, attn.attention_fn))
                attn.attention_fn = MapCaptureFn(name, store)
            else:
                check_plain_attention(name, attn)
                saved.append(("processor", attn, attn.processor))
                attn.set_processor(AttentionMapProcessor(name, store))
        yield
    finally:
        for kind, attn, prev in saved:
            if kind == "slot":
                attn.attention_fn = prev
            else:
                attn.set_processor(prev)
