"""Reading attention maps with attention processors (I2VGuard's temporal attack).

A forward hook on a diffusers ``Attention`` module only sees its output (one tensor): the attention probabilities
are internal. :func:`capture_attention` swaps each chosen module's processor for :class:`AttentionMapProcessor`
for the duration of one call, which computes the same output as diffusers' classic ``AttnProcessor`` (queries,
keys, ``Attention.get_attention_scores``, values, output projection) and keeps the probabilities. The original
processors are put back in a ``finally``, also when the forward stops early or fails.

Only plain self-attention modules are supported (no spatial / group norm, no q/k norm, no rotary embedding):
exactly what SVD's temporal transformer blocks (``TemporalBasicTransformerBlock.attn1``) are. A module with any
of those raises, so nothing is captured from a computation this processor does not reproduce.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch
from torch import Tensor, nn

__all__ = ["AttentionMapProcessor", "capture_attention", "check_plain_attention"]


def check_plain_attention(name: str, attn: nn.Module) -> None:
    """Raise ValueError unless ``attn`` is a diffusers ``Attention`` the capture processor reproduces exactly."""
    needed = ("to_q", "to_k", "to_v", "to_out", "head_to_batch_dim", "batch_to_head_dim", "get_attention_scores")
    missing = [a for a in needed if not hasattr(attn, a)]
    if missing:
        raise ValueError(f"{name}: not a diffusers Attention module (no {', '.join(missing)})")
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


@contextlib.contextmanager
def capture_attention(modules: Sequence[tuple[str, nn.Module]], store: dict[str, Tensor]) -> Iterator[None]:
    """Swap the processors of ``modules`` for :class:`AttentionMapProcessor` and restore them afterwards."""
    saved = []
    try:
        for name, attn in modules:
            check_plain_attention(name, attn)
            saved.append((attn, attn.processor))
            attn.set_processor(AttentionMapProcessor(name, store))
        yield
    finally:
        for attn, proc in saved:
            attn.set_processor(proc)
