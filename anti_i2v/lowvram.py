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

5. **fp8 weights** (opt-in, ``LowVram(fp8=True)``, CLI ``--fp8-weights``), library (diffusers) surrogates only:
   for the run, every ``nn.Linear`` of the denoiser blocks the loop runs (up to the deepest used one; all of them
   when a loss reads the output) keeps its weight on the loop's device as ``torch.float8_e4m3fn`` with one float32
   scale per output channel (``amax(|w_row|) / 448``, e4m3's largest finite value), and computes in the weight's
   own dtype by upcasting on the fly (:class:`_Fp8Linear`: autograd flows to the input; backward upcasts the fp8
   weight again instead of keeping a compute-dtype copy, so the bytes kept for backward stay those of the
   activations). The original weight tensors wait on ``offload_device`` (on a CPU run they simply stay where they
   are, no copy) and the user's ``Parameter`` objects hold an empty tensor of the same dtype and device; when the
   call ends, also on error or cancel, each ``Parameter`` gets its original tensor back (bit-exact: the same
   tensor on a CPU, an exact copy back from the offload device otherwise), and the instance ``forward`` this
   installs is removed, so module objects, dtypes, devices, ``requires_grad`` and hooks leave as they came in.
   Not diffusers' ``enable_layerwise_casting``: it recasts the user's parameters in place (the module stays in
   the storage dtype afterwards, a lossy change to the user's model) and the compute-dtype copy of every weight
   it makes in ``forward`` is what ``F.linear`` saves for backward, so the adversarial pass holds every layer's
   weights in the compute dtype anyway (measured: a two-layer 256-wide MLP kept 532,480 bytes for backward
   with it against 8,192 without: its fp32 weights). Rounding to e4m3 (3 mantissa bits) moves each weight by up
   to 1/16 of its value (the tiniest of a row, e4m3 subnormals, by at most 2**-18 of the row's largest); the
   attack's gradient stays close to the bf16 one (tests: cosine similarity > 0.99 on tiny models) but is not
   equal, which is why it is opt-in and the report's ``settings["low_vram"]`` says so.

Weights in fp8 for native ComfyUI surrogates (the nodes, with your own MODEL) are ComfyUI's business: a MODEL
loaded with UNETLoader ``weight_dtype=fp8_e4m3fn`` or from a ``*_fp8_scaled`` file keeps its fp8 tensors and
ComfyUI's own ops upcast them per layer; the native surrogate's shadow runs those same ops on aliases of those
same fp8 tensors (tests/test_native_fp8.py, tests/test_native_server.py), so ``fp8`` here stays off for them.

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

__all__ = ["FRAMES", "LowVram", "Plan", "plan", "applied", "saved_bytes", "estimate", "MemoryEstimate",
           "fp8_weight", "weight_bytes_on"]

#: video frames the low-VRAM mode attacks per family (a family not listed keeps :data:`DEFAULT_FRAMES` or fewer)
FRAMES: dict[str, int] = {"cogvideox": 9, "wan21": 5, "svd": 6}
DEFAULT_FRAMES = 5


@dataclass(frozen=True)
class LowVram:
    """Low-VRAM settings (all on by default, except the opt-in ``fp8``).

    Args:
        frames: video frames to attack; ``None``: the family's :data:`FRAMES` value, or the surrogate's own frame
            count when that is already smaller.
        gradient_checkpointing: recompute the denoiser blocks in backward.
        offload_unused: keep the blocks past the deepest used block and the VAE decoder off the accelerator.
        offload_device: where offloaded modules (and, with ``fp8``, the original weights) wait (``cpu``).
        fp8: store the weights of the ``nn.Linear`` layers of the denoiser blocks the run uses in
            ``float8_e4m3fn`` (per-output-channel scale) on the loop's device for the run (off by default: it
            changes the gradient slightly; library surrogates only, see the module docstring).
    """

    frames: int | None = None
    gradient_checkpointing: bool = True
    offload_unused: bool = True
    offload_device: str = "cpu"
    fp8: bool = False

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
    #: fp8 weights: ``None`` when not asked for, else what was converted (filled in by :func:`applied`)
    fp8: dict | None = None

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
    fp8 = None
    if settings.fp8:
        reason = _fp8_unavailable(surrogate)
        layers = [] if reason else _fp8_layers(surrogate, deepest, need_output)
        fp8 = {"dtype": "float8_e4m3fn", "scale": "per output channel (float32, amax / 448)",
               "compute_dtype": str(layers[0][1].weight.dtype).replace("torch.", "") if layers else None,
               "layers": len(layers), "parameters": int(sum(m.weight.numel() for _, m in layers)),
               "blocks": _fp8_block_count(surrogate, deepest, need_output) if layers else 0,
               "applied": bool(layers), "reason": reason or ("" if layers else "no nn.Linear in the blocks run")}
        if layers:
            note += (f"; fp8 weights: {len(layers)} nn.Linear layers of the denoiser blocks run kept in float8_e4m3fn "
                     "(per-output-channel scale) on the loop's device, computed in "
                     f"{fp8['compute_dtype']} (the gradient differs slightly from full-precision weights)")
        else:
            note += f"; fp8 weights asked for but not applied: {fp8['reason']}"
    return Plan(frames=frames, frames_before=int(surrogate.num_frames),
                gradient_checkpointing=bool(settings.gradient_checkpointing), early_exit=True,
                deepest_block=deepest, offloaded=names, offload_device=settings.offload_device, note=note, fp8=fp8)


# ---------------------------------------------------------------------------------------------- fp8 weights
#: e4m3fn's largest finite value: a row's largest |w| maps onto it
_E4M3_MAX = float(torch.finfo(torch.float8_e4m3fn).max)


def _fp8_unavailable(surrogate) -> str:
    """Why fp8 weights cannot apply to ``surrogate`` ("" when they can)."""
    try:
        source = str(surrogate.describe().get("source", ""))
    except Exception:  # pragma: no cover - describe() is total in every adapter
        source = ""
    if source == "comfyui-native":
        return ("the denoiser is your ComfyUI MODEL: load it in fp8 there (UNETLoader weight_dtype fp8_e4m3fn or a "
                "*_fp8_scaled file); ComfyUI's own ops then upcast it per layer")
    return ""


def _fp8_block_count(surrogate, deepest: int | None, need_output: bool) -> int:
    """How many leading denoiser blocks the run executes (0 when no block is read and the output is not needed)."""
    n = len(surrogate.denoiser_blocks())
    if need_output:
        return n
    return 0 if deepest is None else min(n, deepest + 1)  # applied() runs with the early exit on


def _fp8_layers(surrogate, deepest: int | None, need_output: bool) -> list[tuple[str, nn.Linear]]:
    """The plain ``nn.Linear`` layers (own forward not overridden, floating weight of 2+ bytes) of the blocks run."""
    out: list[tuple[str, nn.Linear]] = []
    seen: set[int] = set()
    blocks = list(surrogate.denoiser_blocks())[:_fp8_block_count(surrogate, deepest, need_output)]
    for bname, block in blocks:
        for name, m in block.named_modules():
            if (isinstance(m, nn.Linear) and type(m).forward is nn.Linear.forward and id(m) not in seen
                    and m.weight is not None and m.weight.is_floating_point() and m.weight.element_size() > 1
                    and "forward" not in m.__dict__):
                seen.add(id(m))
                out.append((f"denoiser.{bname}.{name}" if name else f"denoiser.{bname}", m))
    return out


def _to_fp8(w: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``w`` (out, in) as float8_e4m3fn on ``device`` with one float32 scale per output channel."""
    w32 = w.detach().to(device=device, dtype=torch.float32)
    amax = w32.abs().amax(dim=1)
    scale = torch.where(amax > 0, amax / _E4M3_MAX, torch.ones_like(amax))
    q = (w32 / scale[:, None]).clamp_(-_E4M3_MAX, _E4M3_MAX).to(torch.float8_e4m3fn)
    return q, scale


def _dequant(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The layer's weight in ``dtype`` (every e4m3 value is exact in bf16, fp16 and fp32; the product rounds once)."""
    return q.to(dtype) * scale.to(dtype)[:, None]


class _Fp8Linear(torch.autograd.Function):
    """``F.linear(x, dequant(q, scale), bias)`` with a constant fp8 weight.

    The weight is upcast to the compute dtype in ``forward`` and again in ``backward`` (only ``x`` gets a
    gradient): autograd keeps no compute-dtype copy of the weight between the passes. ``q`` and ``scale`` sit on
    ``ctx`` as plain attributes (they are constants that live for the whole run), so :func:`saved_bytes` counts
    only the activations, as it does for ordinary weights.
    """

    @staticmethod
    def forward(ctx, x, q, scale, bias, dtype):  # noqa: D401 - autograd signature
        ctx.q, ctx.scale, ctx.dtype = q, scale, dtype
        return torch.nn.functional.linear(x, _dequant(q, scale, dtype), bias)

    @staticmethod
    def backward(ctx, grad):
        gx = None
        if ctx.needs_input_grad[0]:
            gx = grad.matmul(_dequant(ctx.q, ctx.scale, grad.dtype))
        return gx, None, None, None, None


class _Fp8State:
    """One converted layer: its fp8 weight and scale, and the original weight tensor while it waits."""

    __slots__ = ("module", "q", "scale", "dtype", "original", "device", "moved")

    def __init__(self, module: nn.Linear, device: torch.device, offload: torch.device) -> None:
        p = module.weight
        self.module, self.dtype, self.device = module, p.dtype, p.device
        self.q, self.scale = _to_fp8(p.data, device)
        self.moved = self.device != offload
        self.original = p.data.to(offload) if self.moved else p.data  # exact copy off the device, or itself

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.module
        return _Fp8Linear.apply(x, self.q, self.scale, m.bias, self.dtype)

    def swap_in(self) -> None:
        p = self.module.weight
        p.data = torch.empty(0, dtype=self.dtype, device=self.device)  # the user's Parameter object stays
        self.module.__dict__["forward"] = self.forward

    def restore(self) -> None:
        m = self.module
        if m.__dict__.get("forward") == self.forward:
            del m.__dict__["forward"]
        m.weight.data = self.original.to(self.device) if self.moved else self.original
        self.q = self.scale = self.original = None


def _fp8_state(module: nn.Module) -> _Fp8State | None:
    """The conversion a run in progress applied to ``module`` (its swapped-in forward's owner), or None."""
    st = getattr(vars(module).get("forward"), "__self__", None)
    return st if isinstance(st, _Fp8State) else None


def fp8_weight(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The (fp8 weight, scale) ``module`` computes with during an fp8 run, or None."""
    st = _fp8_state(module)
    return None if st is None or st.q is None else (st.q, st.scale)


def weight_bytes_on(modules: Iterable[nn.Module], device: torch.device | str) -> int:
    """Bytes of weights on ``device`` that ``modules`` compute with now: their parameters' and buffers' distinct
    storages, plus the fp8 weights and scales of layers converted by a run in progress. ``"cuda"`` (no index)
    counts every CUDA device."""
    device = torch.device(device)
    seen: dict[int, int] = {}

    def add(t: torch.Tensor) -> None:
        if t.device.type == device.type and (device.index is None or t.device.index in (None, device.index)):
            st = t.untyped_storage()
            seen.setdefault(st.data_ptr() or id(st), st.nbytes())

    for root in modules:
        for m in root.modules():
            for t in list(m.parameters(recurse=False)) + list(m.buffers(recurse=False)):
                add(t)
            got = fp8_weight(m)
            if got is not None:
                add(got[0])
                add(got[1])
    return int(sum(seen.values()))


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
    converted: list[_Fp8State] = []
    try:
        surrogate.num_frames = p.frames
        surrogate.gradient_checkpointing = p.gradient_checkpointing
        surrogate.early_exit = True
        target = torch.device(settings.offload_device)
        if settings.offload_unused:
            for _name, m in _offloadable(surrogate, deepest, need_output):
                dev = _param_device(m)
                if dev is not None and dev != target:
                    moved.append((m, dev))
                    m.to(target)
        if p.fp8 is not None and p.fp8["applied"]:
            device = surrogate.device
            for _name, m in _fp8_layers(surrogate, deepest, need_output):
                if _fp8_state(m) is not None:  # the same module in two runs at once (an ensemble sharing weights)
                    continue
                st = _Fp8State(m, device, target)
                converted.append(st)
                st.swap_in()
            p.fp8["weight_bytes_on_device"] = int(sum(st.q.numel() * st.q.element_size()
                                                      + st.scale.numel() * st.scale.element_size()
                                                      for st in converted))
            p.fp8["original_bytes"] = int(sum(st.original.numel() * st.original.element_size() for st in converted))
            p.fp8["originals_wait_on"] = str(target) if any(st.moved for st in converted) else (
                f"{device} (already there: no copy)")
        if (moved or any(st.moved for st in converted)) and target.type == "cpu" and torch.cuda.is_available():
            torch.cuda.empty_cache()
        yield p
    finally:
        failed: BaseException | None = None
        for st in reversed(converted):  # every layer gets its weight back even if one restore fails
            try:
                st.restore()
            except BaseException as exc:  # pragma: no cover - a device copy failing (out of memory)
                failed = failed or exc
        if failed is not None:  # pragma: no cover
            raise failed
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
             offload_unused: bool, vae_gb: float = 0.0, fp8: bool = False,
             largest_linear_params: float | None = None) -> MemoryEstimate:
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
        fp8: :attr:`LowVram.fp8`: the blocks run hold their weights at 1 byte per parameter (the per-channel
            scales, 4 bytes per output row, are negligible and not counted), everything else stays at
            ``bytes_per_element``; one layer's weight is upcast at a time, a transient of ``2 *
            bytes_per_element`` bytes per parameter of ``largest_linear_params`` (default ``block_params / 4``,
            a DiT block's feed-forward matrix).
    """
    run = deepest + 1
    loaded_blocks = run if offload_unused else num_layers
    run_bytes = 1 if fp8 else bytes_per_element
    weights = (run * block_params * run_bytes + (loaded_blocks - run) * block_params * bytes_per_element
               + other_params * bytes_per_element)
    per_block = act_per_token_hidden * tokens * hidden * bytes_per_element
    if checkpointing:
        saved = run * tokens * hidden * bytes_per_element
        transient = per_block
    else:
        saved = run * per_block
        transient = per_block / max(1.0, act_per_token_hidden)  # the target pass's live block output
    if fp8:
        largest = block_params / 4 if largest_linear_params is None else largest_linear_params
        transient += 2 * bytes_per_element * largest
    gib = 2.0**30
    total = (weights + saved + transient) / gib + vae_gb
    return MemoryEstimate(weights_gb=weights / gib, saved_activations_gb=saved / gib, transient_gb=transient / gib,
                          vae_gb=vae_gb, total_gb=total, tokens=int(tokens), blocks_run=run)
