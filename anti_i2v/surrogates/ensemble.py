"""Ensemble surrogates: protect one photo against several I2V families in one loop.

An :class:`Ensemble` is a list of :class:`Member` s, each an I2V surrogate with its own objective (the family's
layer choice: IRA / IRC on its own blocks) and a weight. :func:`anti_i2v.protect.protect` accepts it in place of a
single surrogate and minimises the weighted sum of the members' objectives over one Dual-Space Perturbation:

    L(delta) = sum_k w_k * L_k(R_k(x + delta))

where ``R_k`` resizes the protected photo to member ``k``'s working size (each family keeps its own: CogVideoX its
native 480 x 720, SVD and Wan the photo's aspect). Ensembles of surrogates are the usual way to make adversarial
perturbations transfer to models that were not attacked (Liu et al., "Delving into Transferable Adversarial
Examples and Black-box Attacks", ICLR 2017: a weighted sum of the members' losses); Anti-I2V itself attacks one
model at a time, so this is an extension of the paper, not part of it.

Every member keeps what the single-surrogate loop gives it: its own clean latent ``x0`` (encoded once per run),
its target conditioning (cached once per run), one shared ``z_t`` per iteration for its target and adversarial
passes, its early exit, its half-precision loss scale and vanished-gradient check, and its own noise generator
seeded with the run's seed (so member ``k`` draws exactly the timesteps and noise it would draw alone).

**Balance.** Members' losses live on different scales (feature sizes and magnitudes differ between families), so
with plain weights the member with the largest gradient steers the step. ``balance=True`` scales each member's
gradient to a peak of 1 (its largest absolute entry over the perturbation's parameters) before the weighted sum:
each member's weight is then its share of the step, whatever its loss scale (the pack's default step rule scales
the summed gradient to its peak afterwards, as for one surrogate). Off by default: the plain weighted sum is the
objective's true gradient.

**Memory.** By default (``sequential=True``) the members run one after another in every iteration and each one's
backward runs right after its forward (gradients accumulated on the perturbation's parameters, the activation
graph freed before the next member starts), so the loop's activation memory is that of the largest member, not the
sum. ``sequential=False`` builds every member's graph and runs one backward on the weighted sum: the same gradient
(up to float summation order), all graphs alive at once; it is kept as the reference for tests and benchmarks.
Model weights are not moved by the library: ``activate`` is a context-manager factory entered around each member's
work (the ComfyUI nodes pass one that asks ComfyUI's model management to load that member's models, which offloads
the others when the device lacks room). Cancel callbacks run after each iteration, as in the single loop;
``activate`` may also raise between members (the nodes check ComfyUI's interrupt flag there).

Same seed, same result: the members run in their listed order and each draws from its own generator.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Sequence

import torch

from .base import Surrogate

__all__ = ["Member", "Ensemble", "parse_weights"]


@dataclass(frozen=True)
class Member:
    """One member of an :class:`Ensemble`.

    Args:
        surrogate: the member's I2V surrogate (weights are used, never changed).
        objective: its objective: an :class:`~anti_i2v.losses.Objective`, one term or a list of terms; None takes
            the family's default (:meth:`Surrogate.default_objective`: the paper's layer choice mapped onto its depth).
        weight: multiplier ``w_k`` of the member's objective in the sum (>= 0; 0 leaves the member out, with a note).
        label: name of the member in reports and progress (default: the family, ``svd_2`` for a second SVD).
        target: an unrelated target image for this member's IRA / PhotoGuard terms; None uses the run's target.
    """

    surrogate: Surrogate
    objective: Any = None
    weight: float = 1.0
    label: str | None = None
    target: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.surrogate, Surrogate):
            raise TypeError(f"Member.surrogate must be a Surrogate, got {type(self.surrogate).__name__}")
        try:
            w = float(self.weight)
        except (TypeError, ValueError):
            raise ValueError(f"ensemble weight must be a number, got {self.weight!r}") from None
        if not math.isfinite(w) or w < 0:
            raise ValueError(f"ensemble weight must be a finite number >= 0, got {self.weight}")
        object.__setattr__(self, "weight", w)


class Ensemble:
    """Several surrogates attacked in one loop (see the module docstring).

    Args:
        members: the members, in the order they run each iteration (at least one).
        sequential: backward per member (peak activation memory of the largest member; default) or one backward of
            the weighted sum (all graphs at once; the reference variant).
        activate: optional ``callable(surrogate) -> context manager`` entered around each member's work (model
            loading / offloading); None does nothing.
        device: where the photo and the perturbation live; None: the first member's device.
        balance: scale each member's gradient to a peak of 1 before the weighted sum (see the module docstring;
            sequential only).

    Example:
        >>> ens = Ensemble([Member(cogvideox), Member(svd, weight=0.5)])       # doctest: +SKIP
        >>> protect(photo, ens, perturbation=DSPConfig(), config=ProtectConfig())  # doctest: +SKIP
    """

    family = "ensemble"

    def __init__(
        self,
        members: Sequence[Member | Surrogate],
        *,
        sequential: bool = True,
        activate: Callable[[Surrogate], ContextManager] | None = None,
        device: str | torch.device | None = None,
        balance: bool = False,
    ) -> None:
        ms = [m if isinstance(m, Member) else Member(m) for m in members]
        if not ms:
            raise ValueError("an ensemble needs at least one member")
        if all(m.weight == 0 for m in ms):
            raise ValueError("every ensemble weight is 0: give at least one member a weight > 0")
        self.members: tuple[Member, ...] = tuple(ms)
        self.sequential = bool(sequential)
        self.balance = bool(balance)
        if self.balance and not self.sequential:
            raise ValueError("balance=True needs each member's own gradient: use it with sequential=True")
        self.activate = activate
        self._device = None if device is None else torch.device(device)
        labels: list[str] = []
        counts: dict[str, int] = {}
        for m in ms:
            base = m.label or m.surrogate.family
            counts[base] = counts.get(base, 0) + 1
            labels.append(base if counts[base] == 1 else f"{base}_{counts[base]}")
        if len(set(labels)) != len(labels):
            raise ValueError(f"ensemble member labels must be unique, got {labels}")
        self.labels: tuple[str, ...] = tuple(labels)

    def __len__(self) -> int:
        return len(self.members)

    @property
    def device(self) -> torch.device:
        if self._device is not None:
            return self._device
        with self.active(self.members[0].surrogate):
            return self.members[0].surrogate.device

    @device.setter
    def device(self, value: str | torch.device | None) -> None:
        self._device = None if value is None else torch.device(value)

    def active(self, surrogate: Surrogate) -> ContextManager:
        """The ``activate`` context for ``surrogate`` (a no-op without one)."""
        return self.activate(surrogate) if self.activate is not None else contextlib.nullcontext()

    def modules(self) -> list[torch.nn.Module]:
        """Every model of every member (for freezing and invariants)."""
        return [mod for m in self.members for mod in m.surrogate.modules()]

    def describe(self) -> dict:
        """A JSON-friendly summary for reports."""
        return {
            "family": self.family,
            "sequential": self.sequential,
            "balance": self.balance,
            "members": [
                {"label": lab, "family": m.surrogate.family, "weight": m.weight, "surrogate": m.surrogate.describe()}
                for lab, m in zip(self.labels, self.members)
            ],
        }


def parse_weights(text: str | Sequence[float], count: int, *, name: str = "weights") -> tuple[float, ...]:
    """Ensemble weights typed as text (``"1,0.5"``): ``count`` finite numbers >= 0, not all 0.

    An empty text gives ``count`` ones. Raises ValueError naming ``name`` and what is allowed.
    """
    if isinstance(text, str):
        parts = [p.strip() for p in text.split(",") if p.strip()]
        if not parts:
            return (1.0,) * count
        try:
            vals = [float(p) for p in parts]
        except ValueError:
            raise ValueError(f"{name}: cannot read {text!r}; write one number per member, e.g. '1,0.5'") from None
    else:
        vals = [float(v) for v in text]
    if len(vals) != count:
        raise ValueError(f"{name}: {len(vals)} weight(s) for {count} ensemble member(s); give one per member")
    for v in vals:
        if not math.isfinite(v) or v < 0:
            raise ValueError(f"{name}: weights must be finite numbers >= 0, got {v}")
    if all(v == 0 for v in vals):
        raise ValueError(f"{name}: every weight is 0; give at least one member a weight > 0")
    return tuple(vals)
