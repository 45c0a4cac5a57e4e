"""What every defense shares: the :class:`Method` record (paper defaults), :func:`run_method`, helpers.

A method is an objective (a sum of :mod:`anti_i2v.losses` terms, some defined in the method's own module) plus the
perturbation space and loop settings its paper used. Every method runs through the one loop,
:func:`anti_i2v.protect.protect`, in either perturbation space: ``"rgb"`` (plain per-pixel L-inf PGD, what the
baselines use in their papers) or ``"dsp"`` (Anti-I2V's Dual-Space Perturbation). Each method's default space is
its paper's.

Budget convention: ``eps`` and ``step_size`` are in 1/255 of the [0, 1] pixel range. Papers whose code works on
images in [-1, 1] state twice the number for the same change (Mist's and Diff-Protect's code convert their
"16/255" to [-1, 1] themselves, so 16 here; PhotoGuard's ``eps=0.06`` on [-1, 1] images is 0.03 of the pixel
range, 7.65 here); each method's docstring states its conversion.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from ..dsp import DSPConfig
from ..losses import Objective
from ..protect import OPTIMIZERS, SCHEDULES, ProtectConfig, ProtectResult, protect
from ..surrogates.base import NoiseDraw, Surrogate

__all__ = ["Method", "run_method", "predict_x0", "LOOP_OPTIONS", "PROTECT_OPTIONS"]

#: run_method keyword options that go to the loop settings (:class:`ProtectConfig`)
LOOP_OPTIONS = ("optimizer", "schedule", "robust_jpeg", "quantize", "random_start")
#: run_method keyword options that go to :func:`protect` itself
PROTECT_OPTIONS = ("mask", "cache_conditioning")


@dataclass(frozen=True)
class Method:
    """One defense with its paper's defaults.

    Attributes:
        name: identifier (``anti_i2v.methods.METHOD_NAMES``).
        title: human-readable name.
        paper: citation.
        space: default perturbation space (``"dsp"`` for Anti-I2V, ``"rgb"`` for the baselines).
        eps: default L-inf budget in 1/255 of the [0, 1] range.
        steps: default iterations.
        step_size: default step in 1/255.
        optimizer: default step rule (``sign`` = L-inf PGD; ``normalized`` = Anti-I2V's default).
        schedule: default step-size schedule.
        random_start: start from a random point of the budget (the baselines' PGD code does).
        defaults: where the defaults come from and any conversion (for the report and the README).
    """

    name: str
    title: str
    paper: str
    space: str
    eps: float
    steps: int
    step_size: float
    optimizer: str
    schedule: str = "constant"
    defaults: str = ""
    random_start: bool = False

    def build(self, surrogate: Surrogate, **options) -> Objective:
        """The method's objective terms for ``surrogate`` (overridden by every method)."""
        raise NotImplementedError

    def objective(self, surrogate: Surrogate, **options) -> Objective:
        """The method's objective for ``surrogate``, tagged with the method's name (reports show it).

        ``options`` are the method's own knobs (see each method's docstring); an unknown one raises ValueError.
        """
        obj = self.build(surrogate, **options)
        return Objective(obj.terms, obj.notes, self.name)

    def perturbation(self, *, space: str | None = None, eps: float | None = None) -> DSPConfig:
        """The perturbation settings: the paper's space and budget unless overridden."""
        return DSPConfig(eps=float(self.eps if eps is None else eps), space=self.space if space is None else space)

    def config(self, **overrides) -> ProtectConfig:
        """The loop settings with the paper's steps, step size, step rule and schedule; ``overrides`` win."""
        base = {"steps": self.steps, "step_size": self.step_size, "optimizer": self.optimizer,
                "schedule": self.schedule, "random_start": self.random_start}
        base.update({k: v for k, v in overrides.items() if v is not None})
        return ProtectConfig(**base)

    def describe(self) -> dict:
        """The record as a JSON-friendly dict."""
        return dataclasses.asdict(self)


def _unknown(method: str, options: dict, allowed: tuple[str, ...]) -> None:
    bad = sorted(set(options) - set(allowed))
    if bad:
        raise ValueError(f"{method}: unknown option(s) {bad}; allowed: {', '.join(allowed) or 'none'}")


def run_method(
    name: str,
    image: Tensor,
    surrogate: Surrogate,
    *,
    space: str | None = None,
    eps: float | None = None,
    steps: int | None = None,
    step_size: float | None = None,
    seed: int = 0,
    target: Tensor | None = None,
    callback: Callable | None = None,
    **options,
) -> ProtectResult:
    """Protect ``image`` with the defense ``name`` at its paper's defaults (any of them can be overridden).

    Args:
        name: one of ``METHOD_NAMES``.
        image: (B, 3, H, W) or (3, H, W) in [0, 1].
        surrogate: the I2V surrogate.
        space: ``"dsp"`` or ``"rgb"`` (or the DSP's ``"ab"`` / ``"dct"``); the paper's when None.
        eps, steps, step_size: budget (1/255), iterations, step (1/255); the paper's when None.
        seed: seed of the timesteps and noise.
        target: target image (PhotoGuard, Mist, VGMShield directed, I2VGuard, Anti-I2V's IRA); the pack's fixed
            pattern when None.
        callback: per-iteration callback (see :func:`~anti_i2v.protect.protect`); return False to stop.
        **options: loop options (``optimizer``, ``schedule``, ``robust_jpeg``, ``quantize``), protect options
            (``mask``, ``cache_conditioning``) or the method's own options (see its docstring).

    Returns:
        :class:`~anti_i2v.protect.ProtectResult` whose ``settings`` carry ``method``, ``space`` and the method's
        record (``method_defaults``).
    """
    from . import get_method

    method = get_method(name)
    loop = {k: options.pop(k) for k in LOOP_OPTIONS if k in options}
    extra = {k: options.pop(k) for k in PROTECT_OPTIONS if k in options}
    if "optimizer" in loop and loop["optimizer"] not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {loop['optimizer']!r}")
    if "schedule" in loop and loop["schedule"] not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {loop['schedule']!r}")
    objective = method.objective(surrogate, **options)
    perturbation = method.perturbation(space=space, eps=eps)
    config = method.config(steps=steps, step_size=step_size, seed=int(seed), **loop)
    result = protect(image, surrogate, objective, perturbation, config, target=target, callback=callback, **extra)
    result.settings["method"] = method.name
    result.settings["space"] = perturbation.space
    result.settings["method_defaults"] = method.describe()
    return result


def _affine_coefficients(surrogate: Surrogate, fn, x0: Tensor, draw: NoiseDraw) -> tuple[Tensor, Tensor]:
    """(a, b) with ``fn(x0, noise) = a * x0 + b * noise`` for the forward-process maps of a surrogate."""
    zero = torch.zeros_like(x0)
    one = torch.ones_like(x0)
    a = fn(one, NoiseDraw(draw.timestep, zero, draw.extra))
    b = fn(zero, NoiseDraw(draw.timestep, one, draw.extra))
    return a, b


def predict_x0(surrogate: Surrogate, noisy: Tensor, prediction: Tensor, draw: NoiseDraw) -> Tensor:
    """The denoiser's estimate of the clean video latent ``x0`` from its prediction, for any family.

    Every family's forward process and training target are affine in ``(x0, noise)``:
    ``z_t = c x0 + d eps`` (:meth:`Surrogate.noisy_latent`) and ``target = a x0 + b eps``
    (:meth:`Surrogate.prediction_target`; v, epsilon, flow velocity or x0). Solving the two for ``x0`` with the
    prediction in place of the target gives ``x0_hat = (d * pred - b * z_t) / (a d - b c)`` (e.g. SVD's EDM
    ``c_skip z + c_out v``; CogVideoX's ``sqrt(abar) z - sqrt(1 - abar) v``; Wan's ``z - sigma v``).
    """
    with torch.no_grad():
        c, d = _affine_coefficients(surrogate, surrogate.noisy_latent, noisy.detach().float(), draw)
        a, b = _affine_coefficients(surrogate, surrogate.prediction_target, noisy.detach().float(), draw)
        det = a * d - b * c
    return (d * prediction.float() - b * noisy.float()) / det
