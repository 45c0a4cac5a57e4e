"""The protect loop: one functional attack loop shared by Anti-I2V and the baselines.

Once per run (nothing here carries the perturbation's gradient):

* the clean photo at the surrogate's working size is encoded and turned into the clean video latent ``x0``;
* the target image's conditioning (its VAE latent, VAE-encoder features, image-encoder tokens) is encoded.

Each iteration (Anti-I2V Alg. 1):

1. draw one timestep and one noise for the iteration (seeded generator); ``z_t`` is the forward process
   applied to the clean ``x0``: **one z_t shared by the target and the adversarial pass** (the paper's IRA
   compares ``eps^m(z_t, z_xi, t, y)`` with ``eps^m(z_t, z_psi, t, y)``; at inference ``z_t`` comes from the
   sampler, not from the photo, so the gradient flows only through the image conditioning);
2. synthesise the protected photo at full resolution with the Dual-Space Perturbation and project it;
3. resize it to the surrogate's working size (optionally through a differentiable JPEG);
4. target pass (no grad): the target's features under that z_t, from its cached conditioning;
5. adversarial pass: the protected photo's features, stopped after the deepest block needed. AdvDM's
   diffusion loss keeps its own definition (``z_t`` from the perturbed image itself) in a pass of its own;
6. objective = sum of weighted terms, computed in float32; its gradient is taken with a loss scale (fp16 and
   bf16 models: per-element gradients of a mean over ~1e7 features underflow half precision otherwise);
   a step on the DSP parameters (the gradient scaled to its peak by default; signed PGD or Adam on request),
   bounded in pixel units.

The loop never changes the input tensors, the models' weights, their ``requires_grad`` flags, training flags
or hooks, also when it fails or is cancelled.

An :class:`~anti_i2v.surrogates.ensemble.Ensemble` runs steps 1 and 3-6 once per member (its own working size,
cached conditioning, z_t, loss scale and noise generator), one member after another, each member's backward before
the next member's forward; the step in 6 takes the weighted sum of the members' gradients.
"""

from __future__ import annotations

import contextlib
import gc
import math
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import dsp as dsp_mod
from . import lowvram
from .dsp import DSPConfig, check_image
from .losses import LossTerm, Objective, resolve_objective
from .metrics import image_quality
from .surrogates.base import Surrogate
from .surrogates.ensemble import Ensemble, Member

__all__ = [
    "ProtectConfig",
    "Progress",
    "ProtectResult",
    "ProtectCancelled",
    "protect",
    "default_target",
    "resize_to",
    "frozen_models",
    "PRESETS",
    "GradientVanished",
    "Ensemble",
    "Member",
]

SCHEDULES = ("constant", "linear", "cosine")
OPTIMIZERS = ("normalized", "sign", "adam")


@dataclass(frozen=True)
class ProtectConfig:
    """Loop settings.

    Args:
        steps: iterations (paper: 200).
        step_size: step per iteration in 1/255 pixel units (the signed step of PGD; Adam's learning rate).
        schedule: step-size schedule: ``constant``, ``linear`` (to 10%) or ``cosine`` (to 10%).
        optimizer: ``normalized`` (default: the gradient scaled so that the most sensitive pixel moves by the
            step; see :func:`anti_i2v.dsp.step_params` for why), ``sign`` (signed gradient, classic L-inf PGD)
            or ``adam``.
        seed: makes the result bit-identical on the same machine.
        quantize: snap the result to the 8-bit grid within the budget, so a saved PNG is exactly what was
            measured (turn off to keep float outputs).
        robust_jpeg: 0 (off) or a JPEG quality 1-100: every iteration passes the protected image through
            kornia's differentiable JPEG at that quality before the surrogate (expectation over the
            transformation users ask for: protections should survive re-encoding). Simulated at the working
            resolution, where it costs a few ms.
        random_start: start from a uniformly random point of the budget (drawn with the seeded generator) instead
            of the photo itself, as L-inf PGD does in the baselines' code (Madry et al. 2018; advertorch's
            ``rand_init``; PhotoGuard's ``pgd``). Needed by objectives whose gradient vanishes at the photo (a
            distance pushed away from the clean photo's, e.g. VGMShield undirected).
    """

    steps: int = 200
    step_size: float = 1.0
    schedule: str = "constant"
    optimizer: str = "normalized"
    seed: int = 0
    quantize: bool = True
    robust_jpeg: int = 0
    random_start: bool = False

    def __post_init__(self) -> None:
        if int(self.steps) != self.steps or self.steps < 0:
            raise ValueError(f"steps must be a non-negative integer, got {self.steps}")
        if not (math.isfinite(self.step_size) and self.step_size > 0):
            raise ValueError(f"step_size must be > 0 (units of 1/255), got {self.step_size}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if int(self.robust_jpeg) != self.robust_jpeg or not 0 <= self.robust_jpeg <= 100:
            raise ValueError(f"robust_jpeg must be 0 (off) or a JPEG quality 1-100, got {self.robust_jpeg}")

    def step_at(self, it: int) -> float:
        """Step size (in [0, 1] pixel units) at iteration ``it``."""
        base = self.step_size / 255.0
        if self.schedule == "constant" or self.steps <= 1:
            return base
        frac = it / (self.steps - 1)
        if self.schedule == "linear":
            return base * (1.0 - 0.9 * frac)
        return base * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * frac)))


#: strength presets used by the CLI and the nodes: eps in 1/255, steps, step size in 1/255 (and the JPEG quality
#: simulated in the loop, 0 = off). "default" is the budget that measured imperceptible on every benchmark photo
#: (bench/quality.py; README "Does it work?"); "high" is the paper's 16/255, stronger and visible up close.
PRESETS: dict[str, dict] = {
    "low": {"eps": 4.0, "steps": 100, "step_size": 0.5, "robust_jpeg": 0},
    "default": {"eps": 8.0, "steps": 200, "step_size": 1.0, "robust_jpeg": 0},
    "high": {"eps": 16.0, "steps": 300, "step_size": 1.5, "robust_jpeg": 0},
}


@dataclass
class Progress:
    """What the callback receives every iteration."""

    step: int  # 1-based iteration just finished
    total: int
    loss: float
    terms: dict[str, float]
    elapsed_s: float


@dataclass
class ProtectResult:
    """Outcome of :func:`protect`.

    Attributes:
        protected: (B, 3, H, W) protected images in [0, 1], same size as the input, on CPU.
        perturbation: ``protected - image`` (B, 3, H, W), on CPU.
        history: one dict per finished iteration: ``{"step", "loss", <term>: value, ...}``.
        linf: measured L-inf of the perturbation per image, in 1/255.
        psnr: PSNR (dB) per image, protected vs original.
        ssim: SSIM per image, protected vs original.
        cancelled: the callback stopped the loop early (``protected`` holds the last iterate).
        settings: everything needed to reproduce the run.
        seconds: wall time of the loop.
        quality: every imperceptibility figure per image (:func:`~anti_i2v.metrics.image_quality`: L-inf, PSNR,
            SSIM, CIEDE2000 mean and 95th percentile, mean |dL*|).
    """

    protected: Tensor
    perturbation: Tensor
    history: list[dict[str, float]]
    linf: list[float]
    psnr: list[float]
    ssim: list[float]
    cancelled: bool = False
    settings: dict = field(default_factory=dict)
    seconds: float = 0.0
    quality: dict = field(default_factory=dict)
    #: ensemble runs: one dict per member that ran (label, family, weight, objective with its resolved layers,
    #: working size, loss scale, loss history); empty for a single surrogate
    members: list = field(default_factory=list)

    def report(self) -> dict:
        """A JSON-friendly report (no tensors)."""
        rep = {
            "settings": self.settings,
            "steps_done": len(self.history),
            "cancelled": self.cancelled,
            "seconds": round(self.seconds, 3),
            "linf_255": self.linf,
            "psnr_db": self.psnr,
            "ssim": self.ssim,
            "quality": self.quality,
            "loss_history": self.history,
        }
        if self.members:
            rep["ensemble"] = {"sequential": self.settings.get("surrogate", {}).get("sequential"),
                               "members": self.members}
        return rep


class ProtectCancelled(RuntimeError):
    """Raised by a callback to abort the loop (the models are restored first)."""


def resize_to(image: Tensor, size: tuple[int, int]) -> Tensor:
    """Differentiable resize to (height, width) with antialiasing when shrinking."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    shrink = size[0] < image.shape[-2] or size[1] < image.shape[-1]
    return F.interpolate(image, size=size, mode="bilinear", align_corners=False, antialias=shrink)


def default_target(height: int, width: int, *, device=None) -> Tensor:
    """A fixed, unrelated target image (1, 3, H, W): a high-contrast diagonal stripe pattern.

    Used by IRA and the encoder loss when no target image is given (Mist and PhotoGuard use similar
    synthetic patterns). Deterministic.
    """
    y = torch.linspace(0, 1, height, device=device).view(-1, 1)
    x = torch.linspace(0, 1, width, device=device).view(1, -1)
    r = 0.5 + 0.5 * torch.sin(2 * math.pi * 6 * (x + y))
    g = 0.5 + 0.5 * torch.sin(2 * math.pi * 9 * (x - y) + 1.0)
    b = 0.5 + 0.5 * torch.cos(2 * math.pi * 4 * x * (1 + y))
    return torch.stack([r, g, b]).unsqueeze(0).clamp(0, 1)


@contextlib.contextmanager
def frozen_models(modules: Sequence[nn.Module]) -> Iterator[None]:
    """Freeze ``modules`` for the loop and restore them exactly afterwards, also on error.

    Saves and restores every parameter's ``requires_grad`` and every module's ``training`` flag. Weights are never
    written. Hooks are the surrogate's business: :meth:`Surrogate.features` removes its own in a ``finally``
    (hooks a library installs lazily for itself, like transformers' output capturing, are left alone).
    """
    params: list[tuple[nn.Parameter, bool]] = []
    seen: set[int] = set()
    training: list[tuple[nn.Module, bool]] = []
    for root in modules:
        for m in root.modules():
            if id(m) in seen:
                continue
            seen.add(id(m))
            training.append((m, m.training))
            for p in m.parameters(recurse=False):
                if not p.is_inference():  # inference tensors (ComfyUI weights) take no grad flag changes
                    params.append((p, p.requires_grad))
    try:
        for p, _ in params:
            if p.requires_grad:
                p.requires_grad_(False)
        for m, _ in training:
            m.training = False
        yield
    finally:
        for p, flag in params:
            if p.requires_grad != flag:
                p.requires_grad_(flag)
        for m, flag in training:
            m.training = flag



def _as_objective(losses: Objective | LossTerm | Sequence[LossTerm]) -> Objective:
    if isinstance(losses, Objective):
        return losses
    if isinstance(losses, LossTerm):
        return Objective((losses,))
    return Objective(tuple(losses))


def _jpeg(image: Tensor, quality: int) -> Tensor:
    """Differentiable JPEG round trip (kornia) at ``quality``."""
    import kornia

    q = torch.full((image.shape[0],), float(quality), device=image.device, dtype=image.dtype)
    return kornia.enhance.jpeg_codec_differentiable(image, q).clamp(0.0, 1.0)


def _free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def inert_reason(objective: Objective, config: ProtectConfig) -> str | None:
    """Why a run with this objective and these settings cannot change the photo at all, or None."""
    if config.steps == 0:
        return "0 steps: nothing is optimised, the photo is returned unchanged"
    if all(float(t.weight) == 0.0 for t in objective.terms):
        return "every loss weight is 0: the objective cannot move the image, the photo is returned unchanged"
    return None


class GradientVanished(FloatingPointError):
    """Every gradient of an iteration was zero or not finite (e.g. half-precision underflow)."""


def _model_dtype(surrogate: Surrogate) -> torch.dtype:
    """The lowest-precision floating dtype among the surrogate's weights."""
    seen = set()
    for m in surrogate.modules():
        for p in m.parameters():
            if p.is_floating_point():
                seen.add(p.dtype)
    for dt in (torch.float16, torch.bfloat16):
        if dt in seen:
            return dt
    return torch.float32


def _initial_scale(feats: list, dtype: torch.dtype) -> float:
    """Loss scale for a half-precision model: about the element count of the largest feature (a power of 2).

    Each term is a mean over N elements, so d loss / d feature ~ 2 (a - b) / N: with N ~ 5e7 that is below
    fp16's smallest subnormal (6e-8). Scaling by ~N brings per-element gradients to the features' own scale.
    """
    if dtype == torch.float32:
        return 1.0
    n = max([t.numel() for f in feats if f is not None for t in _feature_tensors(f)] or [1])
    return float(2 ** min(24, max(0, round(math.log2(max(n, 1))))))


def _feature_tensors(f) -> list[Tensor]:
    out = list(f.blocks.values()) + list(f.vae.values())
    out += [t for t in (f.latent, f.output) if t is not None]
    return out


def _random_start(params, perturbation: DSPConfig, gen: torch.Generator) -> None:
    """Fill the perturbation parameters uniformly within their bounds (then project), from ``gen``."""
    eps = perturbation.eps01
    with torch.no_grad():
        for t in params.tensors():
            if not t.numel():
                continue
            share = (1.0 if t is params.rgb else perturbation.dct_share if t is params.dct
                     else perturbation.colour_share)
            u = torch.rand(t.shape, generator=gen, dtype=torch.float32).to(device=t.device, dtype=t.dtype)
            t.copy_((u * 2.0 - 1.0) * share * eps)
        dsp_mod.project_params(params, perturbation)

class _MemberRun:
    """One surrogate's share of the loop: its objective, working size, target, cached conditioning and loss scale.

    The single-surrogate loop is one such run of weight 1; an :class:`~anti_i2v.surrogates.ensemble.Ensemble` runs
    one per member, each with its own noise generator seeded with the run's seed.
    """

    def __init__(self, surrogate: Surrogate, objective: Objective, weight: float, label: str | None,
                 target: Tensor | None, batch: int, size: tuple[int, int], seed: int) -> None:
        self.surrogate, self.objective, self.weight, self.label = surrogate, objective, float(weight), label
        self.shared_terms = [t for t in objective.terms if not t.request().own_latent]
        self.own_terms = [t for t in objective.terms if t.request().own_latent]
        self.req = Objective(tuple(self.shared_terms)).request()
        self.req_own = Objective(tuple(self.own_terms)).request()
        self.treq = objective.target_request()
        self.creq = objective.clean_request()  # a pass on the clean photo under the same z_t (methods that read it)
        for r in (self.req, self.req_own, self.treq, self.creq):
            surrogate.validate_request(r)
        self.work = surrogate.working_size(*size)
        self.batch = batch
        self.target = None
        if not self.treq.empty and target is not None:
            t = check_image(target, "target")
            if t.shape[0] not in (1, batch):
                raise ValueError(f"target batch ({t.shape[0]}) must be 1 or match the image batch ({batch})")
            self.target = t
        self.gen = torch.Generator(device="cpu").manual_seed(int(seed))
        self.model_dtype = _model_dtype(surrogate)
        self.names = objective.names()
        self.loss_scale: float | None = None
        self.history: list[dict[str, float]] = []
        self.t_img = self.clean_x0 = self.tgt_cond = self.clean_cond = self.x_work = None
        self.states: dict = {}

    def _where(self) -> str:
        return "" if self.label is None else f" (ensemble member {self.label!r})"

    def prepare(self, x: Tensor, cache_conditioning: bool, run_steps: int = 1) -> None:
        """Once per run, no gradient: the target at the working size, the clean photo's ``x0`` (and its
        conditioning when a term reads a clean-photo pass), the target's conditioning, each term's per-run state."""
        s, device = self.surrogate, self.surrogate.device
        if not self.treq.empty:
            t = self.target if self.target is not None else default_target(*self.work)
            t = resize_to(t.detach().to(device=device, dtype=torch.float32), self.work)
            self.t_img = t.expand(self.batch, -1, -1, -1).contiguous()
        self.x_work = resize_to(x.to(device), self.work)
        with torch.no_grad():
            if self.req.needs_denoiser or not self.creq.empty:
                clean_cond = s.encode_image(self.x_work, self.creq.vae_layers).detach()
                self.clean_x0 = s.clean_latent(clean_cond).detach()
                self.clean_cond = None if self.creq.empty else clean_cond
                del clean_cond
            if self.t_img is not None and cache_conditioning:
                self.tgt_cond = s.encode_image(self.t_img, self.treq.vae_layers).detach()
            if run_steps:
                for n, term in zip(self.names, self.objective.terms):
                    st = term.prepare(s, photo=self.x_work, target=self.t_img)
                    if st is not None:
                        self.states[n] = st

    def forward(self, x: Tensor, params, perturbation: DSPConfig, m: Tensor | None, config: ProtectConfig,
                it: int) -> tuple[Tensor, dict[str, Tensor]]:
        """One iteration's objective (float32, graph to ``params``) and its unweighted terms."""
        s, work, device = self.surrogate, self.work, self.surrogate.device
        draw = s.draw_noise(self.batch, self.gen, size=work)
        tgt_feats = None
        if self.t_img is not None:
            with torch.no_grad():
                tgt_feats = s.features(None if self.tgt_cond is not None else self.t_img, draw, self.treq,
                                       clean=self.clean_x0, cond=self.tgt_cond)
        clean_feats = None
        if self.clean_cond is not None:
            with torch.no_grad():
                clean_feats = s.features(None, draw, self.creq, clean=self.clean_x0, cond=self.clean_cond)
                clean_feats.image = self.x_work
        adv_full = dsp_mod.apply_dsp(x, params, perturbation, m)
        adv_work = resize_to(adv_full, work).to(device)
        if config.robust_jpeg:
            adv_work = _jpeg(adv_work, config.robust_jpeg)
        all_vae = self.req.vae_layers | self.req_own.vae_layers
        adv_cond = s.encode_image(adv_work, all_vae)
        adv_feats = s.features(None, draw, self.req, clean=self.clean_x0, cond=adv_cond) if self.shared_terms else None
        own_feats = s.features(None, draw, self.req_own, cond=adv_cond) if self.own_terms else None
        for f_ in (adv_feats, own_feats):
            if f_ is not None:
                f_.image = adv_work
        total, values = self.objective.evaluate(adv_feats, tgt_feats, own=own_feats, clean=clean_feats,
                                                states=self.states)
        if not torch.isfinite(total):
            raise FloatingPointError(
                f"the objective{self._where()} became {float(total)} at iteration {it + 1} with a "
                f"{self.model_dtype} model; try float32 or bfloat16, or a smaller step_size"
            )
        if self.loss_scale is None:
            self.loss_scale = _initial_scale([adv_feats, own_feats, tgt_feats], self.model_dtype)
        return total, values

    def usable(self, grads: Sequence[Tensor | None], it: int, retries: int) -> bool:
        """True when the gradients can be used; False after rescaling the loss for a retry (half precision);
        raises :class:`GradientVanished` when retries cannot help."""
        present = [g_ for g_ in grads if g_ is not None]
        finite = all(bool(torch.isfinite(g_).all()) for g_ in present)
        nonzero = any(bool((g_ != 0).any()) for g_ in present) if finite else False
        if finite and nonzero:
            return True
        # half precision: back off on overflow, scale up on underflow, retry the iteration
        if self.model_dtype != torch.float32 and retries < 12:
            self.loss_scale = self.loss_scale / 16.0 if not finite else self.loss_scale * 256.0
            return False
        what = "not finite" if not finite else "zero"
        raise GradientVanished(
            f"every gradient of iteration {it + 1}{self._where()} was {what} with a "
            f"{str(self.model_dtype).replace('torch.', '')} model (loss scale {self.loss_scale:g}): the protection "
            "would do nothing. Load the model in bfloat16 or float32, or check that the chosen layers depend on the "
            "image"
        )

    def gradient(self, x, params, perturbation, m, config, tensors, it):
        """This run's objective, terms and gradient on ``tensors`` (unscaled), with half-precision retries."""
        retries = 0
        while True:
            total, values = self.forward(x, params, perturbation, m, config, it)
            if total.requires_grad:
                grads = torch.autograd.grad(total * self.loss_scale, tensors, allow_unused=True)
            else:  # nothing the loss reads depends on the photo
                grads = (None,) * len(tensors)
            total = total.detach()
            if self.usable(grads, it, retries):
                break
            retries += 1
            del total, values, grads
        return total, values, [None if g_ is None else g_ / self.loss_scale for g_ in grads]

    def record(self, it: int, total: Tensor, values: dict[str, Tensor]) -> dict[str, float]:
        row = {"step": it + 1, "loss": float(total.detach())}
        row.update({n: float(values[n].detach()) for n in self.names})
        self.history.append(row)
        return row

    def release(self) -> None:
        self.t_img = self.clean_x0 = self.tgt_cond = self.clean_cond = self.x_work = None
        self.states = {}


def _weighted_sum(acc: list | None, grads: Sequence[Tensor | None], weight: float) -> list:
    """``acc + weight * grads`` per tensor (None counts as zero); the first call returns ``weight * grads``."""
    scaled = list(grads) if weight == 1.0 else [None if g_ is None else g_ * weight for g_ in grads]
    if acc is None:
        return scaled
    return [a if g_ is None else (g_ if a is None else a + g_) for a, g_ in zip(acc, scaled)]


def _unit_peak(grads: Sequence[Tensor | None]) -> list:
    """``grads`` divided by their largest absolute entry (an ensemble's ``balance``); unchanged when all zero."""
    peak = max([float(g_.abs().max()) for g_ in grads if g_ is not None] or [0.0])
    return list(grads) if peak == 0 else [None if g_ is None else g_ / peak for g_ in grads]


def _member_runs(surrogate, losses, x: Tensor, target: Tensor | None, seed: int):
    """(runs, notes, ensemble or None): one run of weight 1 for a surrogate, one per active ensemble member."""
    b, _, h, w = x.shape
    if not isinstance(surrogate, Ensemble):
        if losses is None:
            raise ValueError("losses: give the objective (an Objective, a loss term or a list of terms)")
        objective = _as_objective(losses)
        if not len(objective):
            raise ValueError("losses: the objective has no loss terms")
        objective = resolve_objective(objective, surrogate)  # "auto" layers -> the model's recommended ones
        return [_MemberRun(surrogate, objective, 1.0, None, target, b, (h, w), seed)], [], None
    if losses is not None:
        raise ValueError("losses: an Ensemble carries one objective per member (Member(surrogate, objective, "
                         "weight)); pass losses=None")
    runs, notes = [], []
    for label, member in zip(surrogate.labels, surrogate.members):
        if member.weight == 0:
            notes.append(f"ensemble member {label!r} has weight 0 and is left out")
            continue
        if member.objective is None:
            with surrogate.active(member.surrogate):
                objective = member.surrogate.default_objective()
        else:
            objective = _as_objective(member.objective)
        if not len(objective):
            raise ValueError(f"ensemble member {label!r}: the objective has no loss terms")
        objective = resolve_objective(objective, member.surrogate)
        notes += [f"{label}: {n}" for n in objective.notes]
        if all(float(t.weight) == 0.0 for t in objective.terms):
            notes.append(f"ensemble member {label!r}: every loss weight is 0, the member is left out")
            continue
        tgt = member.target if member.target is not None else target
        try:
            runs.append(_MemberRun(member.surrogate, objective, member.weight, label, tgt, b, (h, w), seed))
        except ValueError as exc:
            raise type(exc)(f"ensemble member {label!r} ({member.surrogate.family}): {exc}") from None
    return runs, notes, surrogate


def protect(
    image: Tensor,
    surrogate: Surrogate,
    losses: Objective | LossTerm | Sequence[LossTerm] | None = None,
    perturbation: DSPConfig | None = None,
    config: ProtectConfig | None = None,
    *,
    target: Tensor | None = None,
    mask: Tensor | None = None,
    callback: Callable[[Progress], bool | None] | None = None,
    cache_conditioning: bool = True,
    low_vram: "lowvram.LowVram | bool | None" = None,
) -> ProtectResult:
    """Protect ``image`` against ``surrogate`` by minimising ``losses`` over a Dual-Space Perturbation.

    Args:
        image: (B, 3, H, W) or (3, H, W) in [0, 1], any size; RGBA loses alpha, grey is repeated.
        surrogate: an I2V surrogate adapter (weights are used, never changed), or an
            :class:`~anti_i2v.surrogates.ensemble.Ensemble` of several (each member with its own objective and
            weight; the weighted sum of their objectives is minimised, members run one after another).
        losses: the objective: an :class:`Objective`, one term or a list of terms (None with an ensemble). Layer
            fields set to ``"auto"`` take the surrogate's recommended layers
            (:func:`anti_i2v.losses.resolve_objective`); the report's ``settings.losses`` and ``settings.notes`` list
            the resolved layers.
        perturbation: perturbation settings (space, budget, DCT block, channels, split, L* restore).
        config: loop settings (steps, step size, schedule, optimiser, seed).
        target: (1 or B, 3, h, w) unrelated target image for IRA / encoder terms; a fixed pattern if None.
        mask: optional (H, W), (1|B, H, W) or (1|B, 1, H, W) weights in [0, 1] at the photo's size: where the
            perturbation may go (e.g. the face); 0 leaves pixels exactly as they are.
        callback: called after every iteration with :class:`Progress`; return ``False`` to stop early
            (the result is marked cancelled) or raise to abort.
        cache_conditioning: encode the target's conditioning once per run (True) or every iteration (the
            naive variant, kept for the speed benchmark; same result).
        low_vram: ``True`` or a :class:`~anti_i2v.lowvram.LowVram`: fewer frames, gradient checkpointing,
            unused modules offloaded (and, opt-in, fp8 weights) for this run (see :mod:`anti_i2v.lowvram`);
            ``None`` follows the surrogate's ``low_vram`` attribute (set by the CLI's ``--low-vram`` and the loader
            node). The report's ``settings["low_vram"]`` states the frames and settings used.

    Returns:
        :class:`ProtectResult` with the protected images at the input's size, on CPU.

    Raises:
        GradientVanished: every gradient of an iteration was zero or not finite even after loss rescaling.
    """
    perturbation = perturbation or DSPConfig()
    config = config or ProtectConfig()
    x = check_image(image, "image")
    b, _, h, w = x.shape
    runs, ens_notes, ens = _member_runs(surrogate, losses, x, target, config.seed)
    active = ens.active if ens is not None else (lambda s: contextlib.nullcontext())
    device = ens.device if ens is not None else surrogate.device
    start = time.perf_counter()

    x = x.detach().to(device=device, dtype=torch.float32).clone()
    m = dsp_mod.check_mask(mask, x)

    params = dsp_mod.init_params(x, config=perturbation)
    tensors = params.tensors()
    for p in tensors:
        p.requires_grad_(True)
    adam = torch.optim.Adam(tensors, lr=config.step_at(0)) if config.optimizer == "adam" else None
    history: list[dict[str, float]] = []
    cancelled = False
    if ens is None:
        (run,) = runs
        settings = {
            "perturbation": perturbation.to_dict(),
            "loop": asdict(config),
            "losses": run.objective.describe(),
            "surrogate": surrogate.describe(),
            "image_size": [h, w],
            "batch": b,
            "working_size": list(run.work),
        }
        inert = inert_reason(run.objective, config)
        notes = list(run.objective.notes)
    else:
        settings = {
            "perturbation": perturbation.to_dict(),
            "loop": asdict(config),
            "losses": {r.label: r.objective.describe() for r in runs},
            "surrogate": ens.describe(),
            "image_size": [h, w],
            "batch": b,
            "working_size": {r.label: list(r.work) for r in runs},
        }
        inert = "0 steps: nothing is optimised, the photo is returned unchanged" if config.steps == 0 else (
            None if runs else "no ensemble member can move the image (weights or loss weights 0): the photo is "
                              "returned unchanged")
        notes = list(ens_notes)
    settings.update({
        "budget_convention": "eps in 1/255 of the [0,1] pixel range (eps=8 equals 16/255 in [-1,1])",
        "noisy_latent": "one z_t per iteration from the clean photo's latent, shared by target and adversarial pass",
        "mask": None if mask is None else "given",
        "method": (runs[0].objective.method_name() if ens is None else
                   {r.label: r.objective.method_name() for r in runs}),
        "space": perturbation.space,
    })
    settings["notes"] = notes + ([inert] if inert else [])
    run_steps = 0 if inert else config.steps
    if config.random_start and run_steps and runs:  # drawn first from the (first) run's seeded generator
        _random_start(params, perturbation, runs[0].gen)
    modules = ens.modules() if ens is not None else surrogate.modules()
    lv_runs = []
    for run in runs:
        lv = low_vram if low_vram is not None else getattr(run.surrogate, "low_vram", None)
        lv = lowvram.LowVram() if lv is True else (lv or None)
        if lv is not None and ens is not None:  # members move between devices per turn: reduce, never offload
            if lv.fp8:
                settings["notes"].append(f"{run.label}: fp8 weights are not applied in an ensemble (members change "
                                         "devices per turn)")
            lv = replace(lv, offload_unused=False, fp8=False)
        if lv is not None:
            lv_runs.append((run, lv))
    settings["low_vram"] = None

    stack = contextlib.ExitStack()  # the low-VRAM settings, undone when the loop ends however it ends
    try:
        plans = {}
        for run, lv in lv_runs:
            plans[run.label] = plan = stack.enter_context(lowvram.applied(run.surrogate, run.objective, lv))
            settings["notes"].append(plan.note if run.label is None else f"{run.label}: {plan.note}")
        # the pixel frames of the video each denoiser saw (Wan: compare with WanImageToVideo's length)
        settings["frames_attacked"] = (int(runs[0].surrogate.num_frames) if ens is None else
                                       {r.label: int(r.surrogate.num_frames) for r in runs})
        if plans:  # the report states the frames and settings actually used
            if ens is None:
                settings["low_vram"] = plans[None].describe()
                settings["surrogate"] = surrogate.describe()
            else:
                settings["low_vram"] = {label: plan.describe() for label, plan in plans.items()}
                settings["surrogate"] = ens.describe()
        with stack, torch.inference_mode(False), torch.enable_grad(), frozen_models(modules):
            for run in runs:
                with active(run.surrogate):
                    run.prepare(x, cache_conditioning, run_steps)
            it = 0
            while it < run_steps:
                grads = None
                total = 0.0
                member_losses: dict[str, float] = {}
                if ens is None or ens.sequential:
                    for run in runs:
                        with active(run.surrogate):
                            r_total, values, r_grads = run.gradient(x, params, perturbation, m, config, tensors, it)
                        if ens is not None and ens.balance:
                            r_grads = _unit_peak(r_grads)
                        grads = _weighted_sum(grads, r_grads, run.weight)
                        total = total + run.weight * r_total
                        row = run.record(it, r_total, values)
                        member_losses[run.label] = row["loss"]
                        del r_grads, values
                else:  # all members' graphs at once, one backward (the reference variant)
                    joint, pending = 0.0, []
                    for run in runs:
                        with active(run.surrogate):
                            r_total, values = run.forward(x, params, perturbation, m, config, it)
                        joint = joint + run.weight * r_total
                        pending.append((run, r_total.detach(), values))
                    scale = min(r.loss_scale for r in runs)  # one scale for the sum; no per-member retries here
                    grads = (torch.autograd.grad(joint * scale, tensors, allow_unused=True) if torch.is_tensor(joint)
                             and joint.requires_grad else (None,) * len(tensors))
                    present = [g_ for g_ in grads if g_ is not None]
                    if not (present and all(bool(torch.isfinite(g_).all()) for g_ in present)
                            and any(bool((g_ != 0).any()) for g_ in present)):
                        raise GradientVanished(f"every gradient of iteration {it + 1} of the ensemble was zero or "
                                               f"not finite (all-at-once variant, loss scale {scale:g})")
                    grads = [None if g_ is None else g_ / scale for g_ in grads]
                    for run, r_total, values in pending:
                        total = total + run.weight * r_total
                        member_losses[run.label] = run.record(it, r_total, values)["loss"]
                    del joint, pending
                lr = config.step_at(it)
                with torch.no_grad():
                    if adam is not None:
                        for g_, p in zip(grads, tensors):
                            p.grad = torch.zeros_like(p) if g_ is None else g_
                        for group in adam.param_groups:
                            group["lr"] = lr
                        adam.step()
                        for p in tensors:
                            p.grad = None
                    else:
                        dsp_mod.step_params(params, grads, lr, perturbation, rule=config.optimizer)
                    dsp_mod.project_params(params, perturbation)
                if ens is None:
                    row = dict(runs[0].history[-1])
                    terms = {n: row[n] for n in runs[0].names}
                else:
                    row = {"step": it + 1, "loss": float(total), **member_losses}
                    terms = dict(member_losses)
                history.append(row)
                del total, grads
                it += 1
                if callback is not None:
                    info = Progress(it, config.steps, row["loss"], terms, time.perf_counter() - start)
                    if callback(info) is False:
                        cancelled = True
                        break
            for run in runs:
                run.release()
            with torch.no_grad():
                protected = dsp_mod.apply_dsp(x, params.detached(), perturbation, m)
                if perturbation.restore_luminance and perturbation.space != "rgb" and len(history):
                    protected = dsp_mod.restore_luminance(protected, x, perturbation)
                    if m is not None:
                        protected = x + (protected - x) * m
                if config.quantize and len(history):
                    protected = dsp_mod.quantize_8bit(protected, x, perturbation.eps01)
    except BaseException:
        stack.close()
        for run in runs:
            run.release()
        params = tensors = adam = None  # noqa: F841 - drop references before freeing
        _free_memory(device)
        raise

    if ens is None:
        settings["loss_scale"] = runs[0].loss_scale
    else:
        settings["loss_scale"] = {r.label: r.loss_scale for r in runs}
    protected = protected.detach().float().cpu()
    x_cpu = x.cpu()
    q = image_quality(protected, x_cpu)
    result = ProtectResult(
        protected=protected,
        perturbation=protected - x_cpu,
        history=history,
        linf=q["linf_255"],
        psnr=q["psnr_db"],
        ssim=q["ssim"],
        cancelled=cancelled,
        settings=settings,
        seconds=time.perf_counter() - start,
        quality=q,
    )
    if ens is not None:
        result.members = [{
            "label": r.label,
            "family": r.surrogate.family,
            "weight": r.weight,
            "objective": r.objective.describe(),
            "working_size": list(r.work),
            "loss_scale": r.loss_scale,
            "loss_history": r.history,
        } for r in runs]
    del params, tensors, adam, x
    _free_memory(device)
    return result
