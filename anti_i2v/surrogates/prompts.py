"""Cached prompt embeddings: the text encoder is never in the protect loop.

A surrogate that needs text embeddings (CogVideoX: T5-XXL, 226 tokens; Wan 2.1: umT5-XXL) takes them as a
tensor, as a ``.safetensors`` file holding a tensor named ``prompt_embeds``, or finds
``<model folder>/prompt_embeds.safetensors``; failing all that it uses zeros of the right shape (the
unconditional embedding is a fine surrogate condition for IRA/IRC) and says so in its description.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

__all__ = ["PROMPT_FILE", "load_prompt_embeds", "save_prompt_embeds", "resolve_prompt_embeds"]

PROMPT_FILE = "prompt_embeds.safetensors"


def load_prompt_embeds(path: str | Path) -> torch.Tensor:
    """Read the ``prompt_embeds`` tensor from a safetensors file (no pickle)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompt embeddings file {str(path)!r} does not exist")
    tensors = load_file(str(path))
    if "prompt_embeds" not in tensors:
        raise ValueError(f"{str(path)!r} has no tensor named 'prompt_embeds' (found {sorted(tensors)})")
    return tensors["prompt_embeds"]


def save_prompt_embeds(embeds: torch.Tensor, path: str | Path) -> Path:
    """Write ``embeds`` as ``prompt_embeds`` to a safetensors file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"prompt_embeds": embeds.detach().contiguous().cpu()}, str(path))
    return path


def resolve_prompt_embeds(
    spec: torch.Tensor | str | Path | None,
    *,
    folder: str | Path | None,
    shape: tuple[int, ...],
) -> tuple[torch.Tensor, str]:
    """The embeddings to use and where they came from (``"tensor"``, a file path, or ``"zeros"``).

    Args:
        spec: a tensor, a safetensors path, or None (look for ``<folder>/prompt_embeds.safetensors``).
        folder: the model folder, if any.
        shape: (1, tokens, width) expected; used for zeros and checked for the rest (width only).
    """
    if isinstance(spec, torch.Tensor):
        emb, source = spec, "tensor"
    elif spec is not None:
        emb, source = load_prompt_embeds(spec), str(spec)
    elif folder is not None and (Path(folder) / PROMPT_FILE).is_file():
        emb, source = load_prompt_embeds(Path(folder) / PROMPT_FILE), str(Path(folder) / PROMPT_FILE)
    else:
        return torch.zeros(shape), "zeros"
    if emb.ndim == 2:
        emb = emb.unsqueeze(0)
    if emb.ndim != 3 or emb.shape[-1] != shape[-1]:
        raise ValueError(
            f"prompt embeddings from {source} have shape {tuple(emb.shape)}; expected (1, tokens, {shape[-1]})"
        )
    return emb.detach().clone(), source
