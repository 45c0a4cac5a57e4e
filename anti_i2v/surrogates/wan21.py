"""Wan 2.1 image-to-video (DiT) surrogate: diffusers ``WanTransformer3DModel`` + ``AutoencoderKLWan`` + CLIP.

How the photo enters the denoiser (``WanImageToVideoPipeline`` of diffusers 0.42, read and reproduced on tiny
configs, see ``tests/test_surrogate_wan21.py``):

1. **CLIP image tokens.** The photo goes through the CLIP image processor (resize the shortest side with
   ``int()`` truncation of the long side, bicubic with antialiasing, centre crop, normalise with the CLIP
   mean/std) and ``CLIPVisionModel``; the *second to last* hidden states (``hidden_states[-2]``, 257 tokens
   for ViT-H/14) are ``encoder_hidden_states_image``. The transformer puts them before the 512 umT5 text
   tokens. transformers' processor leaves autograd, so :func:`clip_preprocess` redoes it in torch.
2. **Conditioning latent.** The video ``[photo, zero frames]`` (``num_frames`` pixel frames, in [-1, 1]) is
   encoded by the VAE (posterior mode, as the pipeline's ``sample_mode="argmax"``) and normalised with the
   VAE's ``latents_mean`` / ``latents_std``.
3. **Mask.** 4 channels (the VAE's temporal factor) per latent frame: ones on the first latent frame, zeros
   after. ``condition = cat([mask, latent], channels)`` (4 + 16 = 20 channels).
4. **Denoiser input.** ``hidden_states = cat([noisy video latent, condition], channels)`` (16 + 20 = 36).

Training objective (flow matching, the scheduler's forward process): ``z_t = (1 - sigma) x0 + sigma * noise``
with ``timestep = sigma * num_train_timesteps``; the transformer predicts the flow velocity, so
``target = noise - x0``. ``sigma`` is drawn by taking a training timestep index uniformly from
``{1, ..., num_train_timesteps}`` and applying the config's shift (``flow_shift`` of ``UniPCMultistepScheduler``
with ``use_flow_sigmas``, or ``shift`` of ``FlowMatchEulerDiscreteScheduler``):
``sigma = shift * s / (1 + (shift - 1) * s)``, ``s = index / num_train_timesteps`` - the same shifted
sigmas the sampler walks through. ``x0`` (:meth:`Wan21Surrogate.clean_latent`) is a "still video": the
normalised latent of a photo (the first latent frame of the conditioning latent, which equals the latent of the
photo alone: the VAE's first temporal chunk is the photo) repeated over the latent frames.

**One z_t per iteration.** The protect loop passes the **clean** photo's still video as ``clean=`` to both the
target pass and the adversarial pass of an iteration: both see the same ``z_t`` and only the image conditioning
(CLIP tokens and conditioning latent) differs, as in Anti-I2V's IRA (Eq. 3-4: ``eps^m(z_t, z_xi, t, y)`` against
``eps^m(z_t, z_psi, t, y)``), and the perturbation's gradient flows only through the conditioning - the path the
sampler takes, whose ``z_t`` never comes from the photo. Without ``clean=`` (or with ``request.own_latent``,
AdvDM) ``x0`` is the passed image's own latent.

**Work split** (:class:`~.base.Surrogate` protocol): :meth:`Wan21Surrogate.encode` encodes the photo alone with
the VAE (its latent and, through the base class's hooks, the VAE-encoder features); the conditioning the
denoiser needs (the latent of ``[photo, zero frames]`` and the CLIP tokens) is built the first time
:meth:`Wan21Surrogate.denoise` needs it and kept in the conditioning (``parts``) for later calls, so requests
without the denoiser (PhotoGuard's latent, VAE layers) never encode the zero frames nor run CLIP.

**Working size.** Without an explicit ``working_size`` a photo keeps its aspect ratio: it is scaled to about
the area of ``default_size`` (480 x 832, Wan 480P), never up, each side floored to a multiple of 16 (as ComfyUI
native surrogates do), so a portrait photo is not stretched to landscape. The noise of an iteration must be
drawn at that size: ``sample_noise(batch, generator, size=working_size(h, w))``. :meth:`Wan21Surrogate.generate`
makes its video at the same working size.

VAE-encoder layers: every entry of ``vae.encoder.down_blocks`` (residual blocks and resamplers, in forward
order) then ``vae.encoder.mid_block``. ``AutoencoderKLWan`` encodes in temporal chunks (frame 0, then 4 frames
at a time with a causal cache); the features are those of the photo's chunk (the photo alone, encoded in
:meth:`Wan21Surrogate.encode`), so they have one frame: shape (B, C, 1, h, w).

Text: the umT5 embedding of the prompt is cached (``prompts.resolve_prompt_embeds``): exactly 512 tokens,
because the Wan attention processor splits image and text tokens at ``len - 512``; shorter embeddings are
zero-padded as the pipeline pads them.

Wan 2.2 (two transformers with a ``boundary_ratio``, or ``expand_timesteps``) is out of scope and refused.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Conditioning, NoiseDraw, Surrogate, SurrogateError, encoder_layers
from .prompts import resolve_prompt_embeds, save_prompt_embeds

__all__ = [
    "Wan21Surrogate",
    "WanConditioning",
    "ClipPreprocess",
    "clip_preprocess",
    "load_diffusers_model",
    "TEXT_TOKENS",
]

#: umT5 sequence length the Wan 2.1 attention processor assumes (it splits image/text tokens at ``len - 512``).
TEXT_TOKENS = 512
#: pixel frames of the video the surrogate conditions on by default (5 latent frames; the pipeline uses 81).
DEFAULT_NUM_FRAMES = 17
#: the tiny model's default (2 latent frames: the image chunk and one more, cheap to encode).
TINY_NUM_FRAMES = 5
_SCHEDULERS = ("UniPCMultistepScheduler", "FlowMatchEulerDiscreteScheduler")
# PIL resampling codes used by CLIP image processors -> torch interpolate modes
_RESAMPLE = {2: "bilinear", 3: "bicubic"}
_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


# --------------------------------------------------------------------------- CLIP preprocessing in torch
@dataclass(frozen=True)
class ClipPreprocess:
    """The settings of a ``CLIPImageProcessor`` that matter for a [0, 1] float image.

    Attributes:
        shortest_edge: resize so the short side has this length (long side ``int(edge * long / short)``), or None.
        size: fixed (height, width) resize when ``shortest_edge`` is None, or None.
        crop: (height, width) of the centre crop, or None.
        mean: per-channel normalisation mean (None: no normalisation).
        std: per-channel normalisation std.
        mode: ``"bicubic"`` or ``"bilinear"`` (antialiased, as torchvision's resize).
    """

    shortest_edge: int | None = 224
    size: tuple[int, int] | None = None
    crop: tuple[int, int] | None = (224, 224)
    mean: tuple[float, ...] | None = _CLIP_MEAN
    std: tuple[float, ...] = _CLIP_STD
    mode: str = "bicubic"

    @classmethod
    def from_processor(cls, processor) -> "ClipPreprocess":
        """Read a transformers ``CLIPImageProcessor`` (a [0, 1] image stands for ``uint8 * rescale_factor``)."""
        shortest, size = None, None
        if getattr(processor, "do_resize", True):
            s = processor.size
            get = (lambda k: s.get(k)) if isinstance(s, dict) else (lambda k: getattr(s, k, None))
            if get("shortest_edge"):
                shortest = int(get("shortest_edge"))
            elif get("height") and get("width"):
                size = (int(get("height")), int(get("width")))
            else:
                raise SurrogateError(f"image_processor.size {s!r} is not supported: need shortest_edge or height/width")
        crop = None
        if getattr(processor, "do_center_crop", True):
            c = processor.crop_size
            get = (lambda k: c.get(k)) if isinstance(c, dict) else (lambda k: getattr(c, k, None))
            crop = (int(get("height")), int(get("width")))
        resample = int(getattr(processor, "resample", 3))
        if resample not in _RESAMPLE:
            raise SurrogateError(
                f"image_processor.resample={resample} is not supported: use 2 (bilinear) or 3 (bicubic)"
            )
        norm = getattr(processor, "do_normalize", True)
        return cls(
            shortest_edge=shortest,
            size=size,
            crop=crop,
            mean=tuple(float(v) for v in processor.image_mean) if norm else None,
            std=tuple(float(v) for v in processor.image_std),
            mode=_RESAMPLE[resample],
        )

    def to_processor(self):
        """A ``CLIPImageProcessor`` doing the same on a [0, 1] float tensor (``do_rescale=False``)."""
        from transformers import CLIPImageProcessor

        kw: dict = {"do_rescale": False, "resample": 3 if self.mode == "bicubic" else 2}
        if self.shortest_edge is not None:
            kw["size"] = {"shortest_edge": self.shortest_edge}
        elif self.size is not None:
            kw["size"] = {"height": self.size[0], "width": self.size[1]}
        else:
            kw["do_resize"] = False
        if self.crop is not None:
            kw["crop_size"] = {"height": self.crop[0], "width": self.crop[1]}
        else:
            kw["do_center_crop"] = False
        if self.mean is not None:
            kw.update(image_mean=list(self.mean), image_std=list(self.std))
        else:
            kw["do_normalize"] = False
        return CLIPImageProcessor(**kw)


def clip_preprocess(image: Tensor, cfg: ClipPreprocess) -> Tensor:
    """Differentiable CLIP image preprocessing (transformers ``CLIPImageProcessor`` semantics, in torch).

    Resize (shortest side to ``cfg.shortest_edge``, the long side truncated with ``int()`` as transformers'
    ``get_resize_output_image_size`` does; antialiased as torchvision's resize), centre crop (offsets
    ``int((size - crop) / 2)``, zero padding when the crop is larger), normalise with ``cfg.mean`` / ``cfg.std``.

    Args:
        image: (B, 3, H, W) in [0, 1].
        cfg: the processor settings.

    Returns:
        (B, 3, crop_h, crop_w) float32 pixel values for ``CLIPVisionModel``.
    """
    x = image.float()
    h, w = x.shape[-2:]
    new = None
    if cfg.shortest_edge is not None:
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = cfg.shortest_edge, int(cfg.shortest_edge * long / short)
        new = (new_long, new_short) if w <= h else (new_short, new_long)
    elif cfg.size is not None:
        new = cfg.size
    if new is not None and tuple(new) != (h, w):
        x = F.interpolate(x, size=tuple(new), mode=cfg.mode, align_corners=False, antialias=True)
    if cfg.crop is not None:
        ch, cw = cfg.crop
        h, w = x.shape[-2:]
        if ch > h or cw > w:
            pad_w, pad_h = max(cw - w, 0), max(ch - h, 0)
            x = F.pad(x, (pad_w // 2, (pad_w + 1) // 2, pad_h // 2, (pad_h + 1) // 2))
            h, w = x.shape[-2:]
        top, left = int((h - ch) / 2.0), int((w - cw) / 2.0)
        x = x[..., top : top + ch, left : left + cw]
    if cfg.mean is not None:
        mean = torch.tensor(cfg.mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
        std = torch.tensor(cfg.std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
        x = (x - mean) / std
    return x


@dataclass
class WanConditioning:
    """The image conditioning of one batch, as ``WanImageToVideoPipeline`` builds it.

    Attributes:
        condition: (B, 4 + z, T, h, w) ``cat([mask, normalised latent of [photo, zero frames]])``.
        image_embeds: (B, tokens, clip_dim) CLIP ``hidden_states[-2]``.
        image_latent: (B, z, 1, h, w) normalised latent of the photo (first latent frame), float32.
    """

    condition: Tensor
    image_embeds: Tensor
    image_latent: Tensor


# --------------------------------------------------------------------------- the adapter
class Wan21Surrogate(Surrogate):
    """Wan 2.1 I2V (14B, 480P/720P) as an Anti-I2V surrogate.

    Args:
        transformer: ``WanTransformer3DModel`` with the I2V config (``in_channels = 2 * z_dim + 4``,
            ``image_dim`` and ``added_kv_proj_dim`` set).
        vae: ``AutoencoderKLWan`` (Wan 2.1 VAE: ``is_residual=False``, no ``patch_size``).
        image_encoder: transformers ``CLIPVisionModel`` (hidden size = ``transformer.config.image_dim``).
        scheduler: ``UniPCMultistepScheduler`` (``use_flow_sigmas=True``, ``prediction_type="flow_prediction"``)
            or ``FlowMatchEulerDiscreteScheduler``; its config gives the shift and the training range.
        image_processor: ``CLIPImageProcessor`` (its settings are redone in torch) or a :class:`ClipPreprocess`;
            None: CLIP defaults at the image encoder's ``image_size``.
        num_frames: pixel frames of the conditioning video, ``4k + 1`` (public, read at every forward).
        dtype: compute dtype (the modules are used in the dtype they have; inputs are cast to each module's).
        gradient_checkpointing: recompute transformer blocks in backward.
        early_exit: stop the transformer after the deepest requested block.
        prompt_embeds: umT5 embedding (1, <=512, text_dim), a safetensors path, or None
            (``<folder>/prompt_embeds.safetensors``, else zeros).
        folder: the model folder (for the prompt embeddings file).
        working_size: (height, width) of the optimisation, multiples of 16; None: per photo, its aspect ratio
            kept at about the area of 480 x 832 (Wan 480P), never upscaled (:meth:`working_size`).
    """

    family: ClassVar[str] = "wan21"
    generates_latents: ClassVar[bool] = True
    native_size: ClassVar[tuple[int, int] | None] = None
    default_size: ClassVar[tuple[int, int]] = (480, 832)
    size_multiple: ClassVar[int] = 16

    def __init__(
        self,
        *,
        transformer: nn.Module,
        vae: nn.Module,
        image_encoder: nn.Module,
        scheduler,
        image_processor=None,
        num_frames: int = DEFAULT_NUM_FRAMES,
        dtype: torch.dtype = torch.float32,
        gradient_checkpointing: bool = False,
        early_exit: bool = True,
        prompt_embeds: Tensor | str | Path | None = None,
        folder: str | Path | None = None,
        working_size: tuple[int, int] | None = None,
    ) -> None:
        super().__init__(
            num_frames=num_frames,
            dtype=dtype,
            gradient_checkpointing=gradient_checkpointing,
            early_exit=early_exit,
            working_size=working_size,
        )
        self.transformer = transformer
        self.vae = vae
        self.image_encoder = image_encoder
        self.scheduler = scheduler
        self._check_components()
        _install_output_capturing_hooks(image_encoder)
        self._check_frames(self.num_frames)
        if working_size is not None:
            self._check_size(*working_size, what="working_size")
        if isinstance(image_processor, ClipPreprocess):
            self.clip_cfg = image_processor
        elif image_processor is not None:
            self.clip_cfg = ClipPreprocess.from_processor(image_processor)
        else:
            n = int(image_encoder.config.image_size)
            self.clip_cfg = ClipPreprocess(shortest_edge=n, crop=(n, n))
        text_dim = int(transformer.config.text_dim)
        try:
            emb, self.prompt_source = resolve_prompt_embeds(
                prompt_embeds, folder=folder, shape=(1, TEXT_TOKENS, text_dim)
            )
        except (ValueError, FileNotFoundError) as e:
            raise SurrogateError(f"prompt_embeds: {e}") from e
        if emb.shape[0] != 1:
            raise SurrogateError(f"prompt_embeds must hold one prompt (1, tokens, {text_dim}), got {tuple(emb.shape)}")
        if emb.shape[1] > TEXT_TOKENS:
            raise SurrogateError(
                f"prompt_embeds has {emb.shape[1]} tokens; Wan 2.1 takes at most {TEXT_TOKENS} umT5 tokens"
            )
        if emb.shape[1] < TEXT_TOKENS:  # the pipeline zero-pads every prompt to 512 tokens
            emb = torch.cat([emb, emb.new_zeros(1, TEXT_TOKENS - emb.shape[1], text_dim)], dim=1)
        self.prompt_embeds = emb.to(self.device)
        cfg = vae.config
        self._latents_mean = torch.tensor(cfg.latents_mean, dtype=torch.float32).view(1, -1, 1, 1, 1)
        self._latents_inv_std = 1.0 / torch.tensor(cfg.latents_std, dtype=torch.float32).view(1, -1, 1, 1, 1)
        self._move_extras(self.device)

    # ----------------------------------------------------------------- checks and sizes
    def _check_components(self) -> None:
        tc, vc = self.transformer.config, self.vae.config
        if getattr(tc, "image_dim", None) is None or getattr(tc, "added_kv_proj_dim", None) is None:
            raise SurrogateError(
                "transformer: not a Wan 2.1 I2V transformer (image_dim / added_kv_proj_dim are not set: this is a "
                "Wan 2.1 T2V or a Wan 2.2 model, which this surrogate does not support)"
            )
        if getattr(vc, "is_residual", False) or getattr(vc, "patch_size", None) is not None:
            raise SurrogateError("vae: this is the Wan 2.2 VAE (is_residual / patch_size); Wan 2.1 needs its own VAE")
        z, t = int(vc.z_dim), int(vc.scale_factor_temporal or 4)
        if int(tc.in_channels) != 2 * z + t or int(tc.out_channels or tc.in_channels) != z:
            raise SurrogateError(
                f"transformer: in_channels={tc.in_channels}, out_channels={tc.out_channels} do not fit the VAE "
                f"(z_dim={z}): Wan 2.1 I2V needs in_channels={2 * z + t} (noisy latent + mask + condition latent) "
                f"and out_channels={z}"
            )
        clip_dim = int(self.image_encoder.config.hidden_size)
        if clip_dim != int(tc.image_dim):
            raise SurrogateError(
                f"image_encoder: hidden size {clip_dim} does not match transformer.config.image_dim={tc.image_dim}"
            )
        name = type(self.scheduler).__name__
        sc = self.scheduler.config
        if name not in _SCHEDULERS:
            raise SurrogateError(f"scheduler: {name} is not supported; use one of {', '.join(_SCHEDULERS)}")
        if name == "UniPCMultistepScheduler" and not (
            sc.get("use_flow_sigmas", False) and sc.get("prediction_type") == "flow_prediction"
        ):
            raise SurrogateError(
                "scheduler: UniPCMultistepScheduler must be the flow-matching one of Wan "
                "(use_flow_sigmas=True, prediction_type='flow_prediction')"
            )
        if sc.get("use_dynamic_shifting", False):
            raise SurrogateError("scheduler: use_dynamic_shifting=True is not supported (Wan 2.1 uses a fixed shift)")

    def _check_frames(self, num_frames: int) -> int:
        t = self.temporal_factor
        if int(num_frames) != num_frames or num_frames < 1 or (num_frames - 1) % t != 0:
            raise SurrogateError(
                f"num_frames must be {t}k+1 (1, {t + 1}, {2 * t + 1}, ..., 81) for Wan 2.1, got {num_frames}"
            )
        return int(num_frames)

    def _check_size(self, height: int, width: int, *, what: str = "image") -> None:
        m = self.size_multiple
        if height % m or width % m or height < m or width < m:
            raise SurrogateError(
                f"{what} size {height}x{width} is not supported by Wan 2.1: height and width must be positive "
                f"multiples of {m} (VAE factor 8 x patch 2); resize to the working size {self.working_size(height, width)}"
            )

    def working_size(self, height: int, width: int) -> tuple[int, int]:
        """The (height, width) the optimisation (and :meth:`generate`) runs at for a ``height`` x ``width`` photo.

        The constructor's ``working_size`` when given. Otherwise the photo's aspect ratio is kept: it is scaled to
        about the area of :attr:`default_size` (480 x 832), never up, and each side is floored to a multiple of
        16 (at least 16) - the rule of ComfyUI's native surrogates (``NativeSurrogate.working_size``).
        """
        if self._working_size is not None:
            return (int(self._working_size[0]), int(self._working_size[1]))
        if height < 1 or width < 1:
            raise SurrogateError(f"photo size must be positive, got {height}x{width}")
        m = self.size_multiple
        area = self.default_size[0] * self.default_size[1]
        scale = min(1.0, math.sqrt(area / float(height * width)))
        return (max(m, int(height * scale) // m * m), max(m, int(width * scale) // m * m))

    @property
    def temporal_factor(self) -> int:
        return int(self.vae.config.scale_factor_temporal or 4)

    @property
    def spatial_factor(self) -> int:
        return int(self.vae.config.scale_factor_spatial or 8)

    @property
    def z_dim(self) -> int:
        return int(self.vae.config.z_dim)

    @property
    def num_train_timesteps(self) -> int:
        return int(self.scheduler.config.get("num_train_timesteps", 1000))

    @property
    def shift(self) -> float:
        sc = self.scheduler.config
        if type(self.scheduler).__name__ == "UniPCMultistepScheduler":
            return float(sc.get("flow_shift", 1.0))
        return float(sc.get("shift", 1.0))

    def latent_frames(self, num_frames: int | None = None) -> int:
        """Latent frames of a ``num_frames`` video: ``(num_frames - 1) // 4 + 1``."""
        f = self._check_frames(self.num_frames if num_frames is None else num_frames)
        return (f - 1) // self.temporal_factor + 1

    def latent_shape(self, batch: int, height: int, width: int) -> tuple[int, ...]:
        """Shape of the video latent (and of the noise) for images of the given size at :attr:`num_frames`."""
        s = self.spatial_factor
        return (batch, self.z_dim, self.latent_frames(), height // s, width // s)

    def describe(self) -> dict:
        d = super().describe()
        d.update(
            prompt_embeds=self.prompt_source,
            scheduler=type(self.scheduler).__name__,
            shift=self.shift,
            latent_frames=self.latent_frames(),
        )
        return d

    # ----------------------------------------------------------------- protocol
    def denoiser(self) -> nn.Module:
        return self.transformer

    def denoiser_blocks(self) -> Sequence[tuple[str, nn.Module]]:
        return [(f"transformer.blocks.{i}", b) for i, b in enumerate(self.transformer.blocks)]

    def vae_encoder_layers(self) -> Sequence[tuple[str, nn.Module]]:
        return encoder_layers(self.vae.encoder, "vae.encoder")

    def modules(self) -> list[nn.Module]:
        return [self.transformer, self.vae, self.image_encoder]

    def _move_extras(self, device: torch.device) -> None:
        self.prompt_embeds = self.prompt_embeds.to(device)
        self._latents_mean = self._latents_mean.to(device)
        self._latents_inv_std = self._latents_inv_std.to(device)

    def sample_noise(
        self, batch: int, generator: torch.Generator, *, size: tuple[int, int] | None = None
    ) -> NoiseDraw:
        """Timestep and noise for one iteration, drawn on CPU with ``generator`` (see the module docstring).

        Args:
            batch: images per draw.
            generator: CPU generator (reproducible on every device); the draws are then moved to :attr:`device`.
            size: (height, width) in pixels of the images the draw is for: the photo's :meth:`working_size`,
                which depends on the photo's aspect ratio unless a ``working_size`` was given. None:
                ``working_size(*default_size)`` (480 x 832, or the fixed working size).

        The noise has the video-latent shape for images of ``size`` at the current :attr:`num_frames`;
        ``timestep`` is float32 ``sigma * num_train_timesteps`` (shifted sigmas). The timestep is drawn first, so
        the size does not change it.
        """
        h, w = self.working_size(*self.default_size) if size is None else (int(size[0]), int(size[1]))
        self._check_size(h, w, what="sample_noise size")
        n = self.num_train_timesteps
        index = torch.randint(1, n + 1, (batch,), generator=generator)
        s = index.double() / n
        sigma = self.shift * s / (1.0 + (self.shift - 1.0) * s)
        timestep = (sigma * n).float()
        noise = torch.randn(self.latent_shape(batch, h, w), generator=generator)
        return NoiseDraw(timestep=timestep.to(self.device), noise=noise.to(self.device))

    # ----------------------------------------------------------------- conditioning
    def _encode_video(self, video: Tensor) -> Tensor:
        """Normalised VAE posterior mode of ``video`` (B, 3, F, H, W) in [-1, 1], float32."""
        vae_dtype = next(self.vae.parameters()).dtype
        lat = self.vae.encode(video.to(device=self.device, dtype=vae_dtype)).latent_dist.mode()
        return (lat.float() - self._latents_mean) * self._latents_inv_std

    def image_embeds(self, image: Tensor) -> Tensor:
        """CLIP ``hidden_states[-2]`` of ``image`` (B, 3, H, W) in [0, 1], as ``pipeline.encode_image``."""
        pixels = clip_preprocess(image, self.clip_cfg)
        enc_dtype = next(self.image_encoder.parameters()).dtype
        out = self.image_encoder(pixel_values=pixels.to(device=self.device, dtype=enc_dtype), output_hidden_states=True)
        return out.hidden_states[-2]

    def encode_condition(self, image: Tensor, *, num_frames: int | None = None) -> WanConditioning:
        """The pipeline's image conditioning for ``image`` (B, 3, H, W) in [0, 1] (differentiable).

        ``WanImageToVideoPipeline.prepare_latents`` (no last image, ``expand_timesteps=False``) and
        ``encode_image``: see the module docstring.
        """
        frames = self._check_frames(self.num_frames if num_frames is None else num_frames)
        b, _, h, w = image.shape
        self._check_size(h, w)
        x = image.to(device=self.device, dtype=torch.float32) * 2.0 - 1.0  # VideoProcessor.preprocess
        video = torch.cat([x.unsqueeze(2), x.new_zeros(b, 3, frames - 1, h, w)], dim=2)
        latent = self._encode_video(video)
        t, s = self.temporal_factor, self.spatial_factor
        lh, lw = h // s, w // s
        mask = torch.ones(b, 1, frames, lh, lw, device=latent.device, dtype=latent.dtype)
        mask[:, :, 1:] = 0
        first = torch.repeat_interleave(mask[:, :, 0:1], dim=2, repeats=t)
        mask = torch.cat([first, mask[:, :, 1:]], dim=2)
        mask = mask.view(b, -1, t, lh, lw).transpose(1, 2)
        condition = torch.cat([mask, latent], dim=1)
        return WanConditioning(
            condition=condition, image_embeds=self.image_embeds(image), image_latent=latent[:, :, :1]
        )

    def denoiser_inputs(
        self,
        image: Tensor | None,
        noisy_latents: Tensor,
        timestep: Tensor,
        *,
        conditioning: WanConditioning | None = None,
    ) -> dict:
        """Keyword arguments of ``transformer(...)`` exactly as the pipeline's denoising loop builds them.

        Args:
            image: (B, 3, H, W) in [0, 1]; may be None when ``conditioning`` is given.
            noisy_latents: (B, z, T, h, w) noisy video latent.
            timestep: (B,) or scalar timestep (``sigma * num_train_timesteps``).
            conditioning: precomputed :meth:`encode_condition` of ``image``.

        Returns:
            ``hidden_states`` (B, 36, T, h, w), ``timestep`` (B,), ``encoder_hidden_states`` (B, 512, text_dim)
            and ``encoder_hidden_states_image`` (B, tokens, clip_dim), cast to the transformer's dtype.
        """
        if conditioning is None:
            if image is None:
                raise SurrogateError("denoiser_inputs: pass image or conditioning")
            conditioning = self.encode_condition(image)
        cond = conditioning.condition
        if noisy_latents.shape[0] != cond.shape[0] or noisy_latents.shape[2:] != cond.shape[2:]:
            raise SurrogateError(
                f"noisy_latents has shape {tuple(noisy_latents.shape)} but the conditioning latent has shape "
                f"{tuple(cond.shape)}: batch, frames and size must match"
            )
        tdtype = self.transformer.dtype
        b = noisy_latents.shape[0]
        timestep = torch.as_tensor(timestep, device=self.device)
        if timestep.ndim == 0:
            timestep = timestep.expand(b)
        return {
            "hidden_states": torch.cat([noisy_latents.to(cond), cond], dim=1).to(tdtype),
            "timestep": timestep,
            "encoder_hidden_states": self.prompt_embeds.to(tdtype).expand(b, -1, -1),
            "encoder_hidden_states_image": conditioning.image_embeds.to(tdtype),
        }

    # ----------------------------------------------------------------- protocol: conditioning, forward process
    def encode(self, image: Tensor) -> Conditioning:
        """The photo's conditioning: its normalised VAE latent (B, z, 1, h, w) float32, encoded alone.

        The photo alone is the VAE's first temporal chunk of the pipeline's ``[photo, zero frames]`` video, so its
        latent and VAE-encoder features are those of the pipeline's conditioning. The rest of the conditioning
        (condition latent with mask, CLIP tokens) is built by :meth:`conditioning` when the denoiser needs it.
        ``parts``: ``image`` (the photo, float32 on the device) and ``grad`` (whether gradients were on).
        """
        b, _, h, w = image.shape
        self._check_size(h, w)
        self._check_frames(self.num_frames)
        x = image.to(device=self.device, dtype=torch.float32)
        latent = self._encode_video((x * 2.0 - 1.0).unsqueeze(2))
        return Conditioning(latent=latent, parts={"image": x, "grad": torch.is_grad_enabled()})

    def image_embedding(self, cond: Conditioning) -> Tensor | None:
        """The CLIP image tokens the transformer sees (``hidden_states[-2]``) of the conditioned photo."""
        image = cond.parts.get("image")
        return None if image is None else self.image_embeds(image)

    def conditioning(self, cond: Conditioning) -> WanConditioning:
        """The pipeline's conditioning (:meth:`encode_condition`) of the photo in ``cond``, built once and kept.

        Kept in ``cond.parts`` per latent frame count (a changed :attr:`num_frames` rebuilds it) and per need for
        a graph: it is built with gradients only when they are on now, were on in :meth:`encode`, and the photo
        requires grad (a cached, detached conditioning never builds a graph).
        """
        image = cond.parts.get("image")
        if image is None:
            raise SurrogateError("this conditioning was not made by Wan21Surrogate.encode (no 'image' part)")
        graph = bool(torch.is_grad_enabled() and cond.parts.get("grad", True) and image.requires_grad)
        key = (self.latent_frames(), graph)
        kept = cond.parts.get("wan")
        if kept is None or kept[0] != key:
            with torch.set_grad_enabled(graph):
                kept = (key, self.encode_condition(image))
            cond.parts["wan"] = kept
        return kept[1]

    def clean_latent(self, cond: Conditioning) -> Tensor:
        """The still video ``x0``: the photo's normalised latent repeated over the latent frames (B, z, T, h, w),
        float32 (an expanded view; the shape of :meth:`sample_noise`'s noise)."""
        lat = cond.latent
        return lat.float().expand(-1, -1, self.latent_frames(), -1, -1)

    def noisy_latent(self, x0: Tensor, draw: NoiseDraw) -> Tensor:
        """``z_t = (1 - sigma) x0 + sigma * noise`` with ``sigma = timestep / num_train_timesteps`` (float32)."""
        noise = self.noise_for(x0, draw, self.spatial_factor)
        sigma = (draw.timestep.to(device=self.device, dtype=torch.float32) / self.num_train_timesteps).view(-1, 1, 1, 1, 1)
        return (1.0 - sigma) * x0.float() + sigma * noise

    def prediction_target(self, x0: Tensor, draw: NoiseDraw) -> Tensor:
        """The flow velocity ``noise - x0`` (float32)."""
        return self.noise_for(x0, draw, self.spatial_factor) - x0.float()

    def denoise(self, cond: Conditioning, noisy: Tensor, draw: NoiseDraw) -> Tensor:
        """The transformer on ``cat([z_t, mask, condition latent])`` with the CLIP tokens (:meth:`denoiser_inputs`)."""
        kwargs = self.denoiser_inputs(None, noisy, draw.timestep, conditioning=self.conditioning(cond))
        return self.transformer(**kwargs, return_dict=False)[0]

    # ----------------------------------------------------------------- generation
    def pipeline(self):
        """A ``WanImageToVideoPipeline`` on this adapter's modules (no text encoder, a fresh scheduler copy).

        Its image processor is this adapter's CLIP settings with ``do_rescale=False``: it takes [0, 1] tensors.
        """
        from diffusers import WanImageToVideoPipeline

        pipe = WanImageToVideoPipeline(
            tokenizer=None,
            text_encoder=None,
            vae=self.vae,
            scheduler=type(self.scheduler).from_config(self.scheduler.config),
            image_processor=self.clip_cfg.to_processor(),
            image_encoder=self.image_encoder,
            transformer=self.transformer,
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe

    @torch.no_grad()
    def generate(
        self,
        image: Tensor,
        *,
        num_inference_steps: int = 3,
        seed: int = 0,
        num_frames: int | None = None,
        guidance_scale: float = 1.0,
        output_type: str = "pt",
    ) -> Tensor:
        """A short I2V video of ``image`` with the real ``WanImageToVideoPipeline`` (cached prompt embeddings).

        ``output_type="latent"`` returns the generated latent video instead, (1, z, T, h, w) float32 on CPU, in the
        convention of :meth:`clean_latent` (normalised): :meth:`generate_latent`.

        Args:
            image: (3, H, W) or (1, 3, H, W) in [0, 1], resized to :meth:`working_size` of its size: the size
                the attack ran at, so the video shows what the protected pixels do to the model.
            num_inference_steps: sampler steps.
            seed: seed of the initial noise (CPU generator): same seed, same video.
            num_frames: frames (``4k + 1``); default :attr:`num_frames`.
            guidance_scale: classifier-free guidance; > 1 uses a zero negative prompt embedding.

        Returns:
            (F, 3, h, w) float32 video in [0, 1], on CPU.
        """
        from ..protect import resize_to

        if int(num_inference_steps) < 1:
            raise SurrogateError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
        frames = self._check_frames(self.num_frames if num_frames is None else num_frames)
        x = image.unsqueeze(0) if image.ndim == 3 else image
        if x.ndim != 4 or x.shape[0] != 1 or x.shape[1] != 3:
            raise SurrogateError(f"image must have shape (3, H, W) or (1, 3, H, W), got {tuple(image.shape)}")
        h, w = self.working_size(int(x.shape[-2]), int(x.shape[-1]))
        if tuple(x.shape[-2:]) != (h, w):
            x = resize_to(x.float(), (h, w))
        x = x.to(device=self.device, dtype=torch.float32).clamp(0, 1)
        tdtype = self.transformer.dtype
        pe = self.prompt_embeds.to(tdtype)
        video = self.pipeline()(
            image=x,
            prompt_embeds=pe,
            negative_prompt_embeds=torch.zeros_like(pe) if guidance_scale > 1 else None,
            height=h,
            width=w,
            num_frames=frames,
            num_inference_steps=int(num_inference_steps),
            guidance_scale=float(guidance_scale),
            generator=torch.Generator(device="cpu").manual_seed(int(seed)),
            output_type="latent" if output_type == "latent" else "pt",
            return_dict=False,
        )[0]
        if output_type == "latent":
            return video.float().cpu()
        return video[0].float().cpu().clamp(0, 1)

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_pretrained(
        cls,
        folder: str | Path,
        *,
        num_frames: int = DEFAULT_NUM_FRAMES,
        dtype: torch.dtype = torch.float32,
        gradient_checkpointing: bool = False,
        prompt_embeds: Tensor | str | Path | None = None,
        **kw,
    ) -> "Wan21Surrogate":
        """Load a local diffusers-format Wan 2.1 I2V folder (``Wan-AI/Wan2.1-I2V-14B-480P-Diffusers`` layout).

        Reads ``transformer/``, ``vae/``, ``image_encoder/``, ``scheduler/`` and, if present, ``image_processor/``
        and ``prompt_embeds.safetensors`` (local files only, safetensors only; the text encoder is never loaded).

        Raises:
            SurrogateError: the folder or a component is missing or cannot be loaded, or the folder is Wan 2.2.
        """
        from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler
        from diffusers import WanTransformer3DModel
        from transformers import CLIPImageProcessor, CLIPVisionModel

        folder = Path(folder)
        if not folder.is_dir():
            raise SurrogateError(f"Wan 2.1 model folder {str(folder)!r} does not exist or is not a folder")
        index_path = folder / "model_index.json"
        if index_path.is_file():
            try:
                index = json.loads(index_path.read_text())
            except (OSError, ValueError) as e:
                raise SurrogateError(f"{str(index_path)!r} is not valid JSON: {e}") from e
            t2 = index.get("transformer_2")
            if (t2 and any(t2)) or index.get("boundary_ratio") is not None or index.get("expand_timesteps"):
                raise SurrogateError(
                    f"{str(folder)!r} is a Wan 2.2 model (transformer_2 / boundary_ratio / expand_timesteps); "
                    "only Wan 2.1 I2V is supported"
                )
        required = {
            "transformer": "config.json",
            "vae": "config.json",
            "image_encoder": "config.json",
            "scheduler": "scheduler_config.json",
        }
        for sub, cfg in required.items():
            if not (folder / sub / cfg).is_file():
                raise SurrogateError(
                    f"Wan 2.1 model folder {str(folder)!r} lacks the {sub!r} component "
                    f"(expected {str(folder / sub / cfg)!r})"
                )
        common = {"local_files_only": True, "use_safetensors": True}

        def load(sub: str, fn):
            try:
                return fn()
            except SurrogateError:
                raise
            except Exception as e:  # diffusers/transformers raise OSError, EnvironmentError, ValueError...
                raise SurrogateError(
                    f"could not load the {sub!r} component from {str(folder / sub)!r}: {e}"
                ) from e

        transformer = load("transformer", lambda: load_diffusers_model(WanTransformer3DModel, folder, "transformer", dtype))
        vae = load("vae", lambda: load_diffusers_model(AutoencoderKLWan, folder, "vae", dtype))
        image_encoder = load("image_encoder", lambda: CLIPVisionModel.from_pretrained(
            folder, subfolder="image_encoder", dtype=dtype, **common))
        sched_cfg = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
        sched_name = sched_cfg.get("_class_name", "UniPCMultistepScheduler")
        sched_cls = {"UniPCMultistepScheduler": UniPCMultistepScheduler,
                     "FlowMatchEulerDiscreteScheduler": FlowMatchEulerDiscreteScheduler}.get(sched_name)
        if sched_cls is None:
            raise SurrogateError(
                f"{str(folder / 'scheduler')!r}: scheduler {sched_name} is not supported; use one of {', '.join(_SCHEDULERS)}"
            )
        scheduler = load("scheduler", lambda: sched_cls.from_pretrained(folder, subfolder="scheduler", local_files_only=True))
        processor = None
        if (folder / "image_processor" / "preprocessor_config.json").is_file():
            processor = load("image_processor", lambda: CLIPImageProcessor.from_pretrained(
                folder, subfolder="image_processor", local_files_only=True))
        for m in (transformer, vae, image_encoder):
            m.eval().requires_grad_(False)
        return cls(
            transformer=transformer,
            vae=vae,
            image_encoder=image_encoder,
            scheduler=scheduler,
            image_processor=processor,
            num_frames=num_frames,
            dtype=dtype,
            gradient_checkpointing=gradient_checkpointing,
            prompt_embeds=prompt_embeds,
            folder=folder,
            **kw,
        )

    @classmethod
    def tiny(
        cls,
        *,
        seed: int = 0,
        num_frames: int = TINY_NUM_FRAMES,
        dtype: torch.dtype = torch.float32,
        num_layers: int = 4,
        working_size: tuple[int, int] | None = (32, 48),
        **kw,
    ) -> "Wan21Surrogate":
        """A tiny random-weight Wan 2.1 I2V of the real classes (about 0.1 M parameters; builds in tens of ms).

        Transformer: 4 blocks, 2 heads x 12, text_dim 32, image_dim 16 (I2V: in_channels 36, added K/V).
        VAE: base_dim 4, z_dim 16, one residual block per level (7 down blocks + mid block). CLIP: 2 layers,
        hidden 16, 24 x 24 input (patch 8), so the default 32 x 48 working size exercises resize and crop.
        UniPC flow scheduler with ``flow_shift=3.0`` (Wan 480P). The prompt embedding is a seeded random
        8-token prompt zero-padded to 512 tokens. ``working_size=None`` gives the real model's per-photo rule
        (aspect kept, about 480 x 832 pixels, never upscaled; see :meth:`working_size`).
        """
        from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanTransformer3DModel
        from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            transformer = WanTransformer3DModel(
                patch_size=(1, 2, 2),
                num_attention_heads=2,
                attention_head_dim=12,
                in_channels=36,
                out_channels=16,
                text_dim=32,
                freq_dim=32,
                ffn_dim=32,
                num_layers=num_layers,
                cross_attn_norm=True,
                qk_norm="rms_norm_across_heads",
                image_dim=16,
                added_kv_proj_dim=24,
                rope_max_seq_len=32,
            )
            vae = AutoencoderKLWan(
                base_dim=4, z_dim=16, dim_mult=[1, 1, 2, 2], num_res_blocks=1, temperal_downsample=[False, True, True]
            )
            image_encoder = CLIPVisionModel(
                CLIPVisionConfig(
                    hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                    image_size=24, patch_size=8,
                )
            )
            if "prompt_embeds" not in kw:
                emb = torch.zeros(1, TEXT_TOKENS, 32)
                emb[:, :8] = torch.randn(1, 8, 32)
                kw["prompt_embeds"] = emb
        for m in (transformer, vae, image_encoder):
            _cast(m, dtype)
            m.eval().requires_grad_(False)
        scheduler = UniPCMultistepScheduler(
            prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0, num_train_timesteps=1000
        )
        processor = CLIPImageProcessor(size={"shortest_edge": 24}, crop_size={"height": 24, "width": 24})
        return cls(
            transformer=transformer,
            vae=vae,
            image_encoder=image_encoder,
            scheduler=scheduler,
            image_processor=processor,
            num_frames=num_frames,
            dtype=dtype,
            working_size=working_size,
            **kw,
        )

    @classmethod
    def save_tiny(cls, folder: str | Path, seed: int = 0) -> Path:
        """Write :meth:`tiny` as a diffusers-format Wan 2.1 I2V folder (safetensors) plus its prompt embedding."""
        from diffusers import WanImageToVideoPipeline
        from transformers import CLIPImageProcessor

        from .prompts import PROMPT_FILE

        s = cls.tiny(seed=seed)
        folder = Path(folder)
        processor = CLIPImageProcessor(size={"shortest_edge": 24}, crop_size={"height": 24, "width": 24})
        pipe = WanImageToVideoPipeline(
            tokenizer=None,
            text_encoder=None,
            vae=s.vae,
            scheduler=s.scheduler,
            image_processor=processor,
            image_encoder=s.image_encoder,
            transformer=s.transformer,
        )
        pipe.save_pretrained(folder, safe_serialization=True)
        save_prompt_embeds(s.prompt_embeds, folder / PROMPT_FILE)
        return folder


def _cast(module: nn.Module, dtype: torch.dtype) -> None:
    """Cast ``module`` to ``dtype`` keeping its ``_keep_in_fp32_modules`` in float32 (as from_pretrained does)."""
    if dtype == torch.float32:
        return
    nn.Module.to(module, dtype)
    _keep_fp32(module)


def _keep_fp32(module: nn.Module) -> None:
    """Put the parameters and buffers named in ``module._keep_in_fp32_modules`` back in float32 (diffusers rule:
    a name component equals an entry, e.g. ``scale_shift_table`` or ``blocks.0.norm2.weight``)."""
    keep = getattr(module, "_keep_in_fp32_modules", None) or []
    if not keep:
        return
    for name, t in list(module.named_parameters()) + list(module.named_buffers()):
        if t.is_floating_point() and t.dtype != torch.float32 and any(k in name.split(".") for k in keep):
            t.data = t.data.float()


_WEIGHTS = "diffusion_pytorch_model.safetensors"


def load_diffusers_model(model_cls, folder: str | Path, subfolder: str, dtype: torch.dtype, *,
                         prefer_from_pretrained: bool = True) -> nn.Module:
    """Load a diffusers model from ``<folder>/<subfolder>`` (local files, safetensors only).

    With ``accelerate`` installed this is ``model_cls.from_pretrained(..., local_files_only=True,
    use_safetensors=True)``. Without it (ComfyUI does not install accelerate) diffusers 0.42 refuses models
    with ``_keep_in_fp32_modules`` such as ``WanTransformer3DModel``; then the model is built from its config
    in ``dtype`` without random initialisation and its (possibly sharded) safetensors are loaded strictly,
    keeping ``_keep_in_fp32_modules`` in float32 as from_pretrained does.

    Raises:
        SurrogateError: no safetensors weights, or the weights do not match the config (missing/unexpected keys).
    """
    from diffusers.utils import is_accelerate_available
    from safetensors.torch import load_file

    folder = Path(folder)
    if prefer_from_pretrained and is_accelerate_available():
        return model_cls.from_pretrained(
            folder, subfolder=subfolder, torch_dtype=dtype, local_files_only=True, use_safetensors=True
        )
    path = folder / subfolder
    index = path / f"{_WEIGHTS}.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (path / _WEIGHTS).is_file():
        files = [_WEIGHTS]
    else:
        raise SurrogateError(f"{str(path)!r} holds no safetensors weights ({_WEIGHTS} or its .index.json)")
    config = model_cls.load_config(path, local_files_only=True)
    try:
        from diffusers.models.modeling_utils import no_init_weights
    except ImportError:  # pragma: no cover - older diffusers
        import contextlib

        no_init_weights = contextlib.nullcontext
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with no_init_weights():
            model = model_cls.from_config(config)
    finally:
        torch.set_default_dtype(previous)
    if dtype != torch.float32:
        _keep_fp32(model)
    expected = set(model.state_dict().keys())
    seen: set[str] = set()
    for f in files:
        state = load_file(str(path / f))
        unexpected = sorted(set(state) - expected)
        if unexpected:
            raise SurrogateError(f"{str(path / f)!r} has weights the config does not define: {unexpected[:5]}")
        model.load_state_dict(state, strict=False)
        seen |= set(state)
    missing = sorted(expected - seen)
    if missing:
        raise SurrogateError(f"{str(path)!r} lacks weights for {len(missing)} tensors, e.g. {missing[:5]}")
    return model.eval()


def _install_output_capturing_hooks(model: nn.Module) -> None:
    """Install transformers' hidden-state capturing hooks now, not lazily on the first forward.

    transformers >= 5 collects ``output_hidden_states`` with forward hooks that it installs on the first call
    and then marks as installed. If that first call happens inside ``protect.frozen_models`` (which removes
    every hook added during the loop), later calls silently return no hidden states. Installing them when the
    adapter is built makes them part of the model's state before any loop starts. No-op on transformers 4.
    """
    try:
        from transformers.utils.output_capturing import maybe_install_capturing_hooks
    except ImportError:  # transformers 4: hidden states are returned without hooks
        return
    try:
        maybe_install_capturing_hooks(model)
    except Exception:  # pragma: no cover - a model without recordable outputs: fall back to lazy installation
        pass
