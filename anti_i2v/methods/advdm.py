"""AdvDM (Liang et al., "Adversarial Example Does Good: Preventing Painting Imitation from Diffusion Models via
Adversarial Examples", ICML 2023).

Objective (their Eq. 4-5): maximise the diffusion model's training loss on the protected image,
``E_{t, eps} ||eps_theta(z_t(x'), t) - eps||^2`` with ``z_t`` built from the protected image's own latent (one
Monte-Carlo draw of ``t`` and ``eps`` per step). :class:`anti_i2v.losses.DiffusionLoss` is that loss, negated
(minimised), in each family's own training target (epsilon, v, or flow velocity). Jacobian of the denoiser included
(the SDS variant in :mod:`.sds` drops it).

Defaults: plain RGB L-inf PGD with signed steps, eps 16/255 of the [0, 1] range, 100 iterations, step 1/255 — the
defaults of the reference implementation by AdvDM's and Mist's authors as used for the AdvDM row of Xue et al.
(Diff-Protect ``configs/attack/base.yaml``: ``epsilon: 16, steps: 100, alpha: 1``, converted to [-1, 1] in code).
Like that code (advertorch ``LinfPGDAttack``, ``rand_init``), PGD starts from a uniform random point of the ball
(drawn from the run's seed).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..losses import DiffusionLoss, Objective
from .base import Method, _unknown

__all__ = ["AdvDM", "METHOD"]


@dataclass(frozen=True)
class AdvDM(Method):
    def build(self, surrogate, **options) -> Objective:
        _unknown(self.name, options, ())
        return Objective((DiffusionLoss(),))


METHOD = AdvDM(
    name="advdm", title="AdvDM", paper="Liang, Wu, Hua, Zhang, Xue, Song, Xue, Ma, Guan. Adversarial Example Does "
    "Good: Preventing Painting Imitation from Diffusion Models via Adversarial Examples. ICML 2023",
    space="rgb", eps=16.0, steps=100, step_size=1.0, optimizer="sign", random_start=True,
    defaults="reference code (Mist / Diff-Protect): epsilon 16, steps 100, alpha 1 in 1/255 of [0,1]; signed PGD",
)
