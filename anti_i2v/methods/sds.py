"""SDS (Xue, Liang, Wu, Chen, "Toward effective protection against diffusion-based mimicry through score
distillation", ICLR 2024).

The semantic loss of AdvDM/Mist, ``L_S(x) = E_{t,eps} ||eps_theta(z_t, t) - eps||^2`` with ``z_t`` from the
protected image's own latent ``z = E(x)``, has the gradient
``E[2 (eps_theta - eps) (d eps_theta / d z_t) (d z_t / d x)]``. Score distillation (their Eq. 6, after Poole et al.'s
SDS) drops the denoiser's Jacobian: ``grad_x L_SDS = E[w(t) (eps_theta(z_t, t) - eps) d z_t / d x]``. The
denoiser then runs **without a graph** (:attr:`FeatureRequest.jacobian_free`): no activations kept, no backward
through it; the gradient flows only through the VAE encoder. That is why SDS is much cheaper per step.

Here the residual is taken in the family's own training target (epsilon, v, flow velocity): for v- and flow-
prediction the residual is the epsilon residual times a factor of ``t`` (``alpha_t`` for v, ``1 - sigma`` for
flow), which is a weighting ``w(t)`` as the SDS derivation allows. The loss value reported is the denoising loss
itself; its gradient is the SDS one (``value = L + <stopgrad(2 r / N), z_t> - stopgrad(...)``).

Variants (their "SDS(+)" and "SDS(-)"): ``"+"`` maximises the semantic loss (as AdvDM), ``"-"`` minimises it, which
the paper found more effective; ``"-"`` is the default (Diff-Protect ``base.yaml``: ``g_mode: "-"``).

Defaults: RGB L-inf PGD, signed steps, eps 16/255 of [0, 1], 100 iterations, step 1/255 (Diff-Protect
``base.yaml``: ``epsilon: 16, steps: 100, alpha: 1``, converted to [-1, 1] in code), random start as the other
baselines.

Options: ``mode``: ``"-"`` (default) or ``"+"``.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ..losses import LossTerm, Objective, _check_weight
from ..surrogates.base import FeatureRequest, Features
from .base import Method, _unknown

__all__ = ["SDS", "SDSLoss", "METHOD", "SDS_MODES"]

SDS_MODES = ("-", "+")


@dataclass(frozen=True)
class SDSLoss(LossTerm):
    """The score-distillation term: value = denoising loss (``-`` mode) or its negative (``+``), with the
    Jacobian-free SDS gradient."""

    mode: str = "-"
    weight: float = 1.0
    name: str = "sds"

    def __post_init__(self) -> None:
        if self.mode not in SDS_MODES:
            raise ValueError(f"SDS mode must be '-' (minimise the semantic loss) or '+' (maximise it), got {self.mode!r}")
        object.__setattr__(self, "weight", _check_weight(self.weight))

    def request(self) -> FeatureRequest:
        return FeatureRequest(need_output=True, own_latent=True, jacobian_free=True)

    def value(self, adv: Features, target: Features | None) -> Tensor:
        if adv.output is None or adv.target is None or adv.noisy is None:
            raise ValueError("SDSLoss needs the denoiser's prediction on the protected image's own z_t")
        residual = (adv.output.float() - adv.target.float()).detach()
        loss = residual.pow(2).mean()
        noisy = adv.noisy.float()
        linear = (residual * noisy).sum() * (2.0 / residual.numel())
        sds = loss + linear - linear.detach()  # value: the denoising loss; gradient: 2 r / N through z_t only
        return sds if self.mode == "-" else -sds

    def describe(self) -> dict:
        return {"name": self.name, "weight": self.weight, "mode": self.mode}


@dataclass(frozen=True)
class SDS(Method):
    def build(self, surrogate, **options) -> Objective:
        _unknown(self.name, options, ("mode",))
        return Objective((SDSLoss(mode=options.get("mode", "-")),))


METHOD = SDS(
    name="sds", title="SDS(-)", paper="Xue, Liang, Wu, Chen. Toward effective protection against diffusion-based "
    "mimicry through score distillation. ICLR 2024", space="rgb", eps=16.0, steps=100, step_size=1.0,
    optimizer="sign", random_start=True,
    defaults="Diff-Protect base.yaml: epsilon 16, steps 100, alpha 1 (1/255 of [0,1]), g_mode '-'; signed PGD",
)
