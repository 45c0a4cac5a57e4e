"""Stable Video Diffusion (SVD, U-Net) surrogate adapter.

The image enters SVD in two ways, both rebuilt here exactly as diffusers' ``StableVideoDiffusionPipeline``
(0.42) builds them, but differentiably (no PIL, numpy or ``no_grad``):

* **CLIP image embedding** (one token, cross-attention context): the pipeline's ``_encode_image`` maps the
  [0, 1] image to [-1, 1], resizes it to 224 x 224 with its Gaussian-blur-then-bicubic "antialiased" resize
  (sigma = max((factor - 1) / 2, 0.001), kernel size 2 * 2 * sigma made odd and >= 3, reflect padding, bicubic
  with ``align_corners=True``), maps back to [0, 1], normalises with the CLIP mean/std of the feature extractor
  and takes ``image_embeds`` of ``CLIPVisionModelWithProjection``. See :func:`clip_preprocess`.
* **VAE latent of the noise-augmented image**: ``image * 2 - 1 + noise_aug_strength * n`` with n ~ N(0, I)
  (drawn per iteration and kept in ``NoiseDraw.extra["aug_noise"]``), encoded with the VAE posterior's mode and
  *not* multiplied by the scaling factor, repeated over the frames and concatenated on channels after the
  scaled noisy latent.
* **added_time_ids** = ``[fps - 1, motion_bucket_id, noise_aug_strength]`` (pipeline defaults 7, 127, 0.02).

Diffusion (EDM, v-prediction, ``EulerDiscreteScheduler`` with ``timestep_type="continuous"``):

* the clean video latent x0 is the image latent (VAE mode of the *clean* image, times the scaling factor,
  as the pipeline scales video latents) repeated over the ``num_frames`` latent frames (SVD has no temporal
  compression);
* forward process (``EulerDiscreteScheduler.add_noise``): x = x0 + sigma * eps;
* model input (``scale_model_input``): c_in * x with c_in = 1 / sqrt(sigma^2 + 1);
* timestep fed to the U-Net: 0.25 * ln(sigma), the scheduler's continuous timestep;
* prediction target v = (eps - sigma * x0) / sqrt(sigma^2 + 1): the value of the model output F for which the
  scheduler's denoiser x0_hat = c_skip * x + c_out * F (c_skip = 1 / (sigma^2 + 1), c_out = -sigma / sqrt(sigma^2
  + 1)) returns x0 exactly.

Sigma sampling (``sigma_sampling``): ``"karras"`` (default) draws uniformly among the sigmas the SVD sampler
visits, i.e. the scheduler's Karras schedule of ``sigma_steps`` steps (25, the pipeline's default) between its
``sigma_min`` and ``sigma_max`` (0.002 and 700 for SVD); the timestep is the scheduler's own value for that sigma.
The scheduler's discrete training table (sigmas 0.03-14.6 from the betas) does not cover the range SVD samples
in, so it is not used. ``"lognormal"`` draws EDM's ln(sigma) ~ N(p_mean, p_std^2) (defaults -1.2 and 1.2 from
Karras et al. 2022; set them to the schedule you want to cover).

Blocks: ``unet.down_blocks`` + ``[unet.mid_block]`` + ``unet.up_blocks`` (names ``down_blocks.0``,
``mid_block``, ``up_blocks.2``); outputs are (batch * frames, C, h, w) and differ in shape between levels, so
:meth:`SVDSurrogate.block_shapes_match` runs (and caches) a one-frame shape probe. VAE-encoder layers:
``encoder.down_blocks.*`` then ``encoder.mid_block`` of the VAE's 2-D encoder (the first VAE call of a forward
pass, the clean image, is the one captured).
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import FeatureRequest, Features, NoiseDraw, Surrogate, SurrogateError, encoder_layers, first_tensor

__all__ = ["SVDSurrogate", "clip_preprocess", "antialiased_resize", "OPENAI_CLIP_MEAN", "OPENAI_CLIP_STD"]

#: CLIP normalisation used by SVD's feature extractor (OpenAI CLIP values).
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

#: SVD's scheduler configuration (stable-video-diffusion-img2vid(-xt)/scheduler/scheduler_config.json).
SVD_SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "v_prediction",
    "interpolation_type": "linear",
    "use_karras_sigmas": True,
    "sigma_min": 0.002,
    "sigma_max": 700.0,
    "timestep_spacing": "leading",
    "timestep_type": "continuous",
    "steps_offset": 1,
}

SIGMA_SAMPLINGS = ("karras", "lognormal")
_COMPONENTS = {
    "unet": "UNetSpatioTemporalConditionModel",
    "vae": "AutoencoderKLTemporalDecoder",
    "image_encoder": "CLIPVisionModelWithProjection",
    "scheduler": "EulerDiscreteScheduler",
}


# --------------------------------------------------------------------------- CLIP preprocessing
def _gaussian_kernel(size: int, sigma: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Normalised 1-D Gaussian window of odd ``size`` centred on its middle tap."""
    x = torch.arange(size, dtype=dtype, device=device) - size // 2
    if size % 2 == 0:
        x = x + 0.5
    g = torch.exp(-x.pow(2.0) / (2 * torch.tensor(sigma, dtype=dtype, device=device).pow(2.0)))
    return g / g.sum()


def _depthwise(x: Tensor, kernel: Tensor) -> Tensor:
    """Per-channel 2-D filter with reflect padding (asymmetric for even kernels, as kornia's filter2d)."""
    c = x.shape[1]
    kh, kw = kernel.shape
    ph, pw = kh - 1, kw - 1
    x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2], mode="reflect")
    weight = kernel.to(dtype=x.dtype, device=x.device).expand(c, 1, kh, kw)
    return F.conv2d(x, weight, groups=c)


def antialiased_resize(image: Tensor, size: tuple[int, int]) -> Tensor:
    """The SVD pipeline's ``_resize_with_antialiasing``, differentiable.

    Gaussian blur with sigma = max((factor - 1) / 2, 0.001) per axis (scikit-image's rule) and a kernel of
    int(max(4 * sigma, 3)) taps made odd, then bicubic interpolation with ``align_corners=True``.

    Args:
        image: (B, C, H, W) in any range (the pipeline applies it to [-1, 1]).
        size: (height, width) to resize to.

    Returns:
        (B, C, size[0], size[1]).
    """
    h, w = image.shape[-2:]
    fy, fx = h / size[0], w / size[1]
    sy, sx = max((fy - 1.0) / 2.0, 0.001), max((fx - 1.0) / 2.0, 0.001)
    ky, kx = int(max(4.0 * sy, 3)), int(max(4.0 * sx, 3))
    ky += 1 - ky % 2
    kx += 1 - kx % 2
    gx = _gaussian_kernel(kx, sx, image.dtype, image.device)
    gy = _gaussian_kernel(ky, sy, image.dtype, image.device)
    out = _depthwise(image, gx.view(1, kx))
    out = _depthwise(out, gy.view(ky, 1))
    return F.interpolate(out, size=size, mode="bicubic", align_corners=True)


def clip_preprocess(
    image: Tensor,
    size: int = 224,
    mean: Sequence[float] = OPENAI_CLIP_MEAN,
    std: Sequence[float] = OPENAI_CLIP_STD,
) -> Tensor:
    """The CLIP input SVD's ``_encode_image`` builds from a photo, in torch (differentiable).

    [0, 1] -> [-1, 1] -> :func:`antialiased_resize` to ``size`` x ``size`` -> [0, 1] -> (x - mean) / std.

    Args:
        image: (B, 3, H, W) in [0, 1].
        size: CLIP input side (224 for SVD's ViT-H/14).
        mean: per-channel mean of the feature extractor.
        std: per-channel std of the feature extractor.
    """
    x = image * 2.0 - 1.0
    x = antialiased_resize(x, (size, size))
    x = (x + 1.0) / 2.0
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s


# --------------------------------------------------------------------------- adapter
class SVDSurrogate(Surrogate):
    """Stable Video Diffusion image-to-video as an Anti-I2V surrogate.

    Args:
        unet: ``UNetSpatioTemporalConditionModel``.
        vae: ``AutoencoderKLTemporalDecoder``.
        image_encoder: transformers ``CLIPVisionModelWithProjection``.
        scheduler: ``EulerDiscreteScheduler`` (EDM, v-prediction, continuous timesteps); a default SVD one if None.
        num_frames: pixel frames (= latent frames) of the video; None uses ``unet.config.num_frames``.
            Public and read at every forward.
        dtype: compute dtype of all three models.
        gradient_checkpointing: recompute U-Net blocks in backward.
        early_exit: stop the U-Net after the deepest requested block when no output is needed.
        prompt_embeds: not used (SVD has no text); accepted for a uniform interface and must be None.
        folder: model folder (for reports).
        fps: frame rate micro-condition; the U-Net receives ``fps - 1`` (pipeline default 7).
        motion_bucket_id: motion micro-condition (pipeline default 127).
        noise_aug_strength: conditioning-augmentation noise level (pipeline default 0.02).
        sigma_sampling: ``"karras"`` or ``"lognormal"`` (see the module docstring).
        sigma_steps: steps of the Karras schedule sampled from (``"karras"``).
        p_mean: mean of ln(sigma) (``"lognormal"``).
        p_std: std of ln(sigma) (``"lognormal"``).
        image_mean: CLIP normalisation mean of the feature extractor.
        image_std: CLIP normalisation std of the feature extractor.
        working_size: (height, width) to optimise at; default :attr:`default_size` (SVD's 576 x 1024).
    """

    family = "svd"
    native_size = None
    default_size = (576, 1024)
    size_multiple = 64

    def __init__(
        self,
        *,
        unet: nn.Module,
        vae: nn.Module,
        image_encoder: nn.Module,
        scheduler=None,
        num_frames: int | None = None,
        dtype: torch.dtype = torch.float32,
        gradient_checkpointing: bool = False,
        early_exit: bool = True,
        prompt_embeds=None,
        folder: str | Path | None = None,
        fps: int = 7,
        motion_bucket_id: int = 127,
        noise_aug_strength: float = 0.02,
        sigma_sampling: str = "karras",
        sigma_steps: int = 25,
        p_mean: float = -1.2,
        p_std: float = 1.2,
        image_mean: Sequence[float] = OPENAI_CLIP_MEAN,
        image_std: Sequence[float] = OPENAI_CLIP_STD,
        working_size: tuple[int, int] | None = None,
    ) -> None:
        from diffusers import EulerDiscreteScheduler

        if prompt_embeds is not None:
            raise SurrogateError("prompt_embeds: SVD is conditioned on the image only (no text); pass None")
        if num_frames is None:
            num_frames = int(getattr(unet.config, "num_frames", 14))
        super().__init__(
            num_frames=num_frames,
            dtype=dtype,
            gradient_checkpointing=gradient_checkpointing,
            early_exit=early_exit,
            working_size=working_size,
        )
        if sigma_sampling not in SIGMA_SAMPLINGS:
            raise SurrogateError(f"sigma_sampling must be one of {SIGMA_SAMPLINGS}, got {sigma_sampling!r}")
        if int(sigma_steps) != sigma_steps or sigma_steps < 1:
            raise SurrogateError(f"sigma_steps must be a positive integer, got {sigma_steps}")
        if not (math.isfinite(p_std) and p_std > 0 and math.isfinite(p_mean)):
            raise SurrogateError(f"p_mean must be finite and p_std > 0, got p_mean={p_mean}, p_std={p_std}")
        if not (math.isfinite(noise_aug_strength) and noise_aug_strength >= 0):
            raise SurrogateError(f"noise_aug_strength must be >= 0, got {noise_aug_strength}")
        if len(image_mean) != 3 or len(image_std) != 3 or min(image_std) <= 0:
            raise SurrogateError("image_mean and image_std must hold 3 values each, std > 0")
        if working_size is not None:
            wh, ww = working_size
            if wh % 8 or ww % 8 or wh < 8 or ww < 8:
                raise SurrogateError(f"working_size must be positive multiples of 8 (the VAE factor), got {working_size}")
        self.unet = unet
        self.vae = vae
        self.image_encoder = image_encoder
        if scheduler is None:
            scheduler = EulerDiscreteScheduler(**SVD_SCHEDULER_CONFIG)
        cfg = scheduler.config
        if cfg.prediction_type != "v_prediction" or cfg.timestep_type != "continuous":
            raise SurrogateError(
                "scheduler: SVD needs an EulerDiscreteScheduler with prediction_type='v_prediction' and "
                f"timestep_type='continuous', got {cfg.prediction_type!r} / {cfg.timestep_type!r}"
            )
        self.scheduler = scheduler
        self.folder = None if folder is None else str(folder)
        self.fps = int(fps)
        self.motion_bucket_id = int(motion_bucket_id)
        self.noise_aug_strength = float(noise_aug_strength)
        self.sigma_sampling = sigma_sampling
        self.sigma_steps = int(sigma_steps)
        self.p_mean = float(p_mean)
        self.p_std = float(p_std)
        self.image_mean = tuple(float(v) for v in image_mean)
        self.image_std = tuple(float(v) for v in image_std)
        self.clip_size = int(getattr(image_encoder.config, "image_size", 224))
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        # the sampler's sigmas and the scheduler's timesteps for them (CPU, float32)
        sched = EulerDiscreteScheduler.from_config(scheduler.config)
        sched.set_timesteps(self.sigma_steps)
        self._sigma_table = sched.sigmas[:-1].clone().float()
        self._timestep_table = sched.timesteps.clone().float().cpu()
        self._shape_cache: dict[tuple[int, int], list[torch.Size]] = {}
        for m in self.modules():
            if any(p.dtype != dtype for p in m.parameters()):
                m.to(dtype=dtype)

    # ----------------------------------------------------------------- protocol
    def denoiser(self) -> nn.Module:
        return self.unet

    def denoiser_blocks(self) -> list[tuple[str, nn.Module]]:
        u = self.unet
        blocks = [(f"down_blocks.{i}", b) for i, b in enumerate(u.down_blocks)]
        blocks.append(("mid_block", u.mid_block))
        blocks += [(f"up_blocks.{i}", b) for i, b in enumerate(u.up_blocks)]
        return blocks

    def vae_encoder_layers(self) -> list[tuple[str, nn.Module]]:
        return encoder_layers(self.vae.encoder, "encoder")

    def modules(self) -> list[nn.Module]:
        return [self.unet, self.vae, self.image_encoder]

    def describe(self) -> dict:
        d = super().describe()
        d.update(
            folder=self.folder,
            fps=self.fps,
            motion_bucket_id=self.motion_bucket_id,
            noise_aug_strength=self.noise_aug_strength,
            sigma_sampling=self.sigma_sampling,
            sigma_steps=self.sigma_steps if self.sigma_sampling == "karras" else None,
            p_mean=self.p_mean if self.sigma_sampling == "lognormal" else None,
            p_std=self.p_std if self.sigma_sampling == "lognormal" else None,
            text="none (image-only conditioning)",
        )
        return d

    def latent_shape(self, batch: int) -> tuple[int, int, int, int, int]:
        """(B, F, C, h, w) of the video latent at the working size and the current :attr:`num_frames`."""
        h, w = self.working_size(*self.default_size)
        f = self.vae_scale_factor
        return (batch, self.num_frames, int(self.vae.config.latent_channels), h // f, w // f)

    def sample_noise(self, batch: int, generator: torch.Generator) -> NoiseDraw:
        """Draw sigma, the latent noise and the conditioning-augmentation noise (on CPU, then moved).

        ``timestep`` is the scheduler's continuous timestep 0.25 * ln(sigma) and ``extra["sigma"]`` the sigma;
        ``extra["aug_noise"]`` (B, 3, H, W) is the noise added to the image before its conditioning latent.
        """
        if batch < 1:
            raise SurrogateError(f"batch must be >= 1, got {batch}")
        if self.sigma_sampling == "karras":
            idx = torch.randint(0, len(self._sigma_table), (batch,), generator=generator)
            sigma = self._sigma_table[idx]
            timestep = self._timestep_table[idx]
        else:
            sigma = torch.exp(self.p_mean + self.p_std * torch.randn(batch, generator=generator))
            timestep = 0.25 * sigma.log()
        shape = self.latent_shape(batch)
        noise = torch.randn(shape, generator=generator)
        h, w = self.working_size(*self.default_size)
        aug = torch.randn((batch, 3, h, w), generator=generator)
        dev = self.device
        return NoiseDraw(
            timestep=timestep.to(dev),
            noise=noise.to(dev),
            extra={"sigma": sigma.to(dev), "aug_noise": aug.to(dev)},
        )

    # ----------------------------------------------------------------- conditioning
    def encode_image_embeds(self, image: Tensor) -> Tensor:
        """CLIP image embedding (B, 1, D) as the pipeline's ``_encode_image`` (without CFG duplication)."""
        pixels = clip_preprocess(image.float(), self.clip_size, self.image_mean, self.image_std)
        emb = self.image_encoder(self._to_model(pixels)).image_embeds
        return emb.unsqueeze(1)

    def encode_latent(self, pixels: Tensor) -> Tensor:
        """VAE posterior mode of ``pixels`` in [-1, 1] (unscaled), as the pipeline's ``_encode_vae_image``."""
        return self.vae.encode(self._to_model(pixels)).latent_dist.mode()

    def added_time_ids(self, batch: int, dtype: torch.dtype | None = None) -> Tensor:
        """``[[fps - 1, motion_bucket_id, noise_aug_strength]]`` repeated over the batch."""
        ids = torch.tensor([[self.fps - 1, self.motion_bucket_id, self.noise_aug_strength]], dtype=dtype or self.dtype)
        return ids.repeat(batch, 1).to(self.device)

    def denoiser_inputs(
        self,
        image: Tensor,
        noisy_latents: Tensor,
        sigma: Tensor,
        timestep: Tensor,
        aug_noise: Tensor,
    ) -> dict[str, Tensor]:
        """The keyword arguments the pipeline passes to the U-Net, built from the [0, 1] image.

        Args:
            image: (B, 3, H, W) in [0, 1].
            noisy_latents: (B, F, C, h, w) unscaled noisy video latent x = x0 + sigma * eps.
            sigma: (B,) noise levels.
            timestep: (B,) the scheduler's timesteps for ``sigma`` (0.25 * ln sigma).
            aug_noise: (B, 3, H, W) conditioning-augmentation noise.

        Returns:
            ``sample`` (c_in * x concatenated on channels with the unscaled latent of the noise-augmented image,
            repeated over frames), ``timestep``, ``encoder_hidden_states`` (CLIP embedding) and ``added_time_ids``.
        """
        b, f = noisy_latents.shape[:2]
        emb = self.encode_image_embeds(image)
        cond_pixels = image.float() * 2.0 - 1.0 + self.noise_aug_strength * aug_noise.float()
        cond = self.encode_latent(cond_pixels).to(emb.dtype)
        cond = cond.unsqueeze(1).repeat(1, f, 1, 1, 1)
        s = sigma.float().to(noisy_latents.device).view(b, 1, 1, 1, 1)
        scaled = (noisy_latents.float() / (s**2 + 1) ** 0.5).to(emb.dtype)
        return {
            "sample": torch.cat([scaled, cond], dim=2),
            "timestep": timestep.float().to(self.device),
            "encoder_hidden_states": emb,
            "added_time_ids": self.added_time_ids(b, emb.dtype),
        }

    def _forward(self, image: Tensor, draw: NoiseDraw, request: FeatureRequest, out: Features) -> None:
        b, _, h, w = image.shape
        f = self.vae_scale_factor
        if h % f or w % f:
            raise SurrogateError(f"image height and width must be multiples of {f} for SVD's VAE, got {h}x{w}")
        noise = draw.noise
        sigma = draw.extra.get("sigma")
        aug = draw.extra.get("aug_noise")
        if sigma is None or aug is None:
            raise SurrogateError("draw: SVD needs extra['sigma'] and extra['aug_noise']; use SVDSurrogate.sample_noise")
        if noise.shape[0] != b or noise.shape[1] != self.num_frames or tuple(noise.shape[-2:]) != (h // f, w // f):
            raise SurrogateError(
                f"draw: noise of shape {tuple(noise.shape)} does not fit an image batch of {b} at {h}x{w} with "
                f"num_frames={self.num_frames} (expected ({b}, {self.num_frames}, C, {h // f}, {w // f})); "
                "draw again with sample_noise after changing num_frames or the working size"
            )
        x = image.to(self.device).float()
        # clean image latent, scaled like the video latents (first VAE call: the one VAE hooks capture)
        latent = self.encode_latent(x * 2.0 - 1.0).float() * float(self.vae.config.scaling_factor)
        out.latent = latent
        if not request.needs_denoiser:
            return
        x0 = latent.unsqueeze(1).expand(-1, noise.shape[1], -1, -1, -1)
        s = sigma.float().view(b, 1, 1, 1, 1)
        eps = noise.float()
        noisy = x0 + s * eps  # EulerDiscreteScheduler.add_noise
        inputs = self.denoiser_inputs(x, noisy, sigma, draw.timestep, aug)
        pred = self.unet(**inputs, return_dict=False)[0]
        out.output = pred.float()
        out.target = (eps - s * x0) / (s**2 + 1) ** 0.5  # v for EDM: c_skip * x + c_out * v == x0

    # ----------------------------------------------------------------- IRC shapes
    def block_shapes(self) -> list[torch.Size]:
        """Output shape of every block at the working size for one frame (probe run once per size, cached)."""
        size = self.working_size(*self.default_size)
        if size not in self._shape_cache:
            f = self.vae_scale_factor
            dev = self.device
            cfg = self.unet.config
            sample = torch.zeros(1, 1, cfg.in_channels, size[0] // f, size[1] // f, device=dev, dtype=self.dtype)
            cross = cfg.cross_attention_dim
            cross = cross[0] if isinstance(cross, (list, tuple)) else cross
            ctx = torch.zeros(1, 1, int(cross), device=dev, dtype=self.dtype)
            shapes: dict[int, torch.Size] = {}
            handles = []

            def rec(i):
                def hook(_m, _a, output):
                    shapes[i] = first_tensor(output).shape

                return hook

            try:
                for i, (_, mod) in enumerate(self.denoiser_blocks()):
                    handles.append(mod.register_forward_hook(rec(i)))
                with torch.no_grad():
                    self.unet(sample, torch.zeros(1, device=dev), encoder_hidden_states=ctx,
                              added_time_ids=self.added_time_ids(1), return_dict=False)
            finally:
                for hd in handles:
                    hd.remove()
            self._shape_cache[size] = [shapes[i] for i in range(self.num_blocks)]
        return self._shape_cache[size]

    def block_shapes_match(self, i: int, j: int) -> bool:
        """Whether U-Net blocks ``i`` and ``j`` output tensors of one shape (checked with a cached probe)."""
        self.validate_request(FeatureRequest(blocks=frozenset((i, j))))
        shapes = self.block_shapes()
        return shapes[i] == shapes[j]

    # ----------------------------------------------------------------- building
    @classmethod
    def from_pretrained(
        cls,
        folder: str | Path,
        *,
        num_frames: int | None = None,
        dtype: torch.dtype = torch.float32,
        gradient_checkpointing: bool = False,
        prompt_embeds=None,
        variant: str | None = None,
        **kw,
    ) -> "SVDSurrogate":
        """Load SVD from a local diffusers-format folder (``unet``, ``vae``, ``image_encoder``, ``scheduler``).

        Local files and safetensors only. ``feature_extractor/preprocessor_config.json`` is read (JSON) for
        the CLIP mean/std when present; OpenAI CLIP values otherwise.

        Raises:
            SurrogateError: naming the folder and the missing or unreadable component.
        """
        from diffusers import AutoencoderKLTemporalDecoder, EulerDiscreteScheduler, UNetSpatioTemporalConditionModel
        from transformers import CLIPVisionModelWithProjection

        root = Path(folder)
        if not root.is_dir():
            raise SurrogateError(f"SVD model folder {str(root)!r} does not exist or is not a folder")
        for sub, cls_name in _COMPONENTS.items():
            cfg_name = "scheduler_config.json" if sub == "scheduler" else "config.json"
            if not (root / sub / cfg_name).is_file():
                raise SurrogateError(
                    f"SVD model folder {str(root)!r} is missing the {sub!r} component ({cls_name}): "
                    f"expected {str(root / sub / cfg_name)!r}"
                )

        def load(sub, fn):
            try:
                return fn()
            except (OSError, ValueError) as exc:
                raise SurrogateError(
                    f"SVD model folder {str(root)!r}: cannot load the {sub!r} component ({_COMPONENTS[sub]}): {exc}"
                ) from exc

        common = dict(local_files_only=True, use_safetensors=True, variant=variant)
        unet = load("unet", lambda: UNetSpatioTemporalConditionModel.from_pretrained(
            root, subfolder="unet", torch_dtype=dtype, **common))
        vae = load("vae", lambda: AutoencoderKLTemporalDecoder.from_pretrained(
            root, subfolder="vae", torch_dtype=dtype, **common))
        enc = load("image_encoder", lambda: CLIPVisionModelWithProjection.from_pretrained(
            root / "image_encoder", dtype=dtype, **common))
        sched = load("scheduler", lambda: EulerDiscreteScheduler.from_pretrained(
            root, subfolder="scheduler", local_files_only=True))
        fe = root / "feature_extractor" / "preprocessor_config.json"
        if fe.is_file() and "image_mean" not in kw:
            try:
                pre = json.loads(fe.read_text())
            except (OSError, ValueError) as exc:
                raise SurrogateError(f"SVD model folder {str(root)!r}: unreadable {str(fe)!r}: {exc}") from exc
            kw.setdefault("image_mean", pre.get("image_mean", OPENAI_CLIP_MEAN))
            kw.setdefault("image_std", pre.get("image_std", OPENAI_CLIP_STD))
        for m in (unet, vae, enc):
            m.eval()
        return cls(
            unet=unet, vae=vae, image_encoder=enc, scheduler=sched, num_frames=num_frames, dtype=dtype,
            gradient_checkpointing=gradient_checkpointing, prompt_embeds=prompt_embeds, folder=root, **kw,
        )

    @staticmethod
    def _tiny_modules(seed: int, num_frames: int):
        """Tiny random-weight U-Net, VAE and CLIP vision tower of the real classes (a few hundred k parameters)."""
        from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel
        from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

        torch.manual_seed(seed)
        unet = UNetSpatioTemporalConditionModel(
            sample_size=8,
            in_channels=8,
            out_channels=4,
            down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
            up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
            block_out_channels=(32, 64),
            addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=24,
            layers_per_block=1,
            cross_attention_dim=32,
            transformer_layers_per_block=1,
            num_attention_heads=(1, 2),
            num_frames=num_frames,
        )
        vae = AutoencoderKLTemporalDecoder(
            down_block_types=("DownEncoderBlock2D",) * 4,
            block_out_channels=(32, 32, 32, 32),
            layers_per_block=1,
            latent_channels=4,
            sample_size=64,
        )
        enc = CLIPVisionModelWithProjection(
            CLIPVisionConfig(
                hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2,
                image_size=224, patch_size=32, projection_dim=32,
            )
        )
        for m in (unet, vae, enc):
            m.eval()
        return unet, vae, enc

    @classmethod
    def tiny(cls, *, seed: int = 0, num_frames: int = 4, **kw) -> "SVDSurrogate":
        """A tiny random-weight SVD of the real classes; working size 64 x 64, 4 frames (tests, demos)."""
        from diffusers import EulerDiscreteScheduler

        unet, vae, enc = cls._tiny_modules(seed, num_frames)
        kw.setdefault("working_size", (64, 64))
        kw.setdefault("scheduler", EulerDiscreteScheduler(**SVD_SCHEDULER_CONFIG))
        return cls(unet=unet, vae=vae, image_encoder=enc, num_frames=num_frames, **kw)

    @classmethod
    def save_tiny(cls, folder: str | Path, seed: int = 0, num_frames: int = 4) -> Path:
        """Write a tiny SVD as a diffusers-format folder (``StableVideoDiffusionPipeline.save_pretrained``)."""
        from diffusers import EulerDiscreteScheduler, StableVideoDiffusionPipeline
        from transformers import CLIPImageProcessor

        unet, vae, enc = cls._tiny_modules(seed, num_frames)
        pipe = StableVideoDiffusionPipeline(
            vae=vae, image_encoder=enc, unet=unet, scheduler=EulerDiscreteScheduler(**SVD_SCHEDULER_CONFIG),
            feature_extractor=CLIPImageProcessor(image_mean=list(OPENAI_CLIP_MEAN), image_std=list(OPENAI_CLIP_STD)),
        )
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        pipe.save_pretrained(str(folder), safe_serialization=True)
        return folder

    # ----------------------------------------------------------------- verification
    def pipeline(self):
        """A ``StableVideoDiffusionPipeline`` over this adapter's modules (own scheduler copy)."""
        from diffusers import EulerDiscreteScheduler, StableVideoDiffusionPipeline
        from transformers import CLIPImageProcessor

        pipe = StableVideoDiffusionPipeline(
            vae=self.vae,
            image_encoder=self.image_encoder,
            unet=self.unet,
            scheduler=EulerDiscreteScheduler.from_config(copy.deepcopy(dict(self.scheduler.config))),
            feature_extractor=CLIPImageProcessor(image_mean=list(self.image_mean), image_std=list(self.image_std)),
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def generate(
        self,
        image: Tensor,
        *,
        num_inference_steps: int = 3,
        seed: int = 0,
        num_frames: int | None = None,
    ) -> Tensor:
        """A short I2V video of ``image`` with diffusers' ``StableVideoDiffusionPipeline`` (deterministic).

        The photo goes to the pipeline as an 8-bit PIL image, as a user's file would (the pipeline's tensor path
        skips the CLIP resize); the pipeline resizes it to the working size. Pipeline defaults otherwise
        (classifier-free guidance 1 -> 3 over frames), with this adapter's fps / motion / augmentation settings.

        Args:
            image: (3, H, W) or (1, 3, H, W) in [0, 1].
            num_inference_steps: Euler steps.
            seed: seed of the CPU generator (noise augmentation and initial latents).
            num_frames: frames to generate; :attr:`num_frames` if None.

        Returns:
            (F, 3, h, w) float32 video in [0, 1] on CPU at the working size.
        """
        from PIL import Image

        image = self._generate_image(image, num_inference_steps)
        frames = self.num_frames if num_frames is None else int(num_frames)
        if frames < 1:
            raise SurrogateError(f"num_frames must be >= 1, got {num_frames}")
        arr = (image[0].detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
        pil = Image.fromarray(arr)
        h, w = self.working_size(*self.default_size)
        gen = torch.Generator(device="cpu").manual_seed(int(seed))
        with torch.inference_mode(False), torch.no_grad():
            video = self.pipeline()(
                pil,
                height=h,
                width=w,
                num_frames=frames,
                num_inference_steps=int(num_inference_steps),
                fps=self.fps,
                motion_bucket_id=self.motion_bucket_id,
                noise_aug_strength=self.noise_aug_strength,
                decode_chunk_size=frames,
                generator=gen,
                output_type="pt",
            ).frames
        return video[0].float().clamp(0, 1).cpu()
