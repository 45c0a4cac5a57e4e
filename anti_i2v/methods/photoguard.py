"""PhotoGuard's encoder attack (Salman, Khaddaj, Leclerc, Ilyas, Madry, "Raising the Cost of Malicious AI-Powered
Image Editing", ICML 2023, Sec. 3.1 / Eq. 1).

Objective: ``min_delta ||E(x + delta) - z_targ||`` with ``z_targ = E(x_targ)``: the VAE latent of the protected
photo is pulled to a target image's latent (:class:`anti_i2v.losses.EncoderLoss`, mean squared distance; with
signed steps the scale of the loss does not change the step). The target: the pack's fixed stripe pattern unless
you give one (PhotoGuard used a chosen target image).

Defaults: RGB L-inf PGD with signed steps; their code's ``eps=0.06``, ``step_size=0.02`` on images in [-1, 1] are
0.03 and 0.01 of the [0, 1] range: eps 7.65/255, step 2.55/255 here; 1000 iterations; their step size decays
linearly over the iterations (to 1/100 of it): here the ``linear`` schedule (to 10 %), a deviation. Random start
in the ball, as their ``pgd``.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..losses import EncoderLoss, Objective
from .base import Method, _unknown

__all__ = ["PhotoGuard", "METHOD"]


@dataclass(frozen=True)
class PhotoGuard(Method):
    def build(self, surrogate, **options) -> Objective:
        _unknown(self.name, options, ())
        return Objective((EncoderLoss(),))


METHOD = PhotoGuard(
    name="photoguard", title="PhotoGuard (encoder)", paper="Salman, Khaddaj, Leclerc, Ilyas, Madry. Raising the "
    "Cost of Malicious AI-Powered Image Editing. ICML 2023", space="rgb", eps=7.65, steps=1000, step_size=2.55,
    optimizer="sign", schedule="linear", random_start=True,
    defaults="encoder attack code: eps 0.06, step 0.02 on [-1,1] images (= 7.65/255 and 2.55/255 of [0,1]), "
             "1000 iterations, linearly decaying step; signed PGD",
)
