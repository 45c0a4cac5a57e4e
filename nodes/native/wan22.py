"""Native Wan 2.2 surrogates: A14B I2V with both experts (high noise and low noise) in one protect run, and
TI2V-5B (:class:`NativeWan22TI2VSurrogate`, first latent frame replaced, per-frame timestep; at the end).

Wan 2.2 A14B I2V is a mixture of two 14B experts with the Wan 2.1 I2V layout minus the CLIP image embedding
(``comfy.model_base.WAN21``, 36 input channels = 16 noise + 4 mask + 16 image latent, no ``img_emb``): the
*high-noise* expert denoises the early, noisy part of the trajectory and the *low-noise* expert the rest. Both
see the image exactly as Wan 2.1 does, through ``WanImageToVideo`` (``concat_latent_image`` + ``concat_mask``);
the Wan 2.1 VAE is shared. In ComfyUI's Wan 2.2 graphs each expert is a UNETLoader (+ ModelSamplingSD3, shift
8) feeding one ``KSamplerAdvanced``; the first samples steps ``0 .. s`` with the high-noise model, the second
``s .. end`` with the low-noise one. The switch is where the noise level crosses Wan 2.2's boundary (I2V:
``boundary_ratio`` 0.9 of the 1000 training timesteps, i.e. flow sigma 0.9; the templates' 10 of 20 steps at
shift 8 switch at sigma 0.889).

The surrogate protects against both experts in one run: every iteration's noise draw (:meth:`sample_noise`)
draws ``percent ~ U(0.02, 0.98)`` of the model's own schedule as the other native surrogates do; the expert is
the one whose part of the schedule that percent falls in (the high-noise expert owns ``sigma >= boundary``), so
it is picked with the probability of its share of the sampled noise range. The features of that iteration (both the
perturbed and the target pass, which share the draw) come from that expert; block indices address the same
block in either expert (both have 40 blocks). So over a run the objective averages IRA/IRC over both experts in
proportion to their share of the trajectory. Layer PCA maps and any draw whose sigma is fixed by hand use the
expert that sigma belongs to.

Everything else (shadows, binding, text, the still-video x0, the WanImageToVideo conditioning) is
:class:`~.wan21.NativeWan21Surrogate`'s; only the model that is bound and hooked changes per draw. Memory: one
expert is loaded per iteration through ComfyUI's model management (``load_models_gpu`` of the active expert and
the VAE), so both experts need not fit on the GPU together.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Sequence

import torch
from torch import Tensor, nn

from anti_i2v.surrogates.base import NoiseDraw, SurrogateError

from .base import _Shadow, _text_conditioning
from .first_frame import FirstFrameSurrogate
from .wan21 import NativeWan21Surrogate, wan_blocks, wan_vae_encoder_layers

__all__ = ["NativeWan22MoESurrogate", "NativeWan22TI2VSurrogate", "WAN22_I2V_BOUNDARY"]

#: Wan 2.2 A14B I2V's expert switch as a flow sigma (``boundary_ratio`` 0.900 of its 1000 training timesteps)
WAN22_I2V_BOUNDARY = 0.9
_LO, _HI = 0.02, 0.98  # the sampled percent range of NativeSurrogate.sample_noise


def _percent_at(ms: Any, sigma: float) -> float:
    """The sampling percent at which ``ms.percent_to_sigma`` falls to ``sigma`` (bisection; it decreases)."""
    lo, hi = 0.0, 1.0
    for _ in range(48):
        mid = 0.5 * (lo + hi)
        if float(ms.percent_to_sigma(mid)) >= sigma:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


class NativeWan22MoESurrogate(NativeWan21Surrogate):
    """Wan 2.2 A14B I2V: ``model`` is the high-noise expert, ``model_low`` the low-noise one.

    Args (besides :class:`~.wan21.NativeWan21Surrogate`'s):
        model_low: the ComfyUI ``MODEL`` of the low-noise expert (same layout as ``model``).
        boundary: the flow sigma at which the user's graph switches experts (default
            :data:`WAN22_I2V_BOUNDARY`); draws with ``sigma >= boundary`` go to the high-noise expert.
    """

    family = "wan22-native"

    def __init__(self, *, model_low: Any, boundary: float = WAN22_I2V_BOUNDARY, **kwargs) -> None:
        if kwargs.get("clip_vision") is not None:
            raise ValueError("clip_vision: Wan 2.2 A14B has no image-embedding layer (img_emb); disconnect the "
                             "CLIP vision model (the image enters through the VAE latent only)")
        super().__init__(**kwargs)
        if not 0.0 < float(boundary) < 1.0:
            raise ValueError(f"boundary must be a flow sigma in (0, 1), got {boundary}")
        high_dm = self.model.model.diffusion_model
        low_dm = getattr(getattr(model_low, "model", None), "diffusion_model", None)
        if low_dm is None or type(model_low.model) is not type(self.model.model):
            raise ValueError(f"model_2: the low-noise expert must be a Wan 2.2 A14B I2V MODEL like 'model', got "
                             f"{type(getattr(model_low, 'model', model_low)).__name__}")
        high_shape, low_shape = (
            (len(dm.blocks), dm.dim, dm.patch_embedding.weight.shape[1]) for dm in (high_dm, low_dm))
        if low_shape != high_shape:
            raise ValueError(f"model_2: the two experts differ (blocks, width, input channels) {high_shape} vs "
                             f"{low_shape}; connect the high- and low-noise models of one Wan 2.2 A14B I2V")
        for name, dm in (("model", high_dm), ("model_2", low_dm)):
            if getattr(dm, "img_emb", None) is not None:
                raise ValueError(f"{name}: this Wan model has a CLIP image embedding (Wan 2.1 I2V); the two-expert "
                                 "surrogate is for Wan 2.2 A14B I2V (high- and low-noise models)")
        self.boundary = float(boundary)
        self.model_high = self.model
        self.model_low = model_low
        self._experts = {"high": (self.model, self._model_shadow), "low": (model_low, _Shadow(model_low.model))}
        self._active = "high"

    # ------------------------------------------------------------- which expert
    def expert_for(self, draw: NoiseDraw) -> str:
        """``"high"`` when the draw's (first) sigma is at or above :attr:`boundary`, else ``"low"``."""
        return "high" if float(draw.timestep.reshape(-1)[0]) >= self.boundary else "low"

    @contextlib.contextmanager
    def using(self, expert: str) -> Iterator[None]:
        """Bind and hook ``expert`` (``"high"`` / ``"low"``) for the block (not re-entrant across experts)."""
        if expert not in self._experts:
            raise SurrogateError(f"expert must be 'high' or 'low', got {expert!r}")
        if self._bound and expert != self._active:
            raise SurrogateError("cannot switch experts while the models are bound")
        prev = self._active
        self._active = expert
        try:
            yield
        finally:
            self._active = prev

    def _shadows(self) -> list[_Shadow]:
        return [s for s in (self._experts[self._active][1], self._vae_shadow) if s is not None]

    def _patchers(self) -> list[Any]:
        return [self._experts[self._active][0], self.vae.patcher]

    @property
    def base_model(self) -> nn.Module:
        return self._experts[self._active][1].root

    def denoiser(self) -> nn.Module:
        return self.base_model.diffusion_model

    def modules(self) -> list[nn.Module]:
        return [self._experts["high"][1].root, self._experts["low"][1].root, self._vae_shadow.root]

    def _transformer_options(self, sigma: Tensor) -> dict:
        to = dict(self._experts[self._active][0].model_options.get("transformer_options", {}))
        to["cond_or_uncond"] = [0]
        to["sigmas"] = sigma
        return to

    def describe(self) -> dict:
        d = super().describe()
        d.update({"experts": ["high", "low"], "boundary": self.boundary, "high_noise_share": self.high_noise_share})
        return d

    # ------------------------------------------------------------- protocol
    @property
    def high_noise_share(self) -> float:
        """Share of the draws that go to the high-noise expert (its part of the sampled percent range)."""
        p_b = _percent_at(self.model_high.model.model_sampling, self.boundary)
        return min(max((p_b - _LO) / (_HI - _LO), 0.0), 1.0)

    def sample_noise(self, batch: int, generator: torch.Generator, *, size=None) -> NoiseDraw:
        """The base class's draw (``percent ~ U(0.02, 0.98)`` per image, then a noise seed; same generator use,
        so a one-image draw equals :class:`~.wan21.NativeWan21Surrogate`'s), with one expert per draw: the one
        whose part of the schedule holds the first image's percent (the high-noise expert with probability
        :attr:`high_noise_share`). Other images of the batch whose percent fell in the other part are mapped
        linearly into this one (still uniform there). Each sigma comes from that expert's ``model_sampling``."""
        if batch < 1:
            raise SurrogateError(f"batch must be >= 1, got {batch}")
        p_b = _LO + self.high_noise_share * (_HI - _LO)
        u = _LO + (_HI - _LO) * torch.rand(batch, generator=generator)
        high = bool(u[0] < p_b)
        if high:  # [p_b, hi] -> [lo, p_b]
            u = torch.where(u < p_b, u, _LO + (u - p_b) * (p_b - _LO) / max(_HI - p_b, 1e-12))
        else:  # [lo, p_b] -> [p_b, hi]
            u = torch.where(u >= p_b, u, p_b + (u - _LO) * (_HI - p_b) / max(p_b - _LO, 1e-12))
        ms = (self.model_high if high else self.model_low).model.model_sampling
        sig = []
        for p in u:
            s = float(ms.percent_to_sigma(float(p)))
            # at the edge the mapping may land a hair across the boundary: keep each sigma on its expert's side
            sig.append(max(s, self.boundary) if high else min(s, self.boundary * (1.0 - 1e-6)))
        seed = torch.randint(0, 2**62, (1,), generator=generator)
        return NoiseDraw(timestep=torch.tensor(sig, dtype=torch.float32), noise=torch.empty(0),
                         extra={"noise_seed": seed})

    def features(self, image, draw, request, *, clean=None, cond=None):
        """:meth:`NativeSurrogate.features` on the expert the draw's sigma belongs to."""
        with self.using(self.expert_for(draw)):
            return super().features(image, draw, request, clean=clean, cond=cond)

    def denoise(self, cond, noisy, draw):
        if self._bound:
            return super().denoise(cond, noisy, draw)
        with self.using(self.expert_for(draw)):
            return super().denoise(cond, noisy, draw)

    def _sample(self, image: Tensor, num_inference_steps: int, seed: int, size: tuple[int, int] | None) -> Tensor:
        """A short video's latent as the user's two-``KSamplerAdvanced`` graph samples it: the high-noise expert
        for the steps whose sigma is at or above :attr:`boundary`, the low-noise expert for the rest (euler,
        ``simple``, cfg 1); call under inference mode."""
        import comfy.sample
        import comfy.samplers

        image = self._generate_image(image, num_inference_steps)
        h, w = size or self.working_size(image.shape[-2], image.shape[-1])
        steps = int(num_inference_steps)
        pixels = image.detach().float().cpu().movedim(1, -1)
        positive, negative, latent, scheduler = self._sampling_inputs(pixels, h, w)
        sigmas = comfy.samplers.calculate_sigmas(self.model_high.get_model_object("model_sampling"), scheduler, steps)
        switch = next((i for i in range(steps) if float(sigmas[i]) < self.boundary), steps)
        noise = comfy.sample.prepare_noise(latent, int(seed))
        samples = latent
        if switch > 0:
            samples = comfy.sample.sample(self.model_high, noise, steps, 1.0, "euler", scheduler, positive,
                                          negative, samples, start_step=0, last_step=switch,
                                          force_full_denoise=switch >= steps, seed=int(seed), disable_pbar=True)
        if switch < steps:
            samples = comfy.sample.sample(self.model_low, noise, steps, 1.0, "euler", scheduler, positive,
                                          negative, samples, disable_noise=switch > 0, start_step=switch,
                                          last_step=steps, force_full_denoise=True, seed=int(seed),
                                          disable_pbar=True)
        return samples


# ---------------------------------------------------------------------------------------------- TI2V-5B
class NativeWan22TI2VSurrogate(FirstFrameSurrogate):
    """Native Wan 2.2 TI2V-5B surrogate: ``Wan22ImageToVideoLatent`` conditioning, ``blocks`` hooks.

    TI2V-5B (``comfy.model_base.WAN22``: 48 latent channels in and out, the Wan 2.2 VAE with 16x spatial and 4x
    temporal compression) takes no image channels: ``Wan22ImageToVideoLatent`` (``comfy_extras/nodes_wan.py``)
    writes the photo's VAE latent into the first latent frame with a ``noise_mask`` that is 0 there, the sampler
    keeps that frame at the clean latent, and ``WAN22.process_timestep`` gives each latent frame the timestep
    ``t * mean(mask)`` (0 for the photo's frame): see :class:`~.first_frame.FirstFrameSurrogate`. Text: umT5-XXL
    (4096 wide); zeros when no ``positive`` is connected.
    """

    family = "wan22-ti2v-native"
    native_area = 704 * 1280
    size_multiple = 32  # VAE 16 x patch 2
    default_size = (704, 1280)
    temporal_factor = 4

    def __init__(self, *, positive: Any = None, **kwargs) -> None:
        if kwargs.get("clip_vision") is not None:
            raise ValueError("clip_vision: Wan 2.2 TI2V-5B takes no CLIP image embedding; disconnect the CLIP vision "
                             "model (the image enters as the first latent frame)")
        super().__init__(positive=positive, **kwargs)
        lat = self.model.model.latent_format.latent_channels
        if getattr(self.vae, "latent_channels", None) != lat:
            raise ValueError(f"vae: the connected VAE has {getattr(self.vae, 'latent_channels', '?')} latent "
                             f"channels but Wan 2.2 TI2V-5B needs {lat}; connect wan2.2_vae.safetensors (VAELoader)")
        width = int(getattr(self.model.model.diffusion_model, "text_dim", 4096))
        self.text_cond, self.text_extra, self.text_source = _text_conditioning(
            positive, width, "the Wan model", "umT5-XXL")

    def denoiser_blocks(self) -> Sequence[tuple[str, nn.Module]]:
        return wan_blocks(self.denoiser())

    def vae_encoder_layers(self) -> Sequence[tuple[str, nn.Module]]:
        return wan_vae_encoder_layers(self._vae_shadow.root.encoder)

    def default_objective(self):
        """The paper's depth ratios on the 30 blocks of TI2V-5B (IRA on block 19 and the last two VAE-encoder
        layers, IRC 2 -> 19); every block outputs the same token grid."""
        return super().default_objective()

    def describe(self) -> dict:
        d = super().describe()
        d["text"] = self.text_source
        return d

    def _sampling_inputs(self, pixels: Tensor, h: int, w: int):
        import comfy.latent_formats
        import comfy.utils

        length = int(self.num_frames)
        latent = torch.zeros([1, 48, (length - 1) // 4 + 1, h // 16, w // 16])
        mask = torch.ones([1, 1, latent.shape[2], latent.shape[-2], latent.shape[-1]])
        start = comfy.utils.common_upscale(pixels[:1].movedim(-1, 1), w, h, "bilinear", "center").movedim(1, -1)
        t = self.vae.encode(start[:, :, :, :3])
        latent[:, :, :t.shape[-3]] = t
        mask[:, :, :t.shape[-3]] *= 0.0
        latent = comfy.latent_formats.Wan22().process_out(latent) * mask + latent * (1.0 - mask)
        positive = [[self.text_cond.clone(), dict(self.text_extra)]]
        negative = [[torch.zeros_like(self.text_cond), {}]]
        return positive, negative, latent, "simple", mask
