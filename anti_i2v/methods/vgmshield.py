"""VGMShield's prevention (Pang, Wang, Shen, Backes, Zhang, "VGMShield: Mitigating Misuse of Video Generative
Models", arXiv 2402.13126, 2024, Sec. 6).

An I2V model sees the photo through two encoders: the image encoder (CLIP) and the VAE encoder. VGMShield perturbs
the photo so that both embeddings become misleading, with cosine distances ``d(a, b) = 1 - cos(a, b)`` of the
flattened embeddings, as the authors' released code (``misuse_prevention.py`` of their repository) computes them:

* **directed** (their code's default): pull them to a target image's, ``min d(C(x'), C(x_t)) + d(E(x'), E(x_t))``;
* **undirected**: push them away from the clean photo's, ``max d(C(x'), C(x)) + d(E(x'), E(x))``.

``C`` is the family's image encoder as the denoiser sees it: SVD's CLIP ``image_embeds`` (one token), Wan 2.1's
CLIP ``hidden_states[-2]`` tokens; ``E`` the VAE latent of the photo. **CogVideoX has no image encoder** (the photo
enters only through the VAE): there the CLIP term is left out and the objective says so in its notes.

Defaults, from the authors' code (SVD, images in [-1, 1]): ``eps = 4/255`` and step ``1/255`` on [-1, 1], i.e.
**2/255 and 0.5/255 of [0, 1]** here, **1000** signed-gradient iterations. Deviations: their loss adds
``LPIPS(x', x)`` (VGG weights that no registry ships; the L-inf budget bounds the change instead), and their VAE
branch encodes ``x' + N(0, 0.02)`` (SVD's conditioning augmentation), a fresh draw per step, which also moves the
undirected loss off its zero gradient at the clean photo; here the VAE input is the photo itself and the loop
starts from a seeded random point of the budget instead. Options: ``mode`` (``"directed"``, default, or
``"undirected"``), ``encoders`` (``"both"``, default, ``"image"`` or ``"vae"``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..losses import LossTerm, Objective, _check_weight
from ..surrogates.base import FeatureRequest, Features
from .base import Method, _unknown

__all__ = ["VGMShield", "VGMShieldLoss", "METHOD", "has_image_encoder"]

MODES = ("undirected", "directed")
ENCODERS = ("both", "image", "vae")


def has_image_encoder(surrogate) -> bool:
    """Whether the surrogate feeds the denoiser an image-encoder embedding (SVD, Wan 2.1; not CogVideoX)."""
    return getattr(surrogate, "image_encoder", None) is not None or getattr(surrogate, "clip_vision", None) is not None


def cosine_distance(a: Tensor, b: Tensor) -> Tensor:
    """``1 - cos(a, b)`` of each image's flattened embedding (float32), averaged over the batch."""
    a = a.float().flatten(1)
    b = b.float().flatten(1).expand_as(a)
    return (1.0 - torch.nn.functional.cosine_similarity(a, b, dim=1)).mean()


@dataclass(frozen=True)
class VGMShieldLoss(LossTerm):
    """VGMShield's encoder term (see the module docstring)."""

    mode: str = "directed"
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
            parts.append(cosine_distance(adv.image_embed, ref.image_embed))
        if self.encoders in ("both", "vae"):
            parts.append(cosine_distance(adv.latent, ref.latent))
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
        term = VGMShieldLoss(mode=options.get("mode", "directed"), encoders=options.get("encoders", "both"))
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
    "Video Generative Models. arXiv:2402.13126, 2024", space="rgb", eps=2.0, steps=1000, step_size=0.5,
    optimizer="sign", random_start=True,
    defaults="the authors' released code (misuse_prevention.py): eps 4/255 and step 1/255 on [-1,1] images = 2 and "
             "0.5 of [0,1], 1000 signed steps, directed, cosine distances of both encoders; LPIPS term and the VAE "
             "input's N(0,0.02) augmentation left out (random start instead)",
)
