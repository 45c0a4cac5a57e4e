"""VGMShield's prevention (Pang, Wang, Shen, Backes, Zhang, "VGMShield: Mitigating Misuse of Video Generative
Models", arXiv 2402.13126, 2024, Sec. 6).

An I2V model sees the photo through two encoders: the image encoder (CLIP) and the VAE encoder. VGMShield perturbs
the photo so that both embeddings become misleading:

* **undirected**: push them away from the clean photo's, ``min -(||C(x') - C(x)||^2 + ||E(x') - E(x)||^2)``;
* **directed**: pull them to a target image's, ``min ||C(x') - C(x_t)||^2 + ||E(x') - E(x_t)||^2``.

``C`` is the family's image encoder as the denoiser sees it: SVD's CLIP ``image_embeds`` (one token), Wan 2.1's
CLIP ``hidden_states[-2]`` tokens. **CogVideoX has no image encoder** (the photo enters only through the VAE): there
the CLIP term is left out and the objective says so in its notes. Distances are means over elements.

Defaults: RGB L-inf PGD with signed steps and a random start (the undirected loss has a zero gradient at the
clean photo), eps 16/255 of [0, 1], 200 iterations, step 1/255. The paper's own attack
budget and iteration count could not be checked offline when this was written: these are the budget and
iterations of the Anti-I2V paper's comparison, where VGMShield is a baseline. Options: ``mode``
(``"undirected"``, default, or ``"directed"``), ``encoders`` (``"both"``, default, ``"image"`` or ``"vae"``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..losses import LossTerm, Objective, _check_weight, _msq
from ..surrogates.base import FeatureRequest, Features
from .base import Method, _unknown

__all__ = ["VGMShield", "VGMShieldLoss", "METHOD", "has_image_encoder"]

MODES = ("undirected", "directed")
ENCODERS = ("both", "image", "vae")


def has_image_encoder(surrogate) -> bool:
    """Whether the surrogate feeds the denoiser an image-encoder embedding (SVD, Wan 2.1; not CogVideoX)."""
    return getattr(surrogate, "image_encoder", None) is not None or getattr(surrogate, "clip_vision", None) is not None


@dataclass(frozen=True)
class VGMShieldLoss(LossTerm):
    """VGMShield's encoder term (see the module docstring)."""

    mode: str = "undirected"
    encoders: str = "both"
    weight: float = 1.0
    name: str = "vgmshield"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"VGMShield mode must be one of {MODES}, got {self.mode!r}")
        if self.encoders not in ENCODERS:
            raise ValueError(f"VGMShield encoders must be one of {ENCODERS}, got {self.encoders!r}")
        object.__setattr__(self, "weight", _check_weight(self.weight))

    def _req(self) -> FeatureRequest:
        return FeatureRequest(image_embed=self.encoders in ("both", "image"),
                              need_latent=self.encoders in ("both", "vae"))

    def request(self) -> FeatureRequest:
        return self._req()

    def target_request(self) -> FeatureRequest:
        return self._req() if self.mode == "directed" else FeatureRequest()

    def clean_request(self) -> FeatureRequest:
        return self._req() if self.mode == "undirected" else FeatureRequest()

    def value(self, adv: Features, target: Features | None) -> Tensor:
        return self.evaluate_term(adv, target, None, None)

    def evaluate_term(self, adv: Features, target: Features | None, clean: Features | None, state) -> Tensor:
        ref = clean if self.mode == "undirected" else target
        if ref is None:
            raise ValueError(f"VGMShieldLoss ({self.mode}) needs the "
                             f"{'clean photo' if self.mode == 'undirected' else 'target'} pass")
        parts = []
        if self.encoders in ("both", "image") and adv.image_embed is not None and ref.image_embed is not None:
            parts.append(_msq(adv.image_embed, ref.image_embed))
        if self.encoders in ("both", "vae"):
            parts.append(_msq(adv.latent, ref.latent))
        if not parts:
            raise ValueError("VGMShieldLoss: this surrogate has no image encoder; use encoders='vae' or 'both'")
        total = torch.stack(parts).sum()
        return -total if self.mode == "undirected" else total

    def describe(self) -> dict:
        return {"name": self.name, "weight": self.weight, "mode": self.mode, "encoders": self.encoders}


@dataclass(frozen=True)
class VGMShield(Method):
    def build(self, surrogate, **options) -> Objective:
        _unknown(self.name, options, ("mode", "encoders"))
        term = VGMShieldLoss(mode=options.get("mode", "undirected"), encoders=options.get("encoders", "both"))
        notes = ()
        if term.encoders in ("both", "image") and not has_image_encoder(surrogate):
            if term.encoders == "image":
                raise ValueError(f"vgmshield: the {surrogate.family} surrogate has no image encoder; "
                                 "use encoders='vae' or 'both'")
            notes = (f"VGMShield: the {surrogate.family} surrogate has no image encoder (the photo enters only "
                     "through the VAE): only the VAE-encoder term is used",)
        return Objective((term,), notes)


METHOD = VGMShield(
    name="vgmshield", title="VGMShield", paper="Pang, Wang, Shen, Backes, Zhang. VGMShield: Mitigating Misuse of "
    "Video Generative Models. arXiv:2402.13126, 2024", space="rgb", eps=16.0, steps=200, step_size=1.0,
    optimizer="sign", random_start=True,
    defaults="not checked against the paper offline: the Anti-I2V comparison's budget (16/255 of [0,1], 200 "
             "iterations), step 1/255; undirected, both encoders; signed PGD",
)
