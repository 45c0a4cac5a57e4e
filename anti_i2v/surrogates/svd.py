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

Diffusion (EDM, v-prediction, ``EulerDiscreteScheduler`` with ``timestep_type="continuous"``), in the protocol of
:class:`~anti_i2v.surrogates.base.Surrogate`:

* :meth:`SVDSurrogate.encode` runs the VAE on the *clean* photo (the only VAE call VAE-layer hooks see: the photo's
  own features) and the CLIP tower; ``Conditioning.latent`` is that latent times the scaling factor (as the
  pipeline scales video latents), ``parts`` hold the pixels, the unscaled latent and the CLIP embedding. The
  conditioning latent of the *noise-augmented* image needs the draw's ``aug_noise``, so :meth:`SVDSurrogate.denoise`
  encodes ``pixels + noise_aug_strength * aug_noise`` itself (with ``noise_aug_strength == 0`` that equals the clean
  latent and the second VAE call is skipped);
* :meth:`SVDSurrogate.clean_latent`: x0 = the scaled image latent repeated over the ``num_frames`` latent frames
  (SVD has no temporal compression): the still video of the photo, (B, F, C, h, w);
* :meth:`SVDSurrogate.noisy_latent` (``EulerDiscreteScheduler.add_noise``): x = x0 + sigma * eps;
* model input (``scale_model_input``): c_in * x with c_in = 1 / sqrt(sigma^2 + 1);
* timestep fed to the U-Net: 0.25 * ln(sigma), the scheduler's continuous timestep;
* :meth:`SVDSurrogate.prediction_target`: v = (eps - sigma * x0) / sqrt(sigma^2 + 1), the value of the model
  output F for which the scheduler's denoiser x0_hat = c_skip * x + c_out * F (c_skip = 1 / (sigma^2 + 1),
  c_out = -sigma / sqrt(sigma^2 + 1)) returns x0 exactly.

Sigma sampling (``sigma_sampling``): ``"karras"`` (default) draws uniformly among the sigmas the SVD sampler
visits, i.e. the scheduler's Karras schedule of ``sigma_steps`` steps (25, the pipeline's default) between its
``sigma_min`` and ``sigma_max`` (0.002 and 700 for SVD); the timestep is the scheduler's own value for that sigma.
The scheduler's discrete training table (sigmas 0.03-14.6 from the betas) does not cover the range SVD samples
in, so it is not used. ``"lognormal"`` draws EDM's ln(sigma) ~ N(p_mean, p_std^2) (defaults -1.2 and 1.2 from
Karras et al. 2022; set them to the schedule you want to cover).

Working size: ``working_size=`` when given; otherwise the photo's aspect ratio at about SVD's 576 x 1024 pixel
area, sides rounded to multiples of 64 (a 1080 x 1920 photo works at 576 x 1024, a portrait 1920 x 1080 at
1024 x 576, not stretched to landscape). :meth:`SVDSurrogate.sample_noise` takes ``size=(h, w)``, the size the
images of the iteration have (default: the working size of a 576 x 1024 photo); :meth:`SVDSurrogate.generate`
makes its video at the working size of the photo it gets, i.e. the size the attack ran at.

Blocks: the U-Net in the layout of the original (generative-models / ComfyUI) SVD U-Net, so that a block index
means the same block here and in the native ComfyUI surrogate: ``conv_in`` (ComfyUI ``input_blocks.0``), then per
down level each resnet (+ its spatio-temporal transformer) and the downsampler (``input_blocks.1 ..``),
``mid_block`` (``middle_block``), then per up level each resnet (+ transformer), the level's last one together
with its upsampler (``output_blocks.*``). Real SVD: 12 + 1 + 12 = 25 blocks (``input_blocks.k`` = block k,
``middle_block`` = 12, ``output_blocks.k`` = 13 + k). Names are the diffusers module paths
(``down_blocks.0.attentions.1``, ``down_blocks.0.downsamplers.0``, ``up_blocks.3.attentions.2``). Outputs are
(batch * frames, C, h, w) and differ in shape between levels: :meth:`SVDSurrogate.block_shapes_match` reads them
from a one-frame probe (run once per U-Net, cached) and :meth:`SVDSurrogate.default_objective` pairs a shallow
down-path block with the up-path block that mirrors it (the one its skip connection feeds) and has its shape.
VAE-encoder layers: ``encoder.down_blocks.*`` then ``encoder.mid_block`` of the VAE's 2-D encoder.
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

from .base import Conditioning, FeatureRequest, NoiseDraw, Surrogate, SurrogateError, encoder_layers

__all__ = [
    "SVDSurrogate",
    "clip_preprocess",
    "antialiased_resize",
    "unet_default_objective",
    "aspect_working_size",
    "OPENAI_CLIP_MEAN",
    "OPENAI_CLIP_STD",
]

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


# --------------------------------------------------------------------------- working size, default objective
def aspect_working_size(height: int, width: int, area: int, multiple: int) -> tuple[int, int]:
    """(h, w) with the aspect ratio of ``height x width``, about ``area`` pixels, sides multiples of ``multiple``.

    Scales up or down (the model works best near its training area): 1080 x 1920 -> 576 x 1024 for SVD's
    576 * 1024 area, 1920 x 1080 -> 1024 x 576, 512 x 512 -> 768 x 768.
    """
    height, width = int(height), int(width)
    if height < 1 or width < 1:
        raise SurrogateError(f"image size must be positive, got {height}x{width}")
    scale = math.sqrt(float(area) / float(height * width))
    h = max(multiple, int(round(height * scale / multiple)) * multiple)
    w = max(multiple, int(round(width * scale / multiple)) * multiple)
    return (h, w)


def unet_default_objective(surrogate: Surrogate, num_down: int):
    """The paper's default objective mapped onto a U-Net in the generative-models block layout.

    Blocks ``0 .. num_down - 1`` are the down path (ComfyUI ``input_blocks``), ``num_down`` the middle block,
    the rest the up path (``output_blocks``); up block ``u`` takes the skip connection of down block
    ``n_up - 1 - u``, so down block ``k`` is mirrored by block ``num_down + n_up - k``.

    * IRA reads the middle block (the U-Net's deepest features) and the last two VAE-encoder layers.
    * IRC pulls the up-path block that mirrors a shallow down-path block onto it. The shallow block is the down
      block nearest to the paper's depth ratio (block 3 of CogVideoX's 42, i.e. ``round(3 / 42 * n)``, at least 1:
      block 0 is the input convolution) whose mirror outputs features of its shape; blocks next to a resampler
      differ in shape from their mirror and are skipped. Real SVD (25 blocks): IRC 2 -> 22 (320 channels at the
      full latent size), IRA 12.

    When no down block has a mirror of its shape, the objective has no IRC term and says so in ``notes``.
    """
    from ..losses import IRALoss, IRCLoss, Objective

    n = surrogate.num_blocks
    n_up = n - num_down - 1
    nv = surrogate.num_vae_layers
    vae = tuple(range(max(nv - 2, 0), nv))
    terms = [IRALoss(blocks=(num_down,), vae_layers=vae, weight=1.0)]
    notes: list[str] = []
    target = min(max(round(3 / 42 * n), 1), max(num_down - 1, 0))
    order = sorted(range(1, num_down), key=lambda k: (abs(k - target), k)) + ([0] if num_down > 0 else [])
    pair = None
    for k in order:
        j = num_down + n_up - k
        if num_down < j < n and surrogate.block_shapes_match(k, j):
            pair = (k, j)
            break
    if pair is not None:
        terms.append(IRCLoss(pairs=(pair,), weight=1.0))
    else:
        notes.append(f"IRC left out: no down-path block of the {surrogate.family} U-Net has a mirroring up-path block "
                     "of the same output shape; pick an IRC pair of equal shapes by hand")
    return Objective(tuple(terms), tuple(notes))


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
        working_size: (height, width) to optimise at; default: the photo's aspect ratio at about 576 x 1024 pixels
            (multiples of 64, see :func:`aspect_working_size`).
    """

    family = "svd"
    generates_latents = True
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
        """The U-Net in the generative-models / ComfyUI block layout (see the module docstring)."""
        u = self.unet
        blocks: list[tuple[str, nn.Module]] = [("conv_in", u.conv_in)]
        for i, blk in enumerate(u.down_blocks):
            attns = getattr(blk, "attentions", None)
            for j, res in enumerate(blk.resnets):
                if attns is not None and j < len(attns):
                    blocks.append((f"down_blocks.{i}.attentions.{j}", attns[j]))
                else:
                    blocks.append((f"down_blocks.{i}.resnets.{j}", res))
            for j, down in enumerate(getattr(blk, "downsamplers", None) or []):
                blocks.append((f"down_blocks.{i}.downsamplers.{j}", down))
        blocks.append(("mid_block", u.mid_block))
        for i, blk in enumerate(u.up_blocks):
            attns = getattr(blk, "attentions", None)
            ups = list(getattr(blk, "upsamplers", None) or [])
            n = len(blk.resnets)
            for j, res in enumerate(blk.resnets):
                if ups and j == n - 1:
                    continue  # the level's last resnet (+ transformer) and its upsampler are one block
                if attns is not None and j < len(attns):
                    blocks.append((f"up_blocks.{i}.attentions.{j}", attns[j]))
                else:
                    blocks.append((f"up_blocks.{i}.resnets.{j}", res))
            for j, up in enumerate(ups):
                blocks.append((f"up_blocks.{i}.upsamplers.{j}", up))
        return blocks

    def temporal_attention_modules(self) -> list[tuple[str, nn.Module]]:
        """The temporal self-attention of every ``TransformerSpatioTemporalModel`` of the U-Net, in forward order:
        ``temporal_transformer_blocks[k].attn1`` (each token attends over the frames at its spatial position)."""
        out = []
        u = self.unet
        for prefix, part in (("down_blocks", u.down_blocks), ("mid_block", u.mid_block), ("up_blocks", u.up_blocks)):
            for name, mod in part.named_modules(prefix=prefix):  # the U-Net registers up_blocks before mid_block
                if name.endswith("temporal_transformer_blocks") and isinstance(mod, nn.ModuleList):
                    for k, blk in enumerate(mod):
                        out.append((f"{name}.{k}.attn1", blk.attn1))
        return out

    @property
    def num_down_blocks(self) -> int:
        """Blocks of the down path (``conv_in`` included); the middle block has this index."""
        return self.block_names.index("mid_block")

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

    def working_size(self, height: int, width: int) -> tuple[int, int]:
        """``working_size=`` when given, else the photo's aspect ratio at about SVD's pixel area (multiples of 64)."""
        if self._working_size is not None:
            return self._working_size
        return aspect_working_size(height, width, self.default_size[0] * self.default_size[1], self.size_multiple)

    def _check_size(self, size: Sequence[int], what: str = "size") -> tuple[int, int]:
        try:
            h, w = (int(size[0]), int(size[1]))
        except (TypeError, ValueError, IndexError):
            raise SurrogateError(f"{what} must be (height, width), got {size!r}") from None
        f = self.vae_scale_factor
        if h < f or w < f or h % f or w % f:
            raise SurrogateError(f"{what} must be positive multiples of {f} (the VAE factor), got {(h, w)}")
        return h, w

    def latent_shape(self, batch: int, size: Sequence[int] | None = None) -> tuple[int, int, int, int, int]:
        """(B, F, C, h, w) of the video latent for images of ``size`` (default: the working size of a 576 x 1024
        photo) at the current :attr:`num_frames`."""
        h, w = self._check_size(size) if size is not None else self.working_size(*self.default_size)
        f = self.vae_scale_factor
        return (batch, self.num_frames, int(self.vae.config.latent_channels), h // f, w // f)

    def sample_noise(self, batch: int, generator: torch.Generator, *, size: Sequence[int] | None = None) -> NoiseDraw:
        """Draw sigma, the latent noise and the conditioning-augmentation noise (on CPU, then moved).

        Args:
            batch: images in the iteration.
            generator: CPU generator (sigma, then the latent noise, then the augmentation noise).
            size: (height, width) of the images the draw is for, multiples of 8; default
                ``working_size(576, 1024)``. The protect loop passes its working size.

        ``timestep`` is the scheduler's continuous timestep 0.25 * ln(sigma) and ``extra["sigma"]`` the sigma;
        ``noise`` is (B, F, C, h / 8, w / 8) and ``extra["aug_noise"]`` (B, 3, h, w) is the noise added to the
        image before its conditioning latent.
        """
        if batch < 1:
            raise SurrogateError(f"batch must be >= 1, got {batch}")
        h, w = self._check_size(size) if size is not None else self.working_size(*self.default_size)
        if self.sigma_sampling == "karras":
            idx = torch.randint(0, len(self._sigma_table), (batch,), generator=generator)
            sigma = self._sigma_table[idx]
            timestep = self._timestep_table[idx]
        else:
            sigma = torch.exp(self.p_mean + self.p_std * torch.randn(batch, generator=generator))
            timestep = 0.25 * sigma.log()
        shape = self.latent_shape(batch, (h, w))
        noise = torch.randn(shape, generator=generator)
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

    def encode(self, image: Tensor) -> Conditioning:
        """The clean photo's VAE latent (the VAE call VAE-layer hooks see) and CLIP embedding (differentiable).

        ``latent``: (B, C, h, w) VAE mode x scaling factor. ``parts``: ``pixels`` (B, 3, H, W) in [-1, 1] (for the
        per-draw augmented conditioning latent), ``image_latent`` (the unscaled mode), ``image_embeds`` (B, 1, D).
        """
        b, _, h, w = image.shape
        f = self.vae_scale_factor
        if h % f or w % f:
            raise SurrogateError(f"image height and width must be multiples of {f} for SVD's VAE, got {h}x{w}")
        x = image.to(self.device).float()
        pixels = x * 2.0 - 1.0
        lat = self.encode_latent(pixels).float()  # first VAE call: the photo's own VAE features
        emb = self.encode_image_embeds(x)
        return Conditioning(
            latent=lat * float(self.vae.config.scaling_factor),
            parts={"pixels": pixels, "image_latent": lat, "image_embeds": emb},
        )

    def conditioning_latent(self, cond: Conditioning, aug_noise: Tensor) -> Tensor:
        """Unscaled VAE mode of the noise-augmented image ``pixels + noise_aug_strength * aug_noise`` (B, C, h, w).

        With ``noise_aug_strength == 0`` this is the clean latent of :meth:`encode` (no second VAE call).
        """
        pixels = cond.parts["pixels"]
        if self.noise_aug_strength == 0:
            return cond.parts["image_latent"]
        if tuple(aug_noise.shape) != tuple(pixels.shape):
            raise SurrogateError(
                f"draw: aug_noise of shape {tuple(aug_noise.shape)} does not fit images of shape {tuple(pixels.shape)}; "
                "draw with sample_noise(batch, generator, size=(h, w)) for the images' size"
            )
        return self.encode_latent(pixels + self.noise_aug_strength * aug_noise.to(pixels.device).float()).float()

    def _draw_extras(self, draw: NoiseDraw) -> tuple[Tensor, Tensor]:
        sigma = draw.extra.get("sigma")
        aug = draw.extra.get("aug_noise")
        if sigma is None or aug is None:
            raise SurrogateError("draw: SVD needs extra['sigma'] and extra['aug_noise']; use SVDSurrogate.sample_noise")
        return sigma, aug

    def unet_inputs(self, cond: Conditioning, noisy_latents: Tensor, draw: NoiseDraw) -> dict[str, Tensor]:
        """The keyword arguments the pipeline passes to the U-Net for a conditioning and a noisy video latent.

        ``sample`` is c_in * x concatenated on channels with the unscaled latent of the noise-augmented image
        (repeated over frames); ``timestep``, ``encoder_hidden_states`` (CLIP embedding), ``added_time_ids``.
        """
        sigma, aug = self._draw_extras(draw)
        b, f = noisy_latents.shape[:2]
        emb = cond.parts["image_embeds"]
        if emb.shape[0] != b:
            raise SurrogateError(f"the conditioning has batch {emb.shape[0]} but the noisy latent {b}")
        lat = self.conditioning_latent(cond, aug).to(emb.dtype)
        lat = lat.unsqueeze(1).repeat(1, f, 1, 1, 1)
        s = sigma.float().to(noisy_latents.device).view(b, 1, 1, 1, 1)
        scaled = (noisy_latents.float() / (s**2 + 1) ** 0.5).to(emb.dtype)
        return {
            "sample": torch.cat([scaled, lat], dim=2),
            "timestep": draw.timestep.float().to(self.device),
            "encoder_hidden_states": emb,
            "added_time_ids": self.added_time_ids(b, emb.dtype),
        }

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
            See :meth:`unet_inputs`.
        """
        draw = NoiseDraw(timestep=timestep, noise=noisy_latents, extra={"sigma": sigma, "aug_noise": aug_noise})
        return self.unet_inputs(self.encode(image), noisy_latents, draw)

    def clean_latent(self, cond: Conditioning) -> Tensor:
        """The still video of the photo: the scaled image latent repeated over :attr:`num_frames`, (B, F, C, h, w)."""
        lat = cond.latent.float()
        return lat.unsqueeze(1).expand(-1, self.num_frames, -1, -1, -1)

    def _check_noise(self, x0: Tensor, draw: NoiseDraw) -> tuple[Tensor, Tensor]:
        sigma, _ = self._draw_extras(draw)
        noise = draw.noise
        if tuple(noise.shape) != tuple(x0.shape):
            b, frames = x0.shape[:2]
            f = self.vae_scale_factor
            h, w = x0.shape[-2] * f, x0.shape[-1] * f
            raise SurrogateError(
                f"draw: noise of shape {tuple(noise.shape)} does not fit an image batch of {b} at {h}x{w} with "
                f"num_frames={frames} (expected {tuple(x0.shape)}); draw again with "
                f"sample_noise(batch, generator, size=({h}, {w})) after changing num_frames or the working size"
            )
        return sigma.float().to(x0.device).view(-1, 1, 1, 1, 1), noise.float().to(x0.device)

    def noisy_latent(self, x0: Tensor, draw: NoiseDraw) -> Tensor:
        """``EulerDiscreteScheduler.add_noise``: x0 + sigma * eps (float32)."""
        s, eps = self._check_noise(x0, draw)
        return x0.float() + s * eps

    def prediction_target(self, x0: Tensor, draw: NoiseDraw) -> Tensor:
        """v for EDM: (eps - sigma x0) / sqrt(sigma^2 + 1), so that c_skip * x + c_out * v == x0."""
        s, eps = self._check_noise(x0, draw)
        return (eps - s * x0.float()) / (s**2 + 1) ** 0.5

    def denoise(self, cond: Conditioning, noisy: Tensor, draw: NoiseDraw) -> Tensor:
        """The U-Net on ``noisy`` (B, F, C, h, w) with the pipeline's inputs; returns v (B, F, C, h, w)."""
        return self.unet(**self.unet_inputs(cond, noisy, draw), return_dict=False)[0]

    # ----------------------------------------------------------------- IRC shapes
    def probe_size(self) -> tuple[int, int]:
        """Pixel size of the shape probe: the smallest latent every U-Net level halves evenly (16 x 16 for SVD)."""
        side = 2 ** max(len(self.unet.down_blocks), 1) * self.vae_scale_factor
        return (side, side)

    def block_shapes(self) -> list[torch.Size]:
        """Output shape of every block for one frame at :meth:`probe_size` (probe run once, cached).

        Which blocks share a shape does not depend on the size as long as every level halves it evenly, which
        the working size guarantees (multiples of 64 for SVD).
        """
        size = self.probe_size()
        if size not in self._shape_cache:
            f = self.vae_scale_factor
            dev = self.device
            cfg = self.unet.config
            sample = torch.zeros(1, 1, cfg.in_channels, size[0] // f, size[1] // f, device=dev, dtype=self.dtype)
            cross = cfg.cross_attention_dim
            cross = cross[0] if isinstance(cross, (list, tuple)) else cross
            ctx = torch.zeros(1, 1, int(cross), device=dev, dtype=self.dtype)
            self._shape_cache[size] = self.record_block_shapes(
                lambda: self.unet(sample, torch.zeros(1, device=dev), encoder_hidden_states=ctx,
                                  added_time_ids=self.added_time_ids(1), return_dict=False))
        return self._shape_cache[size]

    def block_shapes_match(self, i: int, j: int) -> bool:
        """Whether U-Net blocks ``i`` and ``j`` output tensors of one shape (checked with a cached probe)."""
        self.validate_request(FeatureRequest(blocks=frozenset((i, j))))
        shapes = self.block_shapes()
        return shapes[i] == shapes[j]

    def default_objective(self):
        """IRA on the middle block + the last two VAE-encoder layers; IRC from a shallow down block to its mirror.

        See :func:`unet_default_objective` (real SVD: IRA 12, IRC 2 -> 22, tiny: IRA 4, IRC 1 -> 7).
        """
        return unet_default_objective(self, self.num_down_blocks)

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
        size: tuple[int, int] | None = None,
        output_type: str = "pt",
    ) -> Tensor:
        """A short I2V video of ``image`` with diffusers' ``StableVideoDiffusionPipeline`` (deterministic).

        ``output_type="latent"`` returns the generated latent video instead, (1, F, C, h, w) float32 on CPU, in the
        convention of :meth:`clean_latent` (scaled by the VAE's scaling factor): :meth:`generate_latent`.

        The photo goes to the pipeline as an 8-bit PIL image, as a user's file would (the pipeline's tensor path
        skips the CLIP resize); the pipeline resizes it to ``working_size(H, W)`` of the photo, the size the attack
        on that photo runs at (``size=`` overrides it). Pipeline defaults otherwise
        (classifier-free guidance 1 -> 3 over frames), with this adapter's fps / motion / augmentation settings.

        Args:
            image: (3, H, W) or (1, 3, H, W) in [0, 1].
            num_inference_steps: Euler steps.
            seed: seed of the CPU generator (noise augmentation and initial latents).
            num_frames: frames to generate; :attr:`num_frames` if None.
            size: (height, width) of the video, multiples of 8; the photo's working size if None.

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
        h, w = self._check_size(size) if size is not None else self.working_size(image.shape[-2], image.shape[-1])
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
                output_type="latent" if output_type == "latent" else "pt",
            ).frames
        if output_type == "latent":
            return video.float().cpu()
        return video[0].float().clamp(0, 1).cpu()
