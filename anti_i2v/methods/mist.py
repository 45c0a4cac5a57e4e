"""Mist (Liang & Wu, "Mist: Towards Improved Adversarial Examples for Diffusion Models", arXiv 2305.12683, 2023).

Objective: the fused loss of Mist's ``mode 2``: minimise ``L_T - w * L_S`` where

* ``L_S`` is AdvDM's semantic loss (the diffusion training loss on the protected image's own z_t, maximised;
  :class:`~anti_i2v.losses.DiffusionLoss`, a mean over elements as the latent diffusion model's loss is), and
* ``L_T`` is the textural loss: the squared L2 distance, **summed** over latent elements (``MSELoss(reduction=
  "sum")`` in the reference code), between the VAE latent of the protected image and that of a target image
  (Mist ships a patterned ``MIST.png``; the pack's fixed stripe pattern by default, or the ``target`` you give);
* ``w`` = 1e4 (``rate``: the fusion weight of Mist's fused mode; "higher rate refers to more emphasis on the
  semantic loss").

Defaults: RGB L-inf PGD with signed steps, eps 16/255 of [0, 1] (Mist's "strength 16"; its code converts to
[-1, 1] itself), 100 iterations, step 1/255, random start (advertorch's ``rand_init``).

Options: ``rate`` (default 1e4); ``mode``: ``"fused"`` (default), ``"semantic"`` (AdvDM alone) or
``"textural"`` (the encoder term alone).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ..losses import DiffusionLoss, EncoderLoss, Objective
from ..surrogates.base import Features
from .base import Method, _unknown

__all__ = ["Mist", "MistTexturalLoss", "METHOD"]


@dataclass(frozen=True)
class MistTexturalLoss(EncoderLoss):
    """Mist's textural loss: ``sum ||E(x_adv) - E(x_target)||^2`` over the latent's elements (per image); the
    passes are PhotoGuard's encoder attack's (:class:`~anti_i2v.losses.EncoderLoss`), the reduction a sum."""

    weight: float = 1.0
    name: str = "mist_textural"

    def value(self, adv: Features, target: Features | None) -> Tensor:
        super().value(adv, target)  # checks the passes
        diff = adv.latent.float() - target.latent.float()
        return diff.pow(2).sum() / diff.shape[0]


@dataclass(frozen=True)
class Mist(Method):
    def build(self, surrogate, **options) -> Objective:
        _unknown(self.name, options, ("rate", "mode"))
        rate = float(options.get("rate", 1e4))
        mode = options.get("mode", "fused")
        if mode == "fused":
            return Objective((MistTexturalLoss(), DiffusionLoss(weight=rate, name="mist_semantic")))
        if mode == "semantic":
            return Objective((DiffusionLoss(name="mist_semantic"),))
        if mode == "textural":
            return Objective((MistTexturalLoss(),))
        raise ValueError(f"mist: mode must be 'fused', 'semantic' or 'textural', got {mode!r}")


METHOD = Mist(
    name="mist", title="Mist", paper="Liang, Wu. Mist: Towards Improved Adversarial Examples for Diffusion Models. "
    "arXiv:2305.12683, 2023", space="rgb", eps=16.0, steps=100, step_size=1.0, optimizer="sign", random_start=True,
    defaults="Mist code: strength 16, 100 steps, alpha 1 (1/255 of [0,1], converted to [-1,1] in code); fused mode "
             "L_T (sum) - 1e4 * L_S; signed PGD",
)
