"""Plain data that travels between the pack's nodes (no ComfyUI import here)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from anti_i2v.losses import LossTerm, Objective

__all__ = ["LossChain", "EnsembleSpec"]


@dataclass(frozen=True)
class LossChain:
    """What an ``ANTI_I2V_LOSS`` socket carries: the objective built so far and the target image.

    Attributes:
        objective: the sum of the loss terms chained so far (:class:`anti_i2v.losses.Objective`).
        target: the unrelated target image for IRA / PhotoGuard terms as a ComfyUI IMAGE (B, H, W, C) in
            [0, 1], or None for the library's default target pattern.
    """

    objective: Objective
    target: torch.Tensor | None = None
    #: the paper's loop settings of the defense this chain came from (Defense Method node), or None
    loop: dict | None = None

    def extend(self, term: "LossTerm | Objective", target: torch.Tensor | None = None,
               loop: dict | None = None) -> "LossChain":
        """A new chain with ``term`` (or a whole objective) appended; ``target`` (when given) replaces the chain's
        target; ``loop`` the chain's paper loop settings."""
        return LossChain(self.objective + term, self.target if target is None else target,
                         loop if loop is not None else self.loop)

    @staticmethod
    def start(term: "LossTerm | Objective", target: torch.Tensor | None = None,
              loop: dict | None = None) -> "LossChain":
        """A chain holding only ``term`` (or a whole objective)."""
        obj = term if isinstance(term, Objective) else Objective((term,))
        return LossChain(obj, target, loop)


@dataclass(frozen=True)
class EnsembleSpec:
    """What the Ensemble Surrogate node puts in an ``ANTI_I2V_SURROGATE`` socket: its members, in order.

    Attributes:
        members: ``(surrogate, weight, loss chain or None)`` per connected member; the protect node turns them into
            an :class:`anti_i2v.surrogates.ensemble.Ensemble` (a member without a chain takes the protect node's
            losses).
        balance: scale each member's gradient to a peak of 1 before the weighted sum.
        offload: unload each member's models after its turn in every iteration (one member's weights on the device
            at a time).
    """

    members: tuple
    balance: bool = False
    offload: bool = True

    @property
    def surrogates(self) -> list:
        return [m[0] for m in self.members]
