"""I2VGuard (Gui et al., "I2VGuard: Safeguarding Images against Misuse in Diffusion-based Image-to-Video Models",
CVPR 2025).

Three attacks on an I2V model and one combined loss (minimised):

* **spatial** (:class:`I2VGuardSpatialLoss`): the VAE latent of the protected photo pulled to a target image's
  latent, ``||E(x') - E(x_t)||^2``;
* **temporal** (:class:`I2VGuardTemporalLoss`): the temporal self-attention maps of the denoiser for the protected
  photo pushed away from those of the clean photo under the same ``z_t`` and ``t``,
  ``-sum_l ||A_l(x') - A_l(x)||^2``. The maps are the attention probabilities, read by swapping each module's
  attention computation for one that keeps them (:mod:`anti_i2v.surrogates.attention`: diffusers attention
  processors, or the attention slot of our own and of the native shadows' modules), not forward hooks. Where they
  are read (:meth:`~anti_i2v.surrogates.base.Surrogate.temporal_attention_modules`): SVD (diffusers and native
  ComfyUI), every ``temporal_transformer_blocks[k].attn1`` / ``time_stack[k].attn1``; DynamiCrafter, both
  self-attentions of every LVDM temporal transformer; Open-Sora 1.2, every STDiT3 temporal block.
  **CogVideoX, Wan 2.1/2.2, LTX-Video and HunyuanVideo have no temporal self-attention**: their blocks run full 3D
  attention over all video (and text) tokens; the term is left out there and the objective's notes say so (the
  full maps are N^2 over 17,550 tokens at 49 frames for CogVideoX, and a frame-to-frame slice of them is not what
  I2VGuard defines);
* **diffusion** (:class:`I2VGuardDiffusionLoss`): a contrastive loss on the denoiser's estimate of the clean video
  latent ``x0_hat`` (from its prediction, :func:`~anti_i2v.methods.base.predict_x0`): towards the target video's
  latent and away from the latent of the clean generation, ``||x0_hat - z_tgt||^2 - ||x0_hat - z_gen||^2``. The
  clean generation is made **once per photo** before the first iteration (the surrogate's ``generate_latent``,
  ``generation_steps`` sampler steps, seeded: the diffusers pipeline with ``output_type="latent"`` for CogVideoX,
  Wan 2.1 and SVD, our DDIM / RFLOW samplers for DynamiCrafter / Open-Sora, ComfyUI's own sampler for the native
  adapters); a surrogate that cannot generate uses the clean photo's still video, and the notes say so. The target
  video is the target image's still video;
* **image distance** (:class:`ImageDistanceLoss`): ``||x' - x||^2`` at the working size, keeping the change small.

Combined: ``L = l_s L_spatial + l_t L_temporal + l_d L_diffusion + l_i L_image`` with weights 1, 1, 1, 1 by default.

Defaults: RGB L-inf PGD with signed steps, eps 16/255 of [0, 1], 200 iterations, step 1/255. The paper's own
weights, budget and iteration count, and the exact form of its contrastive loss, could not be checked offline when
this was written: the weights are 1, the budget and iterations those of the Anti-I2V comparison, and the contrastive
loss is the difference of distances above (stated in every report through this docstring's record).

Options: ``spatial``, ``temporal``, ``diffusion``, ``image`` (weights; 0 leaves a term out), ``generation_steps``
(sampler steps of the clean generation, default 3).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..losses import EncoderLoss, LossTerm, Objective, _check_weight, _msq
from ..surrogates.base import FeatureRequest, Features
from .base import Method, _unknown, predict_x0

__all__ = ["I2VGuard", "I2VGuardSpatialLoss", "I2VGuardTemporalLoss", "I2VGuardDiffusionLoss", "ImageDistanceLoss",
           "METHOD"]


@dataclass(frozen=True)
class I2VGuardSpatialLoss(EncoderLoss):
    """Spatial attack: mean ``||E(x') - E(x_t)||^2`` on the VAE latent (the encoder attack of
    :class:`~anti_i2v.losses.EncoderLoss`, under I2VGuard's name)."""

    weight: float = 1.0
    name: str = "i2vguard_spatial"


@dataclass(frozen=True)
class I2VGuardTemporalLoss(LossTerm):
    """Temporal attack: minus the summed mean squared difference of the temporal self-attention maps between the
    protected and the clean photo (same z_t, same t)."""

    weight: float = 1.0
    name: str = "i2vguard_temporal"

    def __post_init__(self) -> None:
        object.__setattr__(self, "weight", _check_weight(self.weight))

    def request(self) -> FeatureRequest:
        return FeatureRequest(attention=True)

    def clean_request(self) -> FeatureRequest:
        return FeatureRequest(attention=True)

    def value(self, adv: Features, target: Features | None) -> Tensor:
        raise ValueError("I2VGuardTemporalLoss needs the clean photo's pass")

    def evaluate_term(self, adv: Features, target: Features | None, clean: Features | None, state) -> Tensor:
        if clean is None or not clean.attention:
            raise ValueError("I2VGuardTemporalLoss needs the clean photo's attention maps")
        if set(adv.attention) != set(clean.attention):
            raise ValueError("I2VGuardTemporalLoss: the two passes captured different attention modules")
        return -torch.stack([_msq(adv.attention[k], clean.attention[k]) for k in sorted(adv.attention)]).sum()


@dataclass(frozen=True)
class I2VGuardDiffusionLoss(LossTerm):
    """Diffusion attack: ``||x0_hat - z_tgt||^2 - ||x0_hat - z_gen||^2`` (means), ``x0_hat`` from the denoiser's
    prediction on the shared z_t."""

    weight: float = 1.0
    generation_steps: int = 3
    name: str = "i2vguard_diffusion"

    def __post_init__(self) -> None:
        object.__setattr__(self, "weight", _check_weight(self.weight))
        if int(self.generation_steps) < 1:
            raise ValueError(f"generation_steps must be >= 1, got {self.generation_steps}")

    def request(self) -> FeatureRequest:
        return FeatureRequest(need_output=True)

    def target_request(self) -> FeatureRequest:
        return FeatureRequest(need_latent=True)

    def prepare(self, surrogate, *, photo: Tensor, target: Tensor | None):
        if target is None:
            raise ValueError("I2VGuardDiffusionLoss needs a target image")
        z_tgt = surrogate.clean_latent(surrogate.encode(target)).float()
        if getattr(surrogate, "generates_latents", False):
            z_gen = torch.cat([surrogate.generate_latent(photo[i:i + 1], num_inference_steps=int(self.generation_steps),
                                                         seed=i).float() for i in range(photo.shape[0])])
            source = "generated"
        else:
            z_gen = surrogate.clean_latent(surrogate.encode(photo)).float()
            source = "still video (the surrogate cannot generate a latent video)"
        if z_gen.shape != z_tgt.shape:
            raise ValueError(f"I2VGuardDiffusionLoss: the clean generation's latent {tuple(z_gen.shape)} does not match "
                             f"the video latent {tuple(z_tgt.shape)}")
        return {"surrogate": surrogate, "target": z_tgt.detach(), "negative": z_gen.detach(), "source": source}

    def value(self, adv: Features, target: Features | None) -> Tensor:
        raise ValueError("I2VGuardDiffusionLoss needs its per-run state (target and clean generation)")

    def evaluate_term(self, adv: Features, target: Features | None, clean: Features | None, state) -> Tensor:
        if state is None or adv.output is None or adv.noisy is None or adv.draw is None:
            raise ValueError("I2VGuardDiffusionLoss needs the denoiser's prediction and its per-run state")
        x0 = predict_x0(state["surrogate"], adv.noisy, adv.output, adv.draw)
        return _msq(x0, state["target"].expand_as(x0)) - _msq(x0, state["negative"].expand_as(x0))


@dataclass(frozen=True)
class ImageDistanceLoss(LossTerm):
    """Mean ``||x' - x||^2`` between the protected and the clean photo at the working size."""

    weight: float = 1.0
    name: str = "image_distance"

    def __post_init__(self) -> None:
        object.__setattr__(self, "weight", _check_weight(self.weight))

    def request(self) -> FeatureRequest:
        return FeatureRequest()

    def prepare(self, surrogate, *, photo: Tensor, target: Tensor | None):
        return {"photo": photo.detach()}

    def value(self, adv: Features, target: Features | None) -> Tensor:
        raise ValueError("ImageDistanceLoss needs the clean photo (per-run state)")

    def evaluate_term(self, adv: Features, target: Features | None, clean: Features | None, state) -> Tensor:
        if state is None or adv.image is None:
            raise ValueError("ImageDistanceLoss needs the protected image and the clean photo")
        return _msq(adv.image, state["photo"])


@dataclass(frozen=True)
class I2VGuard(Method):
    def build(self, surrogate, **options) -> Objective:
        _unknown(self.name, options, ("spatial", "temporal", "diffusion", "image", "generation_steps"))
        w = {k: float(options.get(k, 1.0)) for k in ("spatial", "temporal", "diffusion", "image")}
        terms: list[LossTerm] = []
        notes: list[str] = []
        if w["spatial"]:
            terms.append(I2VGuardSpatialLoss(weight=w["spatial"]))
        if w["temporal"]:
            if surrogate.temporal_attention_modules():
                terms.append(I2VGuardTemporalLoss(weight=w["temporal"]))
            else:
                notes.append(f"I2VGuard temporal attack left out: the {surrogate.family} surrogate has no temporal "
                             "self-attention to read (full 3D attention over all tokens)")
        if w["diffusion"]:
            terms.append(I2VGuardDiffusionLoss(weight=w["diffusion"],
                                               generation_steps=int(options.get("generation_steps", 3))))
            if not getattr(surrogate, "generates_latents", False):
                notes.append(f"I2VGuard diffusion attack: the {surrogate.family} surrogate cannot generate a latent "
                             "video; the clean photo's still video stands in for the clean generation")
        if w["image"]:
            terms.append(ImageDistanceLoss(weight=w["image"]))
        if not terms:
            raise ValueError("i2vguard: every term has weight 0")
        return Objective(tuple(terms), tuple(notes))


METHOD = I2VGuard(
    name="i2vguard", title="I2VGuard", paper="Gui et al. I2VGuard: Safeguarding Images against Misuse in "
    "Diffusion-based Image-to-Video Models. CVPR 2025", space="rgb", eps=16.0, steps=200, step_size=1.0,
    optimizer="sign", random_start=True,
    defaults="not checked against the paper offline: weights 1/1/1/1, the Anti-I2V comparison's budget (16/255 of "
             "[0,1], 200 iterations), step 1/255; contrastive loss as a difference of distances; signed PGD",
)
