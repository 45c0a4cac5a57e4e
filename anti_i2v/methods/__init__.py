"""Published defenses behind one call (a minimal version for the comparison benchmark).

STAND-IN: replaced by the methods package at merge.

This module implements only the contract the benchmark (``bench/compare.py``) codes against, for three methods
that the library already has the losses of: ``anti-i2v`` (IRA + IRC, the surrogate's default objective),
``advdm`` (:class:`~anti_i2v.losses.DiffusionLoss`) and ``photoguard`` (the encoder attack,
:class:`~anti_i2v.losses.EncoderLoss`). The paper settings below are the stand-in's; the methods package that
replaces it carries each paper's own values and the other methods (Mist, SDS, VGMShield, I2VGuard).

API::

    METHOD_NAMES                  # names, in table order
    get_method(name) -> Method    # name, title, paper, space, eps, steps, step_size, optimizer
    run_method(name, image, surrogate, *, space=None, eps=None, steps=None, step_size=None, seed=0,
               target=None, callback=None, **options) -> ProtectResult
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from torch import Tensor

from ..dsp import SPACES, DSPConfig
from ..losses import DiffusionLoss, EncoderLoss, Objective
from ..protect import ProtectConfig, ProtectResult, protect

__all__ = ["METHOD_NAMES", "Method", "get_method", "run_method"]


@dataclass(frozen=True)
class Method:
    """A published defense and the settings it runs with by default.

    Attributes:
        name: the id used everywhere (``anti-i2v``, ``advdm``, ...).
        title: the human-readable name.
        paper: the citation.
        space: the perturbation space the paper uses (``dsp`` or ``rgb``).
        eps: L-inf budget in 1/255 of the [0, 1] range.
        steps: iterations.
        step_size: step per iteration in 1/255.
        optimizer: the loop's step rule (``normalized``, ``sign`` or ``adam``).
    """

    name: str
    title: str
    paper: str
    space: str
    eps: float
    steps: int
    step_size: float
    optimizer: str


_METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("anti-i2v", "Anti-I2V (IRA + IRC)", "Vu et al., Anti-I2V, CVPR 2026", "dsp", 8.0, 200, 1.0,
               "normalized"),
        Method("advdm", "AdvDM", "Liang et al., Adversarial Example Does Good, ICML 2023", "rgb", 8.0, 100, 1.0,
               "sign"),
        Method("photoguard", "PhotoGuard (encoder attack)", "Salman et al., Raising the Cost of Malicious "
               "AI-Powered Image Editing, ICML 2023", "rgb", 8.0, 200, 1.0, "sign"),
    )
}

METHOD_NAMES: tuple[str, ...] = tuple(_METHODS)

_DSP_FIELDS = {f.name for f in dataclasses.fields(DSPConfig)} - {"eps", "space"}
_LOOP_FIELDS = {f.name for f in dataclasses.fields(ProtectConfig)} - {"steps", "step_size", "seed"}


def get_method(name: str) -> Method:
    """The :class:`Method` called ``name``."""
    if name not in _METHODS:
        raise ValueError(f"unknown method {name!r}; choose from {', '.join(METHOD_NAMES)}")
    return _METHODS[name]


def _objective(name: str, surrogate) -> Objective:
    if name == "anti-i2v":
        return surrogate.default_objective()
    if name == "advdm":
        return Objective((DiffusionLoss(),))
    return Objective((EncoderLoss(),))


def run_method(
    name: str,
    image: Tensor,
    surrogate,
    *,
    space: str | None = None,
    eps: float | None = None,
    steps: int | None = None,
    step_size: float | None = None,
    seed: int = 0,
    target: Tensor | None = None,
    callback=None,
    **options,
) -> ProtectResult:
    """Protect ``image`` against ``surrogate`` with method ``name`` (paper settings unless overridden).

    Args:
        name: one of :data:`METHOD_NAMES`.
        image: (B, 3, H, W) or (3, H, W) in [0, 1].
        surrogate: the I2V surrogate.
        space: perturbation space (``anti_i2v.dsp.SPACES``); None: the paper's.
        eps, steps, step_size: None: the paper's.
        seed: seed of the loop.
        target: target image of the terms that need one (a fixed pattern when None).
        callback: the loop's per-iteration callback.
        options: further :class:`~anti_i2v.dsp.DSPConfig` or :class:`~anti_i2v.protect.ProtectConfig` fields
            (e.g. ``optimizer``, ``robust_jpeg``, ``dct_block``).

    Returns:
        The loop's :class:`~anti_i2v.protect.ProtectResult`; its ``settings`` gain ``method`` and ``space``.
    """
    m = get_method(name)
    space = m.space if space is None else space
    if space not in SPACES:
        raise ValueError(f"space must be one of {SPACES}, got {space!r}")
    unknown = sorted(set(options) - _DSP_FIELDS - _LOOP_FIELDS)
    if unknown:
        raise ValueError(f"run_method: unknown options {unknown}; allowed: {sorted(_DSP_FIELDS | _LOOP_FIELDS)}")
    loop = {"optimizer": m.optimizer} | {k: v for k, v in options.items() if k in _LOOP_FIELDS}
    perturbation = DSPConfig(space=space, eps=float(m.eps if eps is None else eps),
                             **{k: v for k, v in options.items() if k in _DSP_FIELDS})
    config = ProtectConfig(steps=int(m.steps if steps is None else steps),
                           step_size=float(m.step_size if step_size is None else step_size), seed=int(seed), **loop)
    result = protect(image, surrogate, _objective(name, surrogate), perturbation, config, target=target,
                     callback=callback)
    result.settings["method"] = name
    result.settings["space"] = space
    return result
