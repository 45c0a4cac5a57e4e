"""Low-VRAM mode: one photo on a 24 GB card, and the memory model that says what a setting costs.

What the protect loop keeps on the accelerator, per iteration (FIELD_NOTES section 2):

* **weights** of every model it runs: the denoiser up to the deepest block any loss reads (with the early exit the
  forward stops there and backward never visits later blocks), the VAE *encoder* (the adversarial pass
  differentiates through it) and the image encoder where the family has one. Never used by the loop: the blocks
  past the deepest one, the VAE *decoder*, the text encoder (prompt embeddings are cached).
* **activations saved for backward** of the adversarial pass: about ``c * tokens * hidden`` bytes per block
  without gradient checkpointing, only the block inputs with it (plus one block's activations while it is
  recomputed).
* the target pass runs under ``no_grad``: transient, one block at a time.

:class:`LowVram` turns those facts into settings, applied for the duration of one :func:`~anti_i2v.protect.protect`
call by :func:`applied`:

1. **fewer frames** (:data:`FRAMES`: CogVideoX 9 video frames = 3 latent frames, Wan 5 = 2, SVD 6): the token count
   and so the activations shrink linearly. This changes what is attacked (a shorter clip's tokens), which is why
   the report states the frames used;
2. **early exit** on (it already is by default);
3. **gradient checkpointing** of the denoiser blocks (diffusers' own, as ``gradient_checkpointing=True``);
4. **offloading** what the iteration never runs to the CPU: the denoiser blocks past the deepest used block and
   the VAE decoder. They come back to the loop's device when the call ends, so the user's models leave as they
   came in. When a loss needs the denoiser's output (AdvDM, Mist's semantic term) every block runs and none is
   offloaded.

Weights in fp8 (ComfyUI's ``fp8_e4m3fn`` loading) are ComfyUI's model management's business in the nodes; the
library loads diffusers weights in the dtype asked for (bf16 on a GPU by default).

:func:`saved_bytes` measures, deterministically, the bytes autograd keeps for backward (a saved-tensor hook that
sums distinct storages), which is how the tests and ``bench/speed.py --real-shape`` check the memory model on a
CPU; :func:`estimate` is the model itself, for CogVideoX-style DiTs at real shapes.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable, Iterator

import torch
from torch import nn

__all__ = ["FRAMES", "LowVram", "Plan", "plan", "applied", "saved_bytes", "estimate", "MemoryEstimate"]

#: video frames the low-VRAM mode attacks per family (a family not listed keeps :data:`DEFAULT_FRAMES` or fewer)
FRAMES: dict[str, int] = {"cogvideox": 9, "wan21": 5, "svd": 6}
DEFAULT_FRAMES = 5


@dataclass(frozen=True)
class LowVram:
    """Low-VRAM settings (all on by default).

    Args:
        frames: video frames to attack; ``None``: the family's :data:`FRAMES` value, or the surrogate's own frame
            count when that is already smaller.
        gradient_checkpointing: recompute the denoiser blocks in backward.
        offload_unused: keep the blocks past the deepest used block and the VAE decoder off the accelerator.
        offload_device: where offloaded modules wait (``cpu``).
    """

    frames: int | None = None
    gradient_checkpointing: bool = True
    offload_unused: bool = True
    offload_device: str = "cpu"

    def __post_init__(self) -> None:
        if self.frames is not None and (int(self.frames) != self.frames or self.frames < 1):
            raise ValueError(f"low_vram frames must be a positive integer or None, got {self.frames!r}")


@dataclass
class Plan:
    """What :func:`applied` does to one surrogate for one objective (reported in ``settings["low_vram"]``)."""

    frames: int
    frames_before: int
    gradient_checkpointing: bool
    early_exit: bool
    deepest_block: int | None
    offloaded: list[str] = field(default_factory=list)
    offload_device: str = "cpu"
    note: str = ""

    def describe(self) -> dict:
        return asdict(self)


def _family(surrogate) -> str:
    try:
        return str(surrogate.describe().get("family", ""))
    except Exception:  # pragma: no cover - describe() is cheap and total in every adapter
        return ""


def _valid_frames(surrogate, frames: int) -> int:
    """The largest frame count <= ``frames`` the family accepts (Wan and CogVideoX need 4k + 1)."""
    check = getattr(surrogate, "_check_frames", None)
    f = int(frames)
    while f > 1:
        try:
            if check is not None:
                check(f)
            return f
        except Exception:
            f -= 1
    return 1


def _deepest(objective, surrogate) -> tuple[int | None, bool]:
    """Deepest denoiser block the objective reads, and whether the denoiser's output is needed."""
    # every pass the loop runs: the adversarial one (own-latent terms included), the target's and the clean photo's
    req = objective.request().merge(objective.target_request()).merge(objective.clean_request())
    return (max(req.blocks) if req.blocks else None), bool(req.need_output)


def _offloadable(surrogate, deepest: int | None, need_output: bool) -> list[tuple[str, nn.Module]]:
    out: list[tuple[str, nn.Module]] = []
    if not need_output and deepest is not None and surrogate.early_exit:
        out += [(f"denoiser.{name}", m) for i, (name, m) in enumerate(surrogate.denoiser_blocks()) if i > deepest]
    vae = getattr(surrogate, "vae", None)
    decoder = getattr(vae, "decoder", None)
    if isinstance(decoder, nn.Module):
        out.append(("vae.decoder", decoder))
    return out


def plan(surrogate, objective, settings: LowVram | None = None) -> Plan:
    """The low-VRAM plan for ``surrogate`` and ``objective`` (nothing is changed yet)."""
    settings = settings or LowVram()
    fam = _family(surrogate)
    want = settings.frames if settings.frames is not None else min(FRAMES.get(fam, DEFAULT_FRAMES),
                                                                   surrogate.num_frames)
    frames = _valid_frames(surrogate, want)
    deepest, need_output = _deepest(objective, surrogate)
    names = [n for n, _ in _offloadable(surrogate, deepest, need_output)] if settings.offload_unused else []
    note = f"low-VRAM: {frames} video frames attacked"
    if frames < surrogate.num_frames:
        note += (f" instead of {surrogate.num_frames}: a shorter clip than the sampler makes, which changes what is "
                 "attacked")
    note += "; gradient checkpointing " + ("on" if settings.gradient_checkpointing else "off")
    if names:
        note += f"; kept off the accelerator: {', '.join(names)}"
    if need_output:
        note += "; a loss reads the denoiser output, so every block runs and none is offloaded"
    return Plan(frames=frames, frames_before=int(surrogate.num_frames),
                gradient_checkpointing=bool(settings.gradient_checkpointing), early_exit=True,
                deepest_block=deepest, offloaded=names, offload_device=settings.offload_device, note=note)


def _param_device(m: nn.Module) -> torch.device | None:
    for p in m.parameters(recurse=True):
        return p.device
    for b in m.buffers(recurse=True):
        return b.device
    return None


@contextlib.contextmanager
def applied(surrogate, objective, settings: LowVram | None = None) -> Iterator[Plan]:
    """Apply the low-VRAM plan for one run; everything (frames, flags, devices) is restored on exit."""
    settings = settings or LowVram()
    p = plan(surrogate, objective, settings)
    saved = (surrogate.num_frames, surrogate.gradient_checkpointing, surrogate.early_exit)
    deepest, need_output = _deepest(objective, surrogate)
    moved: list[tuple[nn.Module, torch.device]] = []
    try:
        surrogate.num_frames = p.frames
        surrogate.gradient_checkpointing = p.gradient_checkpointing
        surrogate.early_exit = True
        if settings.offload_unused:
            target = torch.device(settings.offload_device)
            for _name, m in _offloadable(surrogate, deepest, need_output):
                dev = _param_device(m)
                if dev is not None and dev != target:
                    moved.append((m, dev))
                    m.to(target)
            if moved and target.type == "cpu" and torch.cuda.is_available():
                torch.cuda.empty_cache()
        yield p
    finally:
        for m, dev in moved:
            m.to(dev)
        surrogate.num_frames, surrogate.gradient_checkpointing, surrogate.early_exit = saved


def saved_bytes(fn: Callable[[], object], modules: Iterable[nn.Module] = ()) -> tuple[object, int]:
    """Run ``fn`` and return its result with the bytes autograd saved for backward (distinct storages).

    Deterministic (unlike RSS): tensors saved inside a gradient-checkpointed region are not counted, because
    checkpointing installs its own, inner saved-tensor hooks and keeps only the region's inputs. The weights of
    ``modules`` are left out: autograd saves a reference to them (a linear layer's backward needs its weight), which
    costs no memory beyond the weights themselves.
    """
    seen: dict[int, int] = {}
    weights = {p.untyped_storage().data_ptr() for m in modules for p in m.parameters()}

    def pack(t: torch.Tensor):
        try:
            st = t.untyped_storage()
            ptr = st.data_ptr()
            if ptr not in weights:
                seen.setdefault(ptr if ptr else id(st), st.nbytes())
        except Exception:  # pragma: no cover - sparse or other exotic tensors
            pass
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, int(sum(seen.values()))


@dataclass
class MemoryEstimate:
    """Peak accelerator memory of one iteration, by part (GiB)."""

    weights_gb: float
    saved_activations_gb: float
    transient_gb: float
    vae_gb: float
    total_gb: float
    tokens: int
    blocks_run: int

    def describe(self) -> dict:
        return {k: (round(v, 2) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def estimate(*, num_layers: int, hidden: int, block_params: float, other_params: float, tokens: int,
             deepest: int, bytes_per_element: int = 2, act_per_token_hidden: float, checkpointing: bool,
             offload_unused: bool, vae_gb: float = 0.0) -> MemoryEstimate:
    """Memory model of one protect iteration on a DiT (CogVideoX, Wan).

    Args:
        num_layers: denoiser blocks; ``deepest``: the deepest used (0-based), the forward stops after it.
        hidden: token width; ``tokens``: video + text tokens of one pass.
        block_params, other_params: parameters of one block and of everything else loaded (embeddings, VAE
            encoder, image encoder).
        act_per_token_hidden: elements saved for backward per token per hidden unit per block without
            checkpointing (measured with :func:`saved_bytes` on a real-width block, see ``bench/speed.py``).
        checkpointing: only the block inputs are kept (one ``tokens x hidden`` tensor per block) plus one block's
            activations while it is recomputed.
        offload_unused: the blocks past ``deepest`` stay off the accelerator.
        vae_gb: the VAE encoder's saved activations for the adversarial pass (measured separately).
    """
    run = deepest + 1
    loaded_blocks = run if offload_unused else num_layers
    weights = (loaded_blocks * block_params + other_params) * bytes_per_element
    per_block = act_per_token_hidden * tokens * hidden * bytes_per_element
    if checkpointing:
        saved = run * tokens * hidden * bytes_per_element
        transient = per_block
    else:
        saved = run * per_block
        transient = per_block / max(1.0, act_per_token_hidden)  # the target pass's live block output
    gib = 2.0**30
    total = (weights + saved + transient) / gib + vae_gb
    return MemoryEstimate(weights_gb=weights / gib, saved_activations_gb=saved / gib, transient_gb=transient / gib,
                          vae_gb=vae_gb, total_gb=total, tokens=int(tokens), blocks_run=run)
