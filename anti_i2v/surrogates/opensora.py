"""Open-Sora 1.2 (STDiT3-XL/2 + its video VAE) image-to-video surrogate.

The models are this pack's own definitions (:mod:`.opensora_model`; neither is in diffusers or on PyPI) that load
the official checkpoints by their real key names, from local files, with no hub access.

**Folder layout** (``load_surrogate("opensora", folder)``)::

    <folder>/OpenSora-STDiT-v3/model.safetensors      hpcai-tech/OpenSora-STDiT-v3 (1.1 B parameters)
    <folder>/OpenSora-STDiT-v3/config.json            optional (STDiT3Config; default STDiT3-XL/2)
    <folder>/OpenSora-VAE-v1.2/model.safetensors      hpcai-tech/OpenSora-VAE-v1.2 (spatial + temporal VAE)
    <folder>/OpenSora-VAE-v1.2/config.json            optional (micro_frame_size, shift, scale)
    <folder>/prompt_embeds.safetensors                optional: a cached T5-XXL embedding ``prompt_embeds``
                                                      (1, L <= 300, 4096) of the valid tokens of a prompt

Sharded weights (``model.safetensors.index.json``) are read too. Without ``prompt_embeds`` the text side is the
model's **learned null caption** ``y_embedder.y_embedding`` (300 tokens): what the unconditional branch of
upstream's classifier-free guidance sees, and what training substituted for dropped captions.

**How the photo enters** (upstream ``scripts/inference.py`` with ``--reference-path photo --mask-strategy "0"``,
``apply_mask_strategy`` and the ``RFLOW`` sampler, read in tag v1.2.0): the photo (in [-1, 1]) is encoded alone
by the VAE (spatial KL VAE x 0.18215, then the temporal VAE, whose causal encoder pads three zero frames in
front, then ``(z - shift) / scale``) into one latent frame; it **replaces latent frame 0** of the video latent;
``x_mask`` is False for that frame, so its tokens are modulated with the embedding of **timestep 0** (``t0``)
in every block and in the final layer, while the other frames use the sampling timestep; the sampler keeps frame
0 at the reference latent after every step. :meth:`OpenSoraSurrogate.denoise` builds exactly that input; the
posterior *means* are used where upstream draws a sample (deterministic and differentiable).

**Forward process** (``RFlowScheduler``): ``z_t = (1 - t/1000) x0 + (t/1000) noise``, the model's first four
output channels predict the velocity ``x0 - noise`` (the other four are the learned sigma). Timesteps for the
attack are drawn as Open-Sora 1.2 trains: logit-normal ``t = 1000 sigmoid(n)``, ``n ~ N(0, 1)``, then the
resolution/length shift ``timestep_transform`` (``ratio = sqrt(H W / 512^2) * sqrt(latent frames)``,
``t' = ratio t / (1 + (ratio - 1) t)``). Upstream counts latent frames as ``num_frames // 17 * 5``, which is 0
below 17 frames (every t would collapse to 0); below 17 frames the real latent frame count is used instead.

**One z_t per iteration**: frames 1.. of ``z_t`` come from the shared clean latent (the VAE latent of the still
video of the clean photo, :meth:`OpenSoraSurrogate.clean_latent`); frame 0 is each pass's own reference latent,
the path the photo takes at inference.

**Block numbering (IRA / IRC).** STDiT3 has ``depth`` (28) layers, each a spatial block (attention within a
frame) followed by a temporal block (attention across frames, rotary positions); they run interleaved
``spatial_blocks[0], temporal_blocks[0], spatial_blocks[1], ...``. The paper counts the 28 layers (its IRC example
for Open-Sora pulls blocks 19+ towards a shallow block), so by default **block i is layer i**: its output is the
output of ``temporal_blocks[i]`` (after ``spatial_blocks[i]``), i in 0..27. With ``split_blocks=True`` the 56
halves are exposed in forward order: index ``2i`` is ``spatial_blocks[i]``, ``2i + 1`` is ``temporal_blocks[i]``
(the paper's block i is then index 2i + 1). Default objective: IRC 3 -> 19 and IRA on 19 (the paper's choice
for depth 28; other depths are mapped by ratio), IRA also on the last two VAE-encoder layers.

VAE-encoder layers: the spatial VAE's ``encoder.down_blocks`` and ``encoder.mid_block`` (per frame,
(B, C, h, w)), then the last residual block of each stage of the temporal encoder and of its final stage
((B, C, T, h, w); the photo's chunk with its three padded zero frames).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import ClassVar, Sequence

import torch
from torch import Tensor, nn

from .base import Conditioning, NoiseDraw, Surrogate, SurrogateError, encoder_layers
from .opensora_model import (
    LATENT_SCALE,
    LATENT_SHIFT,
    SDXL_VAE_CONFIG,
    OpenSoraVAE,
    STDiT3,
    STDiT3Config,
    TemporalVAE,
    TemporalVAEConfig,
)
from .prompts import PROMPT_FILE, load_prompt_embeds

__all__ = [
    "OpenSoraSurrogate",
    "STDIT_DIR",
    "VAE_DIR",
    "WEIGHTS",
    "timestep_transform",
    "load_stdit3",
    "load_vae",
    "is_opensora_folder",
]

STDIT_DIR = "OpenSora-STDiT-v3"
VAE_DIR = "OpenSora-VAE-v1.2"
WEIGHTS = "model.safetensors"
#: pixel frames of the video the surrogate conditions on by default (one micro chunk: 5 latent frames)
DEFAULT_NUM_FRAMES = 17
TINY_NUM_FRAMES = 5
#: ``fps`` of upstream's inference config (``configs/opensora-v1-2/inference/sample.py``)
DEFAULT_FPS = 24
NUM_TIMESTEPS = 1000
#: the paper's IRC layers for Open-Sora (STDiT3 depth 28)
PAPER_SHALLOW, PAPER_DEEP, PAPER_DEPTH = 3, 19, 28


def is_opensora_folder(folder: Path) -> bool:
    """Whether ``folder`` has the Open-Sora 1.2 layout (both checkpoint subfolders)."""
    return (folder / STDIT_DIR).is_dir() and (folder / VAE_DIR).is_dir()


def timestep_transform(t: Tensor, height: int, width: int, num_frames: int) -> Tensor:
    """Open-Sora 1.2's resolution/length timestep shift (``opensora/schedulers/rf/rectified_flow.py``).

    Args:
        t: timesteps in [0, 1000].
        height, width: pixel size of the video.
        num_frames: pixel frames; ``num_frames // 17 * 5`` latent frames as upstream, or the real latent count
            (``ceil(num_frames / 4)``) when that is 0 (fewer than 17 frames; see the module docstring).
    """
    s = t.double() / NUM_TIMESTEPS
    ratio_space = math.sqrt(height * width / (512 * 512))
    if num_frames == 1:
        frames = 1
    else:
        frames = num_frames // 17 * 5 or -(-num_frames // 4)
    ratio = ratio_space * math.sqrt(frames)
    return (ratio * s / (1 + (ratio - 1) * s) * NUM_TIMESTEPS).to(t.dtype if t.is_floating_point() else torch.float32)


class OpenSoraSurrogate(Surrogate):
    """Open-Sora 1.2 as an Anti-I2V surrogate (see the module docstring).

    Args:
        transformer: :class:`~.opensora_model.STDiT3`.
        vae: :class:`~.opensora_model.OpenSoraVAE`.
        num_frames: pixel frames of the video (>= 5; 17 per 5 latent frames).
        dtype: compute dtype (the modules are used in the dtype they have).
        gradient_checkpointing: recompute STDiT3 blocks in backward.
        early_exit: stop after the deepest requested block.
        prompt_embeds: T5 embedding (1, L, caption_channels) of a prompt's valid tokens, a safetensors path, or
            None (``<folder>/prompt_embeds.safetensors``, else the learned null caption).
        folder: the model folder (for the prompt file).
        working_size: (height, width) of the optimisation; None: per photo, aspect kept at about the area of
            :attr:`default_size` (240 x 432, Open-Sora's 240p), never upscaled.
        fps: the ``fps`` conditioning (24, upstream's inference default).
        split_blocks: expose spatial and temporal blocks separately (56 blocks) instead of the paper's 28 layers.
    """

    family: ClassVar[str] = "opensora"
    generates_latents = True  # generate(..., output_type="latent"): I2VGuard's clean generation
    default_size: ClassVar[tuple[int, int]] = (240, 432)

    def __init__(
        self,
        *,
        transformer: STDiT3,
        vae: OpenSoraVAE,
        num_frames: int = DEFAULT_NUM_FRAMES,
        dtype: torch.dtype = torch.float32,
        gradient_checkpointing: bool = False,
        early_exit: bool = True,
        prompt_embeds: Tensor | str | Path | None = None,
        folder: str | Path | None = None,
        working_size: tuple[int, int] | None = None,
        fps: int = DEFAULT_FPS,
        split_blocks: bool = False,
    ) -> None:
        super().__init__(num_frames=num_frames, dtype=dtype, gradient_checkpointing=gradient_checkpointing,
                         early_exit=early_exit, working_size=working_size)
        if not isinstance(transformer, STDiT3) or not isinstance(vae, OpenSoraVAE):
            raise SurrogateError("OpenSoraSurrogate needs an STDiT3 transformer and an OpenSoraVAE")
        self.transformer = transformer
        self.vae = vae
        self.fps = int(fps)
        self.split_blocks = bool(split_blocks)
        cfg = transformer.config
        if cfg.in_channels != vae.temporal_vae.cfg.embed_dim:
            raise SurrogateError(f"transformer: in_channels={cfg.in_channels} does not match the VAE's latent "
                                 f"channels ({vae.temporal_vae.cfg.embed_dim})")
        self.size_multiple = self.spatial_factor * int(cfg.patch_size[1])
        if working_size is not None:
            self._check_size(*working_size, what="working_size")
        self.prompt_embeds, self.prompt_source = self._resolve_prompt(prompt_embeds, folder)

    # ----------------------------------------------------------------- set-up helpers
    def _resolve_prompt(self, spec, folder) -> tuple[Tensor | None, str]:
        width, tokens = self.transformer.config.caption_channels, self.transformer.config.model_max_length
        if spec is None and folder is not None and (Path(folder) / PROMPT_FILE).is_file():
            spec = Path(folder) / PROMPT_FILE
        if spec is None:
            return None, "null caption (y_embedder.y_embedding)"
        try:
            emb, source = (spec, "tensor") if isinstance(spec, Tensor) else (load_prompt_embeds(spec), str(spec))
        except (ValueError, FileNotFoundError) as e:
            raise SurrogateError(f"prompt_embeds: {e}") from e
        if emb.ndim == 2:
            emb = emb.unsqueeze(0)
        if emb.ndim != 3 or emb.shape[0] != 1 or emb.shape[-1] != width or not 1 <= emb.shape[1] <= tokens:
            raise SurrogateError(f"prompt_embeds from {source} has shape {tuple(emb.shape)}; expected "
                                 f"(1, tokens <= {tokens}, {width}) (the valid T5 tokens of one prompt)")
        return emb.detach().clone().to(self.device), source

    def _check_size(self, height: int, width: int, *, what: str = "image") -> None:
        m = self.size_multiple
        if height % m or width % m or height < m or width < m:
            raise SurrogateError(
                f"{what} size {height}x{width} is not supported by Open-Sora: height and width must be positive "
                f"multiples of {m} (VAE factor {self.spatial_factor} x patch {m // self.spatial_factor}); "
                f"resize to the working size {self.working_size(height, width)}")

    def _check_frames(self, num_frames) -> int:
        if int(num_frames) != num_frames or num_frames < 5:
            raise SurrogateError(
                f"num_frames must be an integer >= 5 for Open-Sora (at least two latent frames: the photo's "
                f"reference frame and one generated frame; 17 frames make 5 latent frames), got {num_frames}")
        return int(num_frames)

    # ----------------------------------------------------------------- sizes
    @property
    def spatial_factor(self) -> int:
        return self.vae.spatial_factor

    @property
    def z_dim(self) -> int:
        return int(self.transformer.config.in_channels)

    @property
    def num_train_timesteps(self) -> int:
        return NUM_TIMESTEPS

    def working_size(self, height: int, width: int) -> tuple[int, int]:
        """The constructor's ``working_size``, else the photo's aspect kept at about the area of 240 x 432 (never
        upscaled), each side floored to a multiple of :attr:`size_multiple` (the Wan 2.1 / native rule)."""
        if self._working_size is not None:
            return (int(self._working_size[0]), int(self._working_size[1]))
        if height < 1 or width < 1:
            raise SurrogateError(f"photo size must be positive, got {height}x{width}")
        m = self.size_multiple
        scale = min(1.0, math.sqrt(self.default_size[0] * self.default_size[1] / float(height * width)))
        return (max(m, int(height * scale) // m * m), max(m, int(width * scale) // m * m))

    def latent_frames(self, num_frames: int | None = None) -> int:
        return self.vae.latent_frames(self._check_frames(self.num_frames if num_frames is None else num_frames))

    def latent_shape(self, batch: int, height: int, width: int) -> tuple[int, ...]:
        s = self.spatial_factor
        return (batch, self.z_dim, self.latent_frames(), height // s, width // s)

    def describe(self) -> dict:
        d = super().describe()
        d.update(prompt_embeds=self.prompt_source, fps=self.fps, latent_frames=self.latent_frames(),
                 block_numbering="spatial/temporal halves (2i, 2i+1)" if self.split_blocks
                 else "STDiT3 layers (spatial_blocks[i] + temporal_blocks[i])")
        return d

    # ----------------------------------------------------------------- protocol: modules
    def denoiser(self) -> nn.Module:
        return self.transformer

    def denoiser_blocks(self) -> Sequence[tuple[str, nn.Module]]:
        t = self.transformer
        if self.split_blocks:
            out = []
            for i, (s, tb) in enumerate(zip(t.spatial_blocks, t.temporal_blocks)):
                out += [(f"transformer.spatial_blocks.{i}", s), (f"transformer.temporal_blocks.{i}", tb)]
            return out
        return [(f"transformer.temporal_blocks.{i} (layer {i})", tb)
                for i, tb in enumerate(t.temporal_blocks)]

    def temporal_attention_modules(self) -> list[tuple[str, nn.Module]]:
        """STDiT3's temporal self-attention, ``transformer.temporal_blocks[i].attn`` for every layer, in forward
        order: each spatial position attends over the latent frames (after RMS qk-norm and the rotary embedding)."""
        return [(f"transformer.temporal_blocks.{i}.attn", tb.attn)
                for i, tb in enumerate(self.transformer.temporal_blocks)]

    def vae_encoder_layers(self) -> Sequence[tuple[str, nn.Module]]:
        layers = list(encoder_layers(self.vae.spatial.encoder, "vae.spatial_vae.module.encoder"))
        enc = self.vae.temporal_vae.encoder
        for i, items in enumerate(enc.block_res_blocks):
            layers.append((f"vae.temporal_vae.encoder.block_res_blocks.{i}.{len(items) - 1}", items[-1]))
        layers.append((f"vae.temporal_vae.encoder.res_blocks.{len(enc.res_blocks) - 1}", enc.res_blocks[-1]))
        return layers

    def modules(self) -> list[nn.Module]:
        return [self.transformer, self.vae]

    def _move_extras(self, device: torch.device) -> None:
        if self.prompt_embeds is not None:
            self.prompt_embeds = self.prompt_embeds.to(device)

    def layer_index(self, paper_block: int) -> int:
        """The block index of the paper's STDiT3 block (layer) ``paper_block`` in this surrogate's numbering."""
        return 2 * paper_block + 1 if self.split_blocks else paper_block

    def default_objective(self):
        """IRC from layer 3 to layer 19 and IRA on layer 19 (Anti-I2V's Open-Sora choice, STDiT3 depth 28; other
        depths by ratio), IRA also on the last two VAE-encoder layers. Tiny (depth 4): IRC 0 -> 3, IRA 3."""
        from ..losses import IRALoss, IRCLoss, Objective

        depth = len(self.transformer.temporal_blocks)
        shallow = min(max(round(PAPER_SHALLOW / PAPER_DEPTH * depth), 0), depth - 1)
        deep = min(max(round(PAPER_DEEP / PAPER_DEPTH * depth), shallow + 1), depth - 1)
        nv = self.num_vae_layers
        vae = tuple(range(max(nv - 2, 0), nv))
        s, d = self.layer_index(shallow), self.layer_index(deep)
        terms = [IRALoss(blocks=(d,), vae_layers=vae, weight=1.0)]
        notes: list[str] = []
        if d != s:
            terms.append(IRCLoss(pairs=((s, d),), weight=1.0))
        else:
            notes.append("IRC left out: the Open-Sora transformer has a single layer")
        return Objective(tuple(terms), tuple(notes))

    # ----------------------------------------------------------------- noise
    def sample_noise(self, batch: int, generator: torch.Generator, *, size: tuple[int, int] | None = None) -> NoiseDraw:
        """Timestep (logit-normal, then :func:`timestep_transform` for the size and frames) and noise, drawn on CPU.

        Args:
            batch: images per draw.
            generator: CPU generator; the draws are moved to :attr:`device`.
            size: (height, width) of the images (the photo's :meth:`working_size`); None: the default one.
        """
        h, w = self.working_size(*self.default_size) if size is None else (int(size[0]), int(size[1]))
        self._check_size(h, w, what="sample_noise size")
        t = torch.sigmoid(torch.randn(batch, generator=generator, dtype=torch.float64)) * NUM_TIMESTEPS
        t = timestep_transform(t, h, w, self.num_frames).float()
        noise = torch.randn(self.latent_shape(batch, h, w), generator=generator)
        return NoiseDraw(timestep=t.to(self.device), noise=noise.to(self.device))

    def timestep_at(self, fraction: float, draw: NoiseDraw) -> Tensor:
        """The timestep at ``fraction`` of the schedule (0 clean, 1 noise) for ``draw``'s latent size: upstream's
        sampler timestep ``1000 fraction`` through :func:`timestep_transform` (used by the layer PCA maps)."""
        s = self.spatial_factor
        h, w = int(draw.noise.shape[-2]) * s, int(draw.noise.shape[-1]) * s
        t = torch.tensor([float(fraction) * NUM_TIMESTEPS], dtype=torch.float64)
        return timestep_transform(t, h, w, self.num_frames).float().to(draw.timestep.device)

    # ----------------------------------------------------------------- protocol: conditioning
    def encode(self, image: Tensor) -> Conditioning:
        """The reference latent (B, 4, 1, h, w) float32 of ``image`` (B, 3, H, W) in [0, 1], encoded alone as
        upstream's ``collect_references_batch`` does; ``parts["spatial"]`` keeps its spatial-VAE latent."""
        if image.ndim != 4 or image.shape[1] != 3:
            raise SurrogateError(f"image must have shape (B, 3, H, W), got {tuple(image.shape)}")
        self._check_size(int(image.shape[-2]), int(image.shape[-1]))
        x = image.to(device=self.device, dtype=torch.float32) * 2.0 - 1.0
        spatial = self.vae.encode_spatial(x.unsqueeze(2))
        latent = self.vae.encode_temporal(spatial)
        return Conditioning(latent=latent, parts={"spatial": spatial})

    def clean_latent(self, cond: Conditioning) -> Tensor:
        """The still video ``x0`` (B, 4, T', h, w): the VAE latent of ``num_frames`` copies of the photo (its
        spatial latent repeated, through the temporal VAE). Its frame 0 is not the reference latent (the temporal
        VAE's GroupNorms pool over time); :meth:`denoise` replaces it, as upstream inference does."""
        spatial = cond.parts.get("spatial")
        if spatial is None:
            raise SurrogateError("this conditioning was not made by OpenSoraSurrogate.encode (no 'spatial' part)")
        frames = self._check_frames(self.num_frames)
        return self.vae.encode_temporal(spatial.expand(-1, -1, frames, -1, -1))

    def noisy_latent(self, x0: Tensor, draw: NoiseDraw) -> Tensor:
        """``z_t = (1 - t/1000) x0 + (t/1000) noise`` (``RFlowScheduler.add_noise``), float32."""
        noise = self.noise_for(x0, draw, self.spatial_factor)
        t = (draw.timestep.to(device=self.device, dtype=torch.float32) / NUM_TIMESTEPS).view(-1, 1, 1, 1, 1)
        return (1.0 - t) * x0.float() + t * noise

    def prediction_target(self, x0: Tensor, draw: NoiseDraw) -> Tensor:
        """The velocity ``x0 - noise`` (upstream's training target), float32. Upstream's loss leaves the
        reference frame out (it is masked); this target covers every frame, frame 0 included."""
        return x0.float() - self.noise_for(x0, draw, self.spatial_factor)

    def caption(self, batch: int) -> Tensor:
        """Caption embeddings (B, L, caption_channels) in the transformer's dtype: the cached prompt or the null
        caption."""
        y = self.transformer.null_caption(1) if self.prompt_embeds is None else self.prompt_embeds
        return y.to(device=self.device, dtype=self.transformer.dtype).expand(batch, -1, -1)

    def denoiser_inputs(self, reference: Tensor, noisy: Tensor, timestep: Tensor, *, null: bool = False) -> dict:
        """The STDiT3 call as upstream inference makes it for an I2V step.

        Args:
            reference: (B, 4, 1, h, w) normalised reference latent.
            noisy: (B, 4, T, h, w) video latent ``z_t``.
            timestep: (B,) or scalar timestep in [0, 1000].
            null: use the null caption (classifier-free guidance's unconditional branch).

        Returns:
            keyword arguments of :meth:`STDiT3.forward`: ``x`` (frame 0 replaced by ``reference``), ``timestep``,
            ``y``, ``x_mask`` (False on frame 0: timestep-0 modulation), ``fps``, ``height``, ``width`` (pixels).
        """
        b, _, frames, h, w = noisy.shape
        if reference.shape[0] != b:
            if reference.shape[0] != 1:
                raise SurrogateError(f"reference batch {reference.shape[0]} does not match z_t batch {b}")
            reference = reference.expand(b, -1, -1, -1, -1)
        if reference.shape[2:] != (1, h, w) or reference.shape[1] != noisy.shape[1]:
            raise SurrogateError(f"reference latent {tuple(reference.shape)} does not fit z_t {tuple(noisy.shape)}")
        x = torch.cat([reference.float().to(noisy.device), noisy.float()[:, :, 1:]], dim=2)
        x_mask = torch.ones(b, frames, dtype=torch.bool, device=noisy.device)
        x_mask[:, 0] = False
        timestep = torch.as_tensor(timestep, device=noisy.device, dtype=torch.float32).reshape(-1).expand(b)
        s = self.spatial_factor
        y = self.caption(b) if not null else self.transformer.null_caption(b).to(self.transformer.dtype)
        full = lambda v: torch.full((b,), float(v), device=noisy.device)  # noqa: E731
        return {"x": x, "timestep": timestep, "y": y, "x_mask": x_mask, "fps": full(self.fps),
                "height": full(h * s), "width": full(w * s)}

    def denoise(self, cond: Conditioning, noisy: Tensor, draw: NoiseDraw) -> Tensor:
        """STDiT3 on ``z_t`` with frame 0 replaced by the reference latent under ``x_mask``; returns the velocity
        (the first ``in_channels`` output channels), float32."""
        kw = self.denoiser_inputs(cond.latent, noisy, draw.timestep.to(self.device))
        x = kw.pop("x")
        return self.transformer(x, kw.pop("timestep"), kw.pop("y"), kw.pop("x_mask"), **kw)[:, : self.z_dim]

    # ----------------------------------------------------------------- generation
    @torch.no_grad()
    def generate(
        self,
        image: Tensor,
        *,
        num_inference_steps: int = 3,
        seed: int = 0,
        num_frames: int | None = None,
        guidance_scale: float = 1.0,
        output_type: str = "video",
    ) -> Tensor:
        """A short I2V video with upstream's ``RFLOW`` sampler (rewritten here) and this VAE's decoder.

        Uniform timesteps ``(1 - i/n) 1000`` passed through :func:`timestep_transform`, Euler steps
        ``z += v dt``, frame 0 held at the reference latent (mask strategy "0"); ``guidance_scale > 1`` mixes in
        the null-caption prediction (upstream's default is 7 with a real prompt). Same seed, same video.

        Args:
            image: (3, H, W) or (1, 3, H, W) in [0, 1], resized to :meth:`working_size`.
            num_inference_steps: sampler steps.
            seed: seed of the initial noise (CPU generator).
            num_frames: pixel frames (default :attr:`num_frames`).
            guidance_scale: classifier-free guidance (1 = off).
            output_type: ``"video"``, or ``"latent"`` for the sampled latent before decoding, (1, 4, T', h, w) on
                the surrogate's device, in :meth:`clean_latent`'s convention (:meth:`generate_latent`).

        Returns:
            (F, 3, h, w) float32 video in [0, 1] on CPU.
        """
        from ..protect import resize_to

        if output_type not in ("video", "latent"):
            raise ValueError(f"output_type must be 'video' or 'latent', got {output_type!r}")
        image = self._generate_image(image, num_inference_steps)
        frames = self._check_frames(self.num_frames if num_frames is None else num_frames)
        h, w = self.working_size(int(image.shape[-2]), int(image.shape[-1]))
        img = resize_to(image.float().clamp(0, 1), (h, w)).to(self.device)
        saved = self.num_frames
        self.num_frames = frames
        try:
            ref = self.encode(img).latent
            g = torch.Generator(device="cpu").manual_seed(int(seed))
            z = torch.randn(self.latent_shape(1, h, w), generator=g).to(self.device)
        finally:
            self.num_frames = saved
        n = int(num_inference_steps)
        steps = [timestep_transform(torch.tensor([(1.0 - i / n) * NUM_TIMESTEPS]), h, w, frames) for i in range(n)]
        z[:, :, :1] = ref
        for i, t in enumerate(steps):
            t = t.to(self.device)
            kw = self.denoiser_inputs(ref, z, t)
            x = kw.pop("x")
            v = self.transformer(x, kw.pop("timestep"), kw.pop("y"), kw.pop("x_mask"), **kw)[:, : self.z_dim]
            if guidance_scale > 1:
                kn = self.denoiser_inputs(ref, z, t, null=True)
                xn = kn.pop("x")
                vn = self.transformer(xn, kn.pop("timestep"), kn.pop("y"), kn.pop("x_mask"), **kn)[:, : self.z_dim]
                v = vn + float(guidance_scale) * (v - vn)
            dt = (t - steps[i + 1].to(self.device)) if i < n - 1 else t
            z = z + v * (dt / NUM_TIMESTEPS).view(-1, 1, 1, 1, 1)
            z[:, :, :1] = ref
        if output_type == "latent":
            return z.float()
        video = self.vae.decode(z, num_frames=frames)
        return ((video[0].transpose(0, 1).float() + 1.0) / 2.0).clamp(0, 1).cpu()

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
    ) -> "OpenSoraSurrogate":
        """Load the official checkpoints from ``folder`` (layout in the module docstring; safetensors only).

        Raises:
            SurrogateError: a missing subfolder or file, unreadable JSON, or weights that do not match the
                architecture (missing / unexpected / mis-shaped keys, named).
        """
        folder = Path(folder)
        if not folder.is_dir():
            raise SurrogateError(f"Open-Sora model folder {str(folder)!r} does not exist or is not a folder")
        for sub in (STDIT_DIR, VAE_DIR):
            if not (folder / sub).is_dir():
                raise SurrogateError(f"Open-Sora model folder {str(folder)!r} lacks the {sub!r} subfolder "
                                     f"(expected {sub}/{WEIGHTS}; see the README's model table)")
        transformer = load_stdit3(folder / STDIT_DIR, dtype)
        vae = load_vae(folder / VAE_DIR, dtype)
        if num_frames is not None:
            kw["num_frames"] = num_frames
        return cls(transformer=transformer, vae=vae, dtype=dtype, gradient_checkpointing=gradient_checkpointing,
                   prompt_embeds=prompt_embeds, folder=folder, **kw)

    @staticmethod
    def _tiny_configs() -> tuple[STDiT3Config, dict, TemporalVAEConfig]:
        stdit = STDiT3Config(hidden_size=32, depth=4, num_heads=2, mlp_ratio=2.0, caption_channels=16,
                             model_max_length=8)
        spatial = dict(SDXL_VAE_CONFIG, down_block_types=["DownEncoderBlock2D"] * 3,
                       up_block_types=["UpDecoderBlock2D"] * 3, block_out_channels=[8, 8, 16], layers_per_block=1,
                       norm_num_groups=4, sample_size=32)
        temporal = TemporalVAEConfig(filters=4, num_res_blocks=1, num_groups=2)
        return stdit, spatial, temporal

    @classmethod
    def tiny(cls, *, seed: int = 0, num_frames: int = TINY_NUM_FRAMES, dtype: torch.dtype = torch.float32,
             working_size: tuple[int, int] | None = (32, 48), **kw) -> "OpenSoraSurrogate":
        """A tiny random-weight Open-Sora 1.2 of the same classes (about 0.27 M parameters).

        STDiT3: depth 4 (8 blocks interleaved), hidden 32, 2 heads, caption width 16, 8 null-caption tokens.
        Spatial VAE: diffusers ``AutoencoderKL`` with 3 levels (factor 4), 1 layer per block. Temporal VAE:
        ``VAE_Temporal_SD``'s network with 4 filters and one residual block per stage (time factor 4).
        5 frames (2 latent frames) at 32 x 48.
        """
        from diffusers import AutoencoderKL

        stdit_cfg, spatial_cfg, temporal_cfg = cls._tiny_configs()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            transformer = STDiT3(stdit_cfg)
            vae = OpenSoraVAE(AutoencoderKL(**spatial_cfg), TemporalVAE(temporal_cfg))
        for m in (transformer, vae):
            m.to(dtype).eval().requires_grad_(False)
        return cls(transformer=transformer, vae=vae, num_frames=num_frames, dtype=dtype, working_size=working_size,
                   **kw)

    @classmethod
    def save_tiny(cls, folder: str | Path, seed: int = 0) -> Path:
        """Write :meth:`tiny` in the official layout: ``OpenSora-STDiT-v3`` and ``OpenSora-VAE-v1.2``, each with
        ``model.safetensors`` (the real key names) and ``config.json``. The tiny architecture is recorded in
        ``config.json`` (for the VAE under ``vae_2d.anti_i2v_config`` and extra ``vae_temporal`` fields; the
        official files carry neither, and the loader then builds the official architecture)."""
        from safetensors.torch import save_file

        s = cls.tiny(seed=seed)
        folder = Path(folder)
        stdit_cfg, spatial_cfg, temporal_cfg = cls._tiny_configs()
        (folder / STDIT_DIR).mkdir(parents=True, exist_ok=True)
        (folder / VAE_DIR).mkdir(parents=True, exist_ok=True)
        save_file(_contiguous(s.transformer.state_dict()), str(folder / STDIT_DIR / WEIGHTS))
        (folder / STDIT_DIR / "config.json").write_text(json.dumps(stdit_cfg.to_dict(), indent=2) + "\n")
        save_file(_contiguous(s.vae.state_dict()), str(folder / VAE_DIR / WEIGHTS))
        vae_cfg = {
            "architectures": ["VideoAutoencoderPipeline"],
            "model_type": "VideoAutoencoderPipeline",
            "micro_frame_size": s.vae.micro_frame_size,
            "shift": list(LATENT_SHIFT),
            "scale": list(LATENT_SCALE),
            "vae_2d": {"type": "VideoAutoencoderKL", "subfolder": "vae", "anti_i2v_config": spatial_cfg},
            "vae_temporal": {"type": "VAE_Temporal_SD", "from_pretrained": None, **temporal_cfg.to_dict()},
        }
        (folder / VAE_DIR / "config.json").write_text(json.dumps(vae_cfg, indent=2) + "\n")
        return folder


# --------------------------------------------------------------------------- loading
def _contiguous(state: dict) -> dict:
    return {k: v.detach().contiguous().cpu() for k, v in state.items()}


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise SurrogateError(f"{str(path)!r} is not readable JSON: {e}") from None
    if not isinstance(data, dict):
        raise SurrogateError(f"{str(path)!r} holds a JSON {type(data).__name__}, not an object")
    return data


def _read_weights(folder: Path) -> dict[str, Tensor]:
    """``model.safetensors`` or the shards of ``model.safetensors.index.json`` in ``folder``."""
    from safetensors.torch import load_file

    index = folder / f"{WEIGHTS}.index.json"
    if index.is_file():
        files = sorted(set(_read_json(index).get("weight_map", {}).values()))
    elif (folder / WEIGHTS).is_file():
        files = [WEIGHTS]
    else:
        raise SurrogateError(f"{str(folder)!r} holds no {WEIGHTS} (or {WEIGHTS}.index.json); only safetensors "
                             "checkpoints are read")
    state: dict[str, Tensor] = {}
    for f in files:
        try:
            state.update(load_file(str(folder / f)))
        except Exception as e:  # safetensors raises its own error types
            raise SurrogateError(f"cannot read {str(folder / f)!r}: {e}") from e
    return state


def _fill(module: nn.Module, state: dict[str, Tensor], dtype: torch.dtype, where: str) -> nn.Module:
    """Load ``state`` into ``module`` (built on the meta device) strictly, by name and shape, in ``dtype``."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[:4]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[:4]})")
        raise SurrogateError(f"{where}: the weights do not match the architecture: {'; '.join(parts)}")
    bad = [k for k, v in expected.items() if tuple(v.shape) != tuple(state[k].shape)]
    if bad:
        k = bad[0]
        raise SurrogateError(f"{where}: {len(bad)} tensor(s) have the wrong shape, e.g. {k}: checkpoint "
                             f"{tuple(state[k].shape)}, architecture {tuple(expected[k].shape)}")
    cast = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in state.items()}
    module.load_state_dict(cast, strict=True, assign=True)
    return module.eval().requires_grad_(False)


def load_stdit3(folder: str | Path, dtype: torch.dtype = torch.float32) -> STDiT3:
    """STDiT3 from ``OpenSora-STDiT-v3/`` (``model.safetensors`` by its real key names; ``config.json`` optional).

    ``rope.freqs`` (a fixed parameter of the rotary embedding) is recomputed when a checkpoint lacks it.
    """
    folder = Path(folder)
    cfg = STDiT3Config.from_dict(_read_json(folder / "config.json"))
    state = _read_weights(folder)
    with torch.device("meta"):
        model = STDiT3(cfg)
    if "rope.freqs" not in state:
        head = cfg.hidden_size // cfg.num_heads
        state["rope.freqs"] = 1.0 / (10000.0 ** (torch.arange(0, head, 2)[: head // 2].float() / head))
    return _fill(model, state, dtype, f"{STDIT_DIR} ({str(folder)!r})")


#: diffusers' attention names before 0.15 (``query``/``key``/``value``/``proj_attn``) -> the current ones
_LEGACY_ATTN = {".query.": ".to_q.", ".key.": ".to_k.", ".value.": ".to_v.", ".proj_attn.": ".to_out.0."}


def _spatial_state(state: dict[str, Tensor]) -> dict[str, Tensor]:
    prefix = "spatial_vae.module."
    out = {}
    for k, v in state.items():
        if not k.startswith(prefix):
            continue
        k = k[len(prefix):]
        if ".attentions." in k:
            for old, new in _LEGACY_ATTN.items():
                k = k.replace(old, new)
            if k.endswith(".weight") and v.ndim == 4 and v.shape[-2:] == (1, 1):  # 1x1 conv attention weights
                v = v[:, :, 0, 0]
        out[k] = v
    return out


def load_vae(folder: str | Path, dtype: torch.dtype = torch.float32) -> OpenSoraVAE:
    """``OpenSoraVAE_V1_2`` from ``OpenSora-VAE-v1.2/``: ``spatial_vae.module.*`` into a diffusers ``AutoencoderKL``
    (SDXL-VAE config unless ``config.json``'s ``vae_2d.anti_i2v_config`` gives another), ``temporal_vae.*`` into
    :class:`TemporalVAE` (``VAE_Temporal_SD`` unless ``vae_temporal`` gives other sizes), ``scale`` / ``shift``
    from the checkpoint (else ``config.json``, else Open-Sora 1.2's values)."""
    from diffusers import AutoencoderKL

    folder = Path(folder)
    cfg = _read_json(folder / "config.json")
    where = f"{VAE_DIR} ({str(folder)!r})"
    state = _read_weights(folder)
    spatial_cfg = (cfg.get("vae_2d") or {}).get("anti_i2v_config") or SDXL_VAE_CONFIG
    temporal_cfg = TemporalVAEConfig.from_dict(cfg.get("vae_temporal") or {})
    shift = cfg.get("shift", LATENT_SHIFT)
    scale = cfg.get("scale", LATENT_SCALE)
    known = ("spatial_vae.module.", "temporal_vae.")
    stray = sorted(k for k in state if not k.startswith(known) and k not in ("scale", "shift"))
    if stray:
        raise SurrogateError(f"{where}: unexpected weights {stray[:4]} (expected spatial_vae.module.*, "
                             "temporal_vae.*, scale, shift)")
    with torch.device("meta"):
        spatial = AutoencoderKL(**spatial_cfg)
        temporal = TemporalVAE(temporal_cfg)
    _fill(spatial, _spatial_state(state), dtype, f"{where} spatial_vae.module")
    t_state = {k[len("temporal_vae."):]: v for k, v in state.items() if k.startswith("temporal_vae.")}
    _fill(temporal, t_state, dtype, f"{where} temporal_vae")
    if "shift" in state:
        shift = state["shift"].flatten().tolist()
    if "scale" in state:
        scale = state["scale"].flatten().tolist()
    vae = OpenSoraVAE(spatial, temporal, micro_frame_size=int(cfg.get("micro_frame_size") or 17),
                      shift=shift, scale=scale)
    return vae.eval().requires_grad_(False)
