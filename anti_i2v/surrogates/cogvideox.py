"""CogVideoX image-to-video surrogate (CogVideoX-5B-I2V and relatives: an MM-DiT on a causal 3D VAE).

How the photo enters the model (diffusers ``CogVideoXImageToVideoPipeline``, 0.42.1, ``prepare_latents`` and the
denoising loop), reproduced here without the pipeline's ``no_grad`` ``__call__``:

1. the image in [0, 1] becomes ``2 x - 1``, gets a time axis of one frame and goes through
   ``AutoencoderKLCogVideoX.encode``; the latent is multiplied by ``vae.config.scaling_factor`` (or divided by
   it when ``vae.config.invert_scale_latents``, as for CogVideoX 1.5);
2. the image latent is zero-padded in time to the video's latent frame count ``(F - 1) // 4 + 1`` (rounded up to
   a multiple of ``patch_size_t`` for CogVideoX 1.5) and concatenated with the noisy video latent on the channel
   axis: ``in_channels = 2 x latent channels`` (32 = 2 x 16 for the real model);
3. the transformer also receives the cached T5 prompt embeddings (226 tokens), the timestep, 3D rotary position
   embeddings when ``use_rotary_positional_embeddings`` and ``ofs = 2.0`` when ``ofs_embed_dim`` is set.

Differences from the pipeline, on purpose:

* the image latent is the posterior **mode** (mean) instead of a sample: the attack then has no sampling noise
  from the VAE (PhotoGuard and Mist do the same). The equivalence test uses a VAE with a vanishing posterior
  variance so the pipeline's sample equals the mode;
* the noisy video latent ``z_t`` is the *forward process* (``scheduler.add_noise`` at a random training
  timestep) applied to a "still video" ``x0``: an image latent repeated over all latent frames, as in CogVideoX
  I2V fine-tuning, instead of the pure noise the sampler starts from. The protect loop passes the **clean**
  photo's still video (:meth:`~.base.Surrogate.clean_latent` of its conditioning) as ``clean=`` to both passes
  of an iteration, so the target pass and the adversarial pass see one ``z_t`` and only the image conditioning
  differs, as in Anti-I2V's IRA (Eq. 3-4: ``eps^m(z_t, z_xi, t, y)`` against ``eps^m(z_t, z_psi, t, y)``); the
  perturbation's gradient then flows only through the conditioning, the path the sampler takes. Without
  ``clean=`` (or with ``request.own_latent``, AdvDM) ``x0`` is the passed image's own latent;
* **learned positional embeddings** (CogVideoX-5B-I2V): diffusers accepts only the trained resolution (480x720)
  and, for any frame count other than the trained 49, silently switches to sin-cos embeddings the model never
  saw. This adapter instead slices the learned table to the first ``L`` latent frames (the token order is
  frame-major), by swapping the table for a slice for the duration of one call and restoring it in ``finally``.
  The weights are never changed. :meth:`CogVideoXSurrogate.generate` uses the same slice.

Protocol mapping (:class:`~.base.Surrogate`): :meth:`~CogVideoXSurrogate.encode` runs the VAE and returns the
scaled image latent (B, 1, C, h, w) as ``Conditioning.latent``; :meth:`~CogVideoXSurrogate.clean_latent` is that
latent in float32 expanded to (B, L, C, h, w); :meth:`~CogVideoXSurrogate.denoise` pads the conditioning latent in
time, concatenates it to ``z_t`` and runs the transformer.

Prediction target: CogVideoX is trained with v-prediction (``scheduler.config.prediction_type ==
"v_prediction"``): ``v = sqrt(abar_t) * noise - sqrt(1 - abar_t) * x0`` (``scheduler.get_velocity``), where ``x0``
is the still video ``z_t`` was built from. ``epsilon`` configs get the noise as target and ``sample`` configs
``x0``.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Iterator, Sequence

import torch
from torch import Tensor, nn

from .base import Conditioning, NoiseDraw, Surrogate, SurrogateError, encoder_layers
from .prompts import PROMPT_FILE, resolve_prompt_embeds, save_prompt_embeds

__all__ = ["CogVideoXSurrogate", "TINY_TRANSFORMER", "TINY_VAE", "SCHEDULER_CONFIG"]

#: the CogVideoX-5B-I2V scheduler settings (v-prediction, zero terminal SNR, trailing spacing).
SCHEDULER_CONFIG: dict = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": True,
    "steps_offset": 0,
    "prediction_type": "v_prediction",
    "rescale_betas_zero_snr": True,
    "timestep_spacing": "trailing",
    "snr_shift_scale": 1.0,
}

#: tiny transformer: the 5B-I2V layout (learned + rotary positions, 226 text tokens), 4 blocks, 2 heads of 16.
#: sample 8x12 latents -> native 32x48 pixels; trained on 17 frames (5 latent) so 9 frames exercise the slice.
TINY_TRANSFORMER: dict = {
    "num_attention_heads": 2,
    "attention_head_dim": 16,
    "in_channels": 8,
    "out_channels": 4,
    "time_embed_dim": 16,
    "text_embed_dim": 32,
    "num_layers": 4,
    "sample_width": 12,
    "sample_height": 8,
    "sample_frames": 17,
    "patch_size": 2,
    "temporal_compression_ratio": 4,
    "max_text_seq_length": 226,
    "use_rotary_positional_embeddings": True,
    "use_learned_positional_embeddings": True,
}

#: tiny VAE: three down blocks (4x spatial, 4x temporal compression), 4 latent channels.
TINY_VAE: dict = {
    "block_out_channels": (8, 8, 8),
    "down_block_types": ("CogVideoXDownBlock3D",) * 3,
    "up_block_types": ("CogVideoXUpBlock3D",) * 3,
    "latent_channels": 4,
    "layers_per_block": 1,
    "norm_num_groups": 4,
    "temporal_compression_ratio": 4,
    "sample_height": 32,
    "sample_width": 48,
    "scaling_factor": 0.7,
}

_COMPONENTS = ("transformer", "vae", "scheduler")


def _diffusers():
    """Import the diffusers classes lazily (the library imports fast without them)."""
    from diffusers import (
        AutoencoderKLCogVideoX,
        CogVideoXDPMScheduler,
        CogVideoXImageToVideoPipeline,
        CogVideoXTransformer3DModel,
    )

    return AutoencoderKLCogVideoX, CogVideoXDPMScheduler, CogVideoXImageToVideoPipeline, CogVideoXTransformer3DModel


class CogVideoXSurrogate(Surrogate):
    """CogVideoX I2V adapter: ``transformer.transformer_blocks`` and the causal 3D VAE encoder.

    Denoiser blocks are ``transformer.transformer_blocks`` (42 for 5B-I2V); each returns
    ``(video tokens, text tokens)`` and the captured feature is the video tokens, (B, L*h*w/p^2, inner_dim).
    VAE-encoder layers are the encoder's down blocks then its mid block (the natural stages of the encoder;
    each returns ``(hidden states, conv cache)`` and the hidden states are captured).

    Args:
        transformer: a ``CogVideoXTransformer3DModel`` (``in_channels`` = 2 x the VAE's latent channels).
        vae: an ``AutoencoderKLCogVideoX``.
        scheduler: a ``CogVideoXDPMScheduler`` (or DDIM; only its forward process and config are used).
        num_frames: pixel frames of the video the denoiser sees (mapped to ``(F - 1) // 4 + 1`` latent frames);
            None: the frame count the model was trained with (``transformer.config.sample_frames``, 49).
            A public attribute read at every forward.
        dtype: compute dtype (the modules are cast to it).
        gradient_checkpointing: recompute transformer blocks in backward.
        early_exit: stop the transformer after the deepest requested block.
        prompt_embeds: cached T5 embeddings (tensor or safetensors path); see
            :func:`~anti_i2v.surrogates.prompts.resolve_prompt_embeds` (zeros when nothing is found).
        folder: the model folder (where ``prompt_embeds.safetensors`` is looked for).
        working_size: (height, width) for models without learned positions; ignored (native size) otherwise.
    """

    family = "cogvideox"
    generates_latents = True
    default_size = (480, 720)
    size_multiple = 16

    def __init__(
        self,
        *,
        transformer: nn.Module,
        vae: nn.Module,
        scheduler,
        num_frames: int | None = None,
        dtype: torch.dtype = torch.float32,
        gradient_checkpointing: bool = False,
        early_exit: bool = True,
        prompt_embeds: Tensor | str | Path | None = None,
        folder: str | Path | None = None,
        working_size: tuple[int, int] | None = None,
    ) -> None:
        tcfg, vcfg = transformer.config, vae.config
        if num_frames is None:
            num_frames = int(tcfg.sample_frames)
        super().__init__(
            num_frames=num_frames,
            dtype=dtype,
            gradient_checkpointing=gradient_checkpointing,
            early_exit=early_exit,
            working_size=working_size,
        )
        if tcfg.in_channels != 2 * vcfg.latent_channels:
            raise SurrogateError(
                f"transformer.config.in_channels ({tcfg.in_channels}) must be twice the VAE's latent_channels "
                f"({vcfg.latent_channels}): the image latent is concatenated to the video latent on channels"
            )
        self.transformer = transformer
        self.vae = vae
        self.scheduler = scheduler
        self.folder = None if folder is None else Path(folder)
        #: spatial / temporal compression of the VAE, as the pipeline computes them
        self.vae_scale_spatial = 2 ** (len(vcfg.block_out_channels) - 1)
        self.vae_scale_temporal = int(vcfg.temporal_compression_ratio)
        self.size_multiple = self.vae_scale_spatial * int(tcfg.patch_size)
        if tcfg.use_learned_positional_embeddings:
            # learned tables only fit the trained latent grid (60x90 latents -> 480x720 pixels)
            self.native_size = (
                int(tcfg.sample_height) * self.vae_scale_spatial,
                int(tcfg.sample_width) * self.vae_scale_spatial,
            )
        if working_size is not None:
            self._check_size(*working_size, name="working_size")
        shape = (1, int(tcfg.max_text_seq_length), int(tcfg.text_embed_dim))
        emb, self.prompt_source = resolve_prompt_embeds(prompt_embeds, folder=folder, shape=shape)
        self.prompt_embeds = emb.float()
        for m in (self.transformer, self.vae):
            if next(m.parameters()).dtype != dtype:
                # plain nn.Module.to: ModelMixin.to warns about fp32 modules even when there are none
                nn.Module.to(m, dtype=dtype)
            m.eval()
        self._move_extras(self.device)

    # ----------------------------------------------------------------- protocol
    def denoiser(self) -> nn.Module:
        return self.transformer

    def denoiser_blocks(self) -> Sequence[tuple[str, nn.Module]]:
        return [(f"transformer_blocks.{i}", b) for i, b in enumerate(self.transformer.transformer_blocks)]

    def vae_encoder_layers(self) -> Sequence[tuple[str, nn.Module]]:
        return encoder_layers(self.vae.encoder, "encoder")

    def modules(self) -> list[nn.Module]:
        return [self.transformer, self.vae]

    def _move_extras(self, device: torch.device) -> None:
        self.prompt_embeds = self.prompt_embeds.to(device)

    def describe(self) -> dict:
        d = super().describe()
        d.update(
            {
                "latent_frames": self.latent_frames(),
                "native_size": None if self.native_size is None else list(self.native_size),
                "prompt_embeds": self.prompt_source,
                "prediction_type": self.scheduler.config.prediction_type,
            }
        )
        return d

    # ----------------------------------------------------------------- geometry
    def latent_frames(self, num_frames: int | None = None) -> int:
        """Latent frames of a ``num_frames`` video, as the pipeline computes them (1.5: padded to ``patch_size_t``)."""
        f = self.num_frames if num_frames is None else int(num_frames)
        if f < 1:
            raise SurrogateError(f"num_frames must be >= 1, got {f}")
        frames = (f - 1) // self.vae_scale_temporal + 1
        p_t = self.transformer.config.patch_size_t
        if p_t is not None and frames % p_t:
            frames += p_t - frames % p_t
        return frames

    def _check_size(self, height: int, width: int, *, name: str = "image") -> None:
        if self.native_size is not None and (height, width) != tuple(self.native_size):
            raise SurrogateError(
                f"{name} is {height}x{width} but this CogVideoX model has learned positional embeddings and only "
                f"works at its native size {self.native_size[0]}x{self.native_size[1]} (height x width)"
            )
        m = self.size_multiple
        if height % m or width % m:
            raise SurrogateError(f"{name} height and width must be multiples of {m}, got {height}x{width}")

    def latent_shape(self, batch: int, height: int, width: int) -> tuple[int, int, int, int, int]:
        """Shape (B, L, C, h, w) of the video latent (diffusers' frame-major CogVideoX layout)."""
        s = self.vae_scale_spatial
        return (batch, self.latent_frames(), int(self.vae.config.latent_channels), height // s, width // s)

    # ----------------------------------------------------------------- noise
    def sample_noise(
        self, batch: int, generator: torch.Generator, *, size: tuple[int, int] | None = None
    ) -> NoiseDraw:
        """One training timestep, uniform over ``[0, num_train_timesteps)``, and Gaussian video-latent noise.

        Args:
            batch: images per draw.
            generator: CPU generator (reproducible on every device); the draws are then moved to :attr:`device`.
            size: (height, width) in pixels of the images the draw is for (the photo's :meth:`working_size`);
                None: ``working_size(*default_size)`` (for CogVideoX the working size does not depend on the
                photo, so both agree). The latent shape also follows the current :attr:`num_frames`.
        """
        h, w = self.working_size(*self.default_size) if size is None else (int(size[0]), int(size[1]))
        self._check_size(h, w, name="sample_noise size")
        t = torch.randint(0, int(self.scheduler.config.num_train_timesteps), (batch,), generator=generator)
        noise = torch.randn(self.latent_shape(batch, h, w), generator=generator, dtype=torch.float32)
        return NoiseDraw(timestep=t.to(self.device), noise=noise.to(self.device))

    # ----------------------------------------------------------------- conditioning
    def encode_latent(self, image: Tensor) -> Tensor:
        """Differentiable, scaled image latent (B, 1, C, h, w) of ``image`` (B, 3, H, W) in [0, 1].

        Implements ``prepare_latents``: VAE encode of ``2x - 1`` with one frame, posterior mode, then
        ``x scaling_factor`` (``/ scaling_factor`` when ``invert_scale_latents``).
        """
        self._check_size(image.shape[-2], image.shape[-1])
        x = self._to_model(image * 2.0 - 1.0).unsqueeze(2)  # (B, 3, 1, H, W)
        latent = self.vae.encode(x).latent_dist.mode()  # (B, C, 1, h, w)
        latent = latent.to(self.dtype).permute(0, 2, 1, 3, 4)  # (B, 1, C, h, w)
        sf = float(self.vae.config.scaling_factor)
        return latent / sf if getattr(self.vae.config, "invert_scale_latents", False) else latent * sf

    def image_conditioning(self, image_latent: Tensor, latent_frames: int) -> Tensor:
        """The image latent zero-padded in time to ``latent_frames`` frames (B, L, C, h, w)."""
        b, _, c, h, w = image_latent.shape
        pad = image_latent.new_zeros(b, latent_frames - 1, c, h, w)
        cond = torch.cat([image_latent, pad], dim=1)
        p_t = self.transformer.config.patch_size_t
        if p_t is not None:  # the pipeline's CogVideoX 1.5 first-frame prefix (empty once frames are padded)
            cond = torch.cat([cond[:, : cond.size(1) % p_t], cond], dim=1)
        return cond

    def rotary_embeddings(self, height: int, width: int, latent_frames: int) -> tuple[Tensor, Tensor] | None:
        """3D rotary (cos, sin) tables for the latent grid, as the pipeline builds them (None if unused)."""
        cfg = self.transformer.config
        if not cfg.use_rotary_positional_embeddings:
            return None
        from diffusers.models.embeddings import get_3d_rotary_pos_embed
        from diffusers.pipelines.cogvideo.pipeline_cogvideox_image2video import get_resize_crop_region_for_grid

        p = int(cfg.patch_size)
        grid_h = height // (self.vae_scale_spatial * p)
        grid_w = width // (self.vae_scale_spatial * p)
        base_h, base_w = int(cfg.sample_height) // p, int(cfg.sample_width) // p
        if cfg.patch_size_t is None:  # CogVideoX 1.0: grid cropped to the base grid's aspect
            crops = get_resize_crop_region_for_grid((grid_h, grid_w), base_w, base_h)
            return get_3d_rotary_pos_embed(
                embed_dim=cfg.attention_head_dim,
                crops_coords=crops,
                grid_size=(grid_h, grid_w),
                temporal_size=latent_frames,
                device=self.device,
            )
        p_t = int(cfg.patch_size_t)  # CogVideoX 1.5: sliced grid
        return get_3d_rotary_pos_embed(
            embed_dim=cfg.attention_head_dim,
            crops_coords=None,
            grid_size=(grid_h, grid_w),
            temporal_size=(latent_frames + p_t - 1) // p_t,
            grid_type="slice",
            max_size=(base_h, base_w),
            device=self.device,
        )

    def denoiser_inputs(
        self, image: Tensor | None, noisy_latents: Tensor, timestep: Tensor, *, image_latent: Tensor | None = None
    ) -> dict:
        """Keyword arguments for ``transformer(**kwargs)``, exactly as the I2V pipeline builds them.

        Args:
            image: (B, 3, H, W) in [0, 1] at the working size (encoded unless ``image_latent`` is given; may be
                None then).
            noisy_latents: (B, L, C, h, w) noisy video latent.
            timestep: (B,) integer timesteps.
            image_latent: the scaled image latent from :meth:`encode_latent`, to avoid encoding twice.

        Returns:
            ``hidden_states`` (noisy latent and padded image latent concatenated on channels),
            ``encoder_hidden_states`` (prompt embeddings), ``timestep``, ``ofs``, ``image_rotary_emb``,
            ``attention_kwargs`` and ``return_dict=False``.
        """
        if image_latent is None:
            if image is None:
                raise SurrogateError("denoiser_inputs: pass image or image_latent")
            image_latent = self.encode_latent(image)
        b, frames = noisy_latents.shape[:2]
        if image_latent.shape[0] != b:
            raise SurrogateError(f"noisy_latents batch ({b}) must match the image batch ({image_latent.shape[0]})")
        if noisy_latents.shape[2:] != image_latent.shape[2:]:
            raise SurrogateError(
                f"noisy_latents {tuple(noisy_latents.shape)} and the image latent {tuple(image_latent.shape)} differ "
                "in channels or size: the noisy latent must be at the image's working size"
            )
        model_in = self.scheduler.scale_model_input(noisy_latents.to(self.dtype), timestep)
        cond = self.image_conditioning(image_latent, frames)
        hidden = torch.cat([model_in, cond], dim=2)
        height = image_latent.shape[-2] * self.vae_scale_spatial
        width = image_latent.shape[-1] * self.vae_scale_spatial
        text = self.prompt_embeds.to(device=self.device, dtype=self.dtype).expand(b, -1, -1)
        ofs = None if self.transformer.config.ofs_embed_dim is None else hidden.new_full((1,), 2.0)
        return {
            "hidden_states": hidden,
            "encoder_hidden_states": text,
            "timestep": timestep,
            "ofs": ofs,
            "image_rotary_emb": self.rotary_embeddings(height, width, frames),
            "attention_kwargs": None,
            "return_dict": False,
        }

    @contextlib.contextmanager
    def learned_positions(self, latent_frames: int) -> Iterator[None]:
        """Use the first ``latent_frames`` frames of the learned positional table for the duration of the block.

        diffusers' ``CogVideoXPatchEmbed`` uses its learned table only at the trained frame count and silently
        falls back to sin-cos embeddings otherwise. The table is frame-major after the text rows, so its first
        ``max_text_seq_length + L*h*w`` rows are the learned embeddings of the first ``L`` latent frames. The
        buffer is swapped for that slice (a view: no weight is written) and put back in ``finally``.

        Raises:
            SurrogateError: more latent frames than the table covers.
        """
        pe = self.transformer.patch_embed
        if not pe.use_learned_positional_embeddings or pe.patch_size_t is not None:
            yield
            return
        trained = (pe.sample_frames - 1) // pe.temporal_compression_ratio + 1
        if latent_frames == trained:
            yield
            return
        if latent_frames > trained:
            raise SurrogateError(
                f"num_frames needs {latent_frames} latent frames but the learned positional table covers "
                f"{trained} ({pe.sample_frames} frames): use num_frames <= {pe.sample_frames}"
            )
        table, saved_frames = pe.pos_embedding, pe.sample_frames
        tokens = pe.max_text_seq_length + latent_frames * (pe.sample_height // pe.patch_size) * (
            pe.sample_width // pe.patch_size
        )
        try:
            pe.pos_embedding = table[:, :tokens]
            pe.sample_frames = (latent_frames - 1) * pe.temporal_compression_ratio + 1
            yield
        finally:
            pe.pos_embedding = table
            pe.sample_frames = saved_frames

    # ----------------------------------------------------------------- protocol: conditioning, forward process
    def encode(self, image: Tensor) -> Conditioning:
        """The image conditioning: the scaled image latent (B, 1, C, h, w) (:meth:`encode_latent`; runs the VAE).

        Padding in time to the latent frame count happens in :meth:`denoise` (it follows :attr:`num_frames` at
        call time).
        """
        return Conditioning(latent=self.encode_latent(image))

    def clean_latent(self, cond: Conditioning) -> Tensor:
        """The still video ``x0`` of the conditioned photo: its scaled latent, float32, repeated over the latent
        frames, (B, L, C, h, w) (an expanded view; the shape of :meth:`sample_noise`'s noise)."""
        latent = cond.latent
        b, _, c, h, w = latent.shape
        return latent.float().expand(b, self.latent_frames(), c, h, w)

    def noisy_latent(self, x0: Tensor, draw: NoiseDraw) -> Tensor:
        """``z_t = scheduler.add_noise(x0, noise, t) = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise`` (float32)."""
        noise = self.noise_for(x0, draw, self.vae_scale_spatial)
        return self.scheduler.add_noise(x0.float(), noise, draw.timestep.to(self.device))

    def prediction_target(self, x0: Tensor, draw: NoiseDraw) -> Tensor:
        """v (``scheduler.get_velocity``) for v-prediction, the noise for epsilon, ``x0`` for sample (float32)."""
        noise = self.noise_for(x0, draw, self.vae_scale_spatial)
        kind = self.scheduler.config.prediction_type
        if kind == "v_prediction":
            return self.scheduler.get_velocity(x0.float(), noise, draw.timestep.to(self.device))
        if kind == "epsilon":
            return noise
        return x0.float()

    def denoise(self, cond: Conditioning, noisy: Tensor, draw: NoiseDraw) -> Tensor:
        """The transformer on ``cat([z_t, padded image latent], channels)`` (:meth:`denoiser_inputs`), with the
        learned positional table sliced to the latent frame count (:meth:`learned_positions`)."""
        t = draw.timestep.to(self.device)
        kwargs = self.denoiser_inputs(None, noisy, t, image_latent=cond.latent)
        with self.learned_positions(noisy.shape[1]):
            return self.transformer(**kwargs)[0]

    # ----------------------------------------------------------------- video
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
        """A short I2V video with diffusers' ``CogVideoXImageToVideoPipeline`` built from these modules.

        ``output_type="latent"`` returns the generated latent video instead, (1, L, C, h, w) float32 on CPU, in the
        convention of :meth:`clean_latent` (scaled): :meth:`generate_latent`.

        No text encoder runs: the cached prompt embeddings are passed (and zeros of the same shape as the
        negative embeddings when ``guidance_scale > 1``). Learned positional tables are sliced to the frame
        count as in the attack. Deterministic for a seed (noise and VAE sampling use a CPU generator).

        Args:
            image: (3, H, W) or (1, 3, H, W) in [0, 1]; resized to the working size.
            num_inference_steps: sampler steps.
            seed: seed of the CPU generator.
            num_frames: pixel frames (default :attr:`num_frames`).
            guidance_scale: classifier-free guidance (1 = off).

        Returns:
            (F, 3, h, w) float video in [0, 1] on CPU.
        """
        from ..protect import resize_to

        _, scheduler_cls, pipe_cls, _ = _diffusers()
        image = self._generate_image(image, num_inference_steps)
        frames = self.num_frames if num_frames is None else int(num_frames)
        h, w = self.working_size(image.shape[-2], image.shape[-1])
        img = resize_to(image.float().clamp(0, 1), (h, w)).to(device=self.device, dtype=self.dtype)
        pipe = pipe_cls(
            tokenizer=None,
            text_encoder=None,
            vae=self.vae,
            transformer=self.transformer,
            scheduler=scheduler_cls.from_config(self.scheduler.config),
        )
        pipe.set_progress_bar_config(disable=True)
        text = self.prompt_embeds.to(device=self.device, dtype=self.dtype)
        negative = torch.zeros_like(text) if guidance_scale > 1 else None
        generator = torch.Generator(device="cpu").manual_seed(int(seed))
        with self.learned_positions(self.latent_frames(frames)):
            video = pipe(
                image=img,
                prompt_embeds=text,
                negative_prompt_embeds=negative,
                guidance_scale=float(guidance_scale),
                use_dynamic_cfg=False,
                num_inference_steps=int(num_inference_steps),
                num_frames=frames,
                height=h,
                width=w,
                generator=generator,
                output_type="latent" if output_type == "latent" else "pt",
                return_dict=False,
            )[0]
        if output_type == "latent":
            return video.float().cpu()
        return video[0].float().clamp(0, 1).cpu()

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_pretrained(
        cls,
        folder: str | Path,
        *,
        num_frames: int | None = None,
        dtype: torch.dtype = torch.float32,
        gradient_checkpointing: bool = False,
        prompt_embeds: Tensor | str | Path | None = None,
        **kw,
    ) -> "CogVideoXSurrogate":
        """Load ``transformer/``, ``vae/`` and ``scheduler/`` from a local diffusers-format folder.

        Local files and safetensors only. ``<folder>/prompt_embeds.safetensors`` is used when
        ``prompt_embeds`` is None. Other keywords go to the constructor (``early_exit``, ``working_size``).

        Raises:
            SurrogateError: the folder or one of its components is missing or cannot be read.
        """
        vae_cls, scheduler_cls, _, transformer_cls = _diffusers()
        folder = Path(folder)
        if not folder.is_dir():
            raise SurrogateError(f"CogVideoX model folder {str(folder)!r} does not exist or is not a folder")
        config_names = {"transformer": "config.json", "vae": "config.json", "scheduler": "scheduler_config.json"}
        for comp in _COMPONENTS:
            if not (folder / comp / config_names[comp]).is_file():
                raise SurrogateError(
                    f"CogVideoX model folder {str(folder)!r} has no {comp!r} component "
                    f"({comp}/{config_names[comp]} is missing); expected subfolders {', '.join(_COMPONENTS)}"
                )
        load = {"local_files_only": True, "use_safetensors": True, "torch_dtype": dtype}
        parts = {}
        for comp, loader in (("transformer", transformer_cls), ("vae", vae_cls)):
            try:
                parts[comp] = loader.from_pretrained(str(folder), subfolder=comp, **load)
            except (OSError, ValueError) as exc:
                raise SurrogateError(
                    f"cannot load the {comp!r} component of CogVideoX model folder {str(folder)!r}: {exc}"
                ) from exc
        try:
            parts["scheduler"] = scheduler_cls.from_pretrained(
                str(folder), subfolder="scheduler", local_files_only=True
            )
        except (OSError, ValueError) as exc:
            raise SurrogateError(
                f"cannot load the 'scheduler' component of CogVideoX model folder {str(folder)!r}: {exc}"
            ) from exc
        return cls(
            **parts,
            num_frames=num_frames,
            dtype=dtype,
            gradient_checkpointing=gradient_checkpointing,
            prompt_embeds=prompt_embeds,
            folder=folder,
            **kw,
        )

    @staticmethod
    def _tiny_modules(seed: int, vae_config: dict | None, scheduler_config: dict | None, overrides: dict):
        """Build the tiny transformer, VAE, scheduler and prompt embeddings (random, seeded, global RNG untouched)."""
        vae_cls, scheduler_cls, _, transformer_cls = _diffusers()
        tcfg = {**TINY_TRANSFORMER, **overrides}
        vcfg = {**TINY_VAE, **(vae_config or {})}
        scfg = {**SCHEDULER_CONFIG, **(scheduler_config or {})}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            try:
                transformer = transformer_cls(**tcfg)
                vae = vae_cls(**vcfg)
            except TypeError as exc:
                raise SurrogateError(f"invalid tiny CogVideoX config override: {exc}") from exc
            pe = transformer.patch_embed
            if pe.use_learned_positional_embeddings:
                # a "learned" table that differs from the sin-cos one (text rows stay zero, as in the real table)
                with torch.no_grad():
                    rows = pe.pos_embedding[:, pe.max_text_seq_length :]
                    rows.add_(0.5 * torch.randn_like(rows))
                pe.pos_embedding = pe.pos_embedding.float()  # diffusers builds the sin-cos table in float64
            emb = torch.randn(1, int(tcfg.get("max_text_seq_length", 226)), int(tcfg.get("text_embed_dim", 4096)))
        return transformer, vae, scheduler_cls(**scfg), emb

    @classmethod
    def tiny(
        cls,
        *,
        seed: int = 0,
        num_frames: int = 9,
        dtype: torch.dtype = torch.float32,
        gradient_checkpointing: bool = False,
        early_exit: bool = True,
        prompt_embeds: Tensor | str | Path | None = None,
        working_size: tuple[int, int] | None = None,
        vae_config: dict | None = None,
        scheduler_config: dict | None = None,
        **overrides,
    ) -> "CogVideoXSurrogate":
        """A tiny random-weight CogVideoX I2V of the real diffusers classes (about 0.1 M parameters).

        Native size 32x48 (learned positions, trained on 17 frames), 4 blocks, 9 frames by default. Keyword
        ``overrides`` go to the transformer config (e.g. ``num_layers=42``); ``vae_config`` and
        ``scheduler_config`` override the VAE and scheduler configs. Random prompt embeddings from the seed are
        used unless ``prompt_embeds`` is given. Models without learned positions work at ``working_size``
        (default: the VAE's sample size).
        """
        transformer, vae, scheduler, emb = cls._tiny_modules(seed, vae_config, scheduler_config, overrides)
        if working_size is None and not transformer.config.use_learned_positional_embeddings:
            working_size = (int(vae.config.sample_height), int(vae.config.sample_width))
        return cls(
            transformer=transformer,
            vae=vae,
            scheduler=scheduler,
            num_frames=num_frames,
            dtype=dtype,
            gradient_checkpointing=gradient_checkpointing,
            early_exit=early_exit,
            prompt_embeds=emb if prompt_embeds is None else prompt_embeds,
            working_size=working_size,
        )

    @classmethod
    def save_tiny(cls, folder: str | Path, seed: int = 0, **overrides) -> Path:
        """Write :meth:`tiny` (same seed and overrides) as a diffusers-format folder that :meth:`from_pretrained` reads.

        Writes ``transformer/``, ``vae/`` (safetensors), ``scheduler/``, ``model_index.json`` (text encoder and
        tokenizer marked absent) and ``prompt_embeds.safetensors``.
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        vae_config = overrides.pop("vae_config", None)
        scheduler_config = overrides.pop("scheduler_config", None)
        transformer, vae, scheduler, emb = cls._tiny_modules(seed, vae_config, scheduler_config, overrides)
        transformer.save_pretrained(str(folder / "transformer"), safe_serialization=True)
        vae.save_pretrained(str(folder / "vae"), safe_serialization=True)
        scheduler.save_pretrained(str(folder / "scheduler"))
        save_prompt_embeds(emb, folder / PROMPT_FILE)
        import diffusers

        index = {
            "_class_name": "CogVideoXImageToVideoPipeline",
            "_diffusers_version": diffusers.__version__,
            "scheduler": ["diffusers", type(scheduler).__name__],
            "text_encoder": [None, None],
            "tokenizer": [None, None],
            "transformer": ["diffusers", type(transformer).__name__],
            "vae": ["diffusers", type(vae).__name__],
        }
        (folder / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
        return folder
