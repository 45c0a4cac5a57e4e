"""The surrogate protocol: what the protect loop needs from an image-to-video model.

A surrogate wraps the denoiser and the VAE of one I2V family (diffusers model classes) and exposes one
differentiable call, :meth:`Surrogate.features`, that maps an image batch in [0, 1] at the surrogate's
working size to the internal representations the Anti-I2V losses read:

* outputs of chosen denoiser blocks (IRA, IRC; paper Sec. 3.2-3.3),
* outputs of chosen VAE-encoder layers (IRA, PhotoGuard-style encoder attack),
* the image latent, the denoiser prediction and the prediction target (AdvDM-style diffusion loss).

The image enters the denoiser exactly as the diffusers pipeline of the family feeds it (each adapter
documents how; tests compare the denoiser's inputs with the real pipeline's on tiny configs). The forward
stops right after the deepest block any loss needs (early exit), which gives the same gradients as the
full forward. Hooks live only for the duration of one call.

**One z_t for both passes** (Anti-I2V Eq. 3-4: ``eps^m(z_t, z_xi, t, y)`` against ``eps^m(z_t, z_psi, t, y)``):
a forward pass is split into what the photo contributes, :meth:`Surrogate.encode` (the image conditioning: VAE
latent, CLIP tokens, masks) and the rest, which every family implements the same way:

* :meth:`Surrogate.clean_latent` turns a conditioning into the video latent ``x0`` the forward process starts
  from (the "still video" of the photo, in the family's latent convention);
* :meth:`Surrogate.noisy_latent` applies the forward process: ``z_t`` from ``x0``, the timestep and the noise;
* :meth:`Surrogate.denoise` runs the denoiser on ``z_t`` with a conditioning;
* :meth:`Surrogate.prediction_target` is the training target for ``x0`` (AdvDM's diffusion loss).

The protect loop encodes the **clean** photo once per run (no gradient) and passes its ``x0`` as ``clean=`` to
both the target pass and the adversarial pass of an iteration: they see one ``z_t``, and the perturbation's
gradient flows only through the image conditioning, the path the sampler takes at inference (where ``z_t``
comes from the sampler, not from the photo). Without ``clean=`` a pass builds ``z_t`` from its own image
(AdvDM's definition: the perturbed image's own denoising loss).
"""

from __future__ import annotations

import abc
import contextlib
import inspect
from dataclasses import dataclass, field
from typing import ClassVar, Iterator, Sequence

import torch
from torch import Tensor, nn

__all__ = [
    "FeatureRequest",
    "Features",
    "NoiseDraw",
    "Conditioning",
    "Surrogate",
    "SurrogateError",
    "first_tensor",
    "encoder_layers",
]


class SurrogateError(ValueError):
    """A surrogate was asked for something it cannot do (bad layer index, size, folder...)."""


@dataclass(frozen=True)
class FeatureRequest:
    """What one forward pass must capture.

    Attributes:
        blocks: indices into :attr:`Surrogate.block_names` whose outputs are captured.
        vae_layers: indices into :attr:`Surrogate.vae_layer_names` whose outputs are captured.
        need_output: run the denoiser to the end and return its prediction (and the prediction target).
        need_latent: return the image latent (as the pipeline scales it).
        own_latent: build ``z_t`` from the passed image itself (AdvDM), not from the shared clean latent.
        image_embed: return the image encoder's embedding of the photo (:meth:`Surrogate.image_embedding`;
            VGMShield), None for families without an image encoder.
        attention: capture the temporal self-attention maps of the denoiser
            (:meth:`Surrogate.temporal_attention_modules`; I2VGuard's temporal attack). Turns off the early exit.
        jacobian_free: run the denoiser without a graph (SDS: the gradient skips the denoiser's Jacobian); the
            returned ``noisy`` latent keeps its graph. Only kept by :meth:`merge` when every merged request that
            runs the denoiser asks for it.
    """

    blocks: frozenset[int] = frozenset()
    vae_layers: frozenset[int] = frozenset()
    need_output: bool = False
    need_latent: bool = False
    own_latent: bool = False
    image_embed: bool = False
    attention: bool = False
    jacobian_free: bool = False

    def merge(self, other: "FeatureRequest") -> "FeatureRequest":
        runs = [r for r in (self, other) if r.needs_denoiser]
        return FeatureRequest(
            blocks=self.blocks | other.blocks,
            vae_layers=self.vae_layers | other.vae_layers,
            need_output=self.need_output or other.need_output,
            need_latent=self.need_latent or other.need_latent,
            own_latent=self.own_latent or other.own_latent,
            image_embed=self.image_embed or other.image_embed,
            attention=self.attention or other.attention,
            jacobian_free=bool(runs) and all(r.jacobian_free for r in runs),
        )

    @property
    def needs_denoiser(self) -> bool:
        return bool(self.blocks) or self.need_output or self.attention

    @property
    def empty(self) -> bool:
        return not (self.blocks or self.vae_layers or self.need_output or self.need_latent or self.image_embed
                    or self.attention)


@dataclass
class Features:
    """What :meth:`Surrogate.features` captured. Tensors keep their graph to the input image."""

    blocks: dict[int, Tensor] = field(default_factory=dict)
    vae: dict[int, Tensor] = field(default_factory=dict)
    latent: Tensor | None = None
    output: Tensor | None = None
    target: Tensor | None = None
    #: the noisy video latent z_t the denoiser saw (None when the denoiser did not run)
    noisy: Tensor | None = None
    #: the image encoder's embedding of the photo (``request.image_embed``; None without an image encoder)
    image_embed: Tensor | None = None
    #: temporal self-attention maps by module name (``request.attention``), float32
    attention: dict[str, Tensor] = field(default_factory=dict)
    #: the timestep and noise of the pass (set when the denoiser ran)
    draw: "NoiseDraw | None" = None
    #: the image batch at the working size the pass was given (set by the protect loop)
    image: Tensor | None = None


@dataclass
class Conditioning:
    """What one image batch contributes to the denoiser (the output of :meth:`Surrogate.encode`).

    Attributes:
        latent: the image latent as the family's pipeline scales it (``Features.latent``; PhotoGuard's target).
        parts: family specific tensors the denoiser takes (concatenated latent, mask, CLIP tokens, ...).
        vae: VAE-encoder layer outputs captured while encoding (index -> tensor).
    """

    latent: Tensor
    parts: dict = field(default_factory=dict)
    vae: dict[int, Tensor] = field(default_factory=dict)

    @property
    def batch(self) -> int:
        return int(self.latent.shape[0])

    def detach(self) -> "Conditioning":
        """A copy without autograd history (for conditionings cached once per run)."""
        def d(v):
            return v.detach() if isinstance(v, Tensor) else v

        return Conditioning(d(self.latent), {k: d(v) for k, v in self.parts.items()},
                            {k: d(v) for k, v in self.vae.items()})


@dataclass
class NoiseDraw:
    """Timestep and noise for one iteration, shared by the target and the adversarial pass.

    Attributes:
        timestep: the timestep in the scheduler's convention, shape (B,).
        noise: Gaussian noise with the shape of the video latent.
        extra: family specific draws (e.g. SVD's conditioning-augmentation noise).
    """

    timestep: Tensor
    noise: Tensor
    extra: dict[str, Tensor] = field(default_factory=dict)


class _EarlyExit(Exception):
    """Raised from the hook of the deepest requested block to stop the denoiser forward."""


def first_tensor(output: object) -> Tensor:
    """The hidden states in a block's output (blocks return a tensor or a tuple led by one)."""
    if isinstance(output, Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]
    if hasattr(output, "sample") and isinstance(output.sample, Tensor):  # BaseOutput
        return output.sample
    raise TypeError(f"cannot find the hidden states in a block output of type {type(output).__name__}")


def encoder_layers(encoder: nn.Module, prefix: str = "encoder") -> list[tuple[str, nn.Module]]:
    """The usual VAE-encoder layer list of diffusers VAEs: each down block, then the mid block."""
    layers = [(f"{prefix}.down_blocks.{i}", b) for i, b in enumerate(encoder.down_blocks)]
    layers.append((f"{prefix}.mid_block", encoder.mid_block))
    return layers


class Surrogate(abc.ABC):
    """Base class of the I2V surrogate adapters.

    Subclasses set :attr:`family`, build their diffusers modules and implement the abstract methods.
    The base class does the hooks, the early exit, dtype handling and validation.

    Args:
        num_frames: number of *pixel* frames of the video the denoiser sees (the family maps it to latent frames).
        dtype: compute dtype of the models (float32 or bfloat16).
        gradient_checkpointing: recompute denoiser blocks in backward (less memory, more time).
        early_exit: stop the denoiser after the deepest requested block when no output is needed.
    """

    family: ClassVar[str] = "base"
    #: (height, width) the model requires, or None when any multiple of :attr:`size_multiple` works.
    native_size: ClassVar[tuple[int, int] | None] = None
    #: working size used when the model does not require one (height, width).
    default_size: ClassVar[tuple[int, int]] = (480, 720)
    size_multiple: ClassVar[int] = 16

    def __init__(
        self,
        *,
        num_frames: int,
        dtype: torch.dtype = torch.float32,
        gradient_checkpointing: bool = False,
        early_exit: bool = True,
        working_size: tuple[int, int] | None = None,
    ) -> None:
        if num_frames < 1:
            raise SurrogateError(f"num_frames must be >= 1, got {num_frames}")
        if dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise SurrogateError(f"dtype must be float32, bfloat16 or float16, got {dtype}")
        self.num_frames = int(num_frames)
        self.dtype = dtype
        self.gradient_checkpointing = bool(gradient_checkpointing)
        self.early_exit = bool(early_exit)
        self._working_size = working_size

    # ----------------------------------------------------------------- to implement
    @abc.abstractmethod
    def denoiser(self) -> nn.Module:
        """The denoiser module (transformer or U-Net)."""

    @abc.abstractmethod
    def denoiser_blocks(self) -> Sequence[tuple[str, nn.Module]]:
        """The denoiser blocks a loss can read, in forward order, with their names."""

    @abc.abstractmethod
    def vae_encoder_layers(self) -> Sequence[tuple[str, nn.Module]]:
        """The VAE-encoder layers a loss can read, in forward order, with their names."""

    @abc.abstractmethod
    def modules(self) -> list[nn.Module]:
        """Every model the loop runs (for device moves, invariants and freezing)."""

    @abc.abstractmethod
    def sample_noise(self, batch: int, generator: torch.Generator) -> NoiseDraw:
        """Draw the timestep and noise for one iteration (on CPU with ``generator``, then moved)."""

    @abc.abstractmethod
    def encode(self, image: Tensor) -> Conditioning:
        """The image conditioning of ``image`` (B, 3, H, W in [0, 1] at :meth:`working_size`), differentiable.

        Everything the photo contributes to the denoiser, exactly as the family's pipeline builds it. The VAE-layer
        features come from this call (hooks are installed only around it); a family may build more of its
        conditioning lazily in :meth:`denoise` and keep it in ``parts`` (e.g. Wan's latent of the photo followed
        by zero frames), so a cached conditioning reuses it across iterations.
        """

    @abc.abstractmethod
    def clean_latent(self, cond: Conditioning) -> Tensor:
        """The video latent ``x0`` the forward process starts from: the still video of the conditioned photo.

        float32, the shape of ``sample_noise(...).noise`` for the family (a documented exception: native
        surrogates draw their noise from a seed at this shape).
        """

    @abc.abstractmethod
    def noisy_latent(self, x0: Tensor, draw: NoiseDraw) -> Tensor:
        """The forward process: ``z_t`` from ``x0`` at ``draw.timestep`` with ``draw.noise`` (float32)."""

    @abc.abstractmethod
    def prediction_target(self, x0: Tensor, draw: NoiseDraw) -> Tensor:
        """What the denoiser is trained to predict for ``x0`` at this draw (v, epsilon, flow, x0), float32."""

    @abc.abstractmethod
    def denoise(self, cond: Conditioning, noisy: Tensor, draw: NoiseDraw) -> Tensor:
        """Run the denoiser on ``noisy`` (z_t) conditioned on ``cond`` as the pipeline would; returns the prediction.

        Block hooks installed by the base class capture features and may stop the forward early.
        """

    # ----------------------------------------------------------------- shared
    @property
    def device(self) -> torch.device:
        return next(self.denoiser().parameters()).device

    @property
    def block_names(self) -> list[str]:
        return [name for name, _ in self.denoiser_blocks()]

    @property
    def vae_layer_names(self) -> list[str]:
        return [name for name, _ in self.vae_encoder_layers()]

    @property
    def num_blocks(self) -> int:
        return len(self.denoiser_blocks())

    @property
    def num_vae_layers(self) -> int:
        return len(self.vae_encoder_layers())

    def working_size(self, height: int, width: int) -> tuple[int, int]:
        """The (height, width) the optimisation runs at for a photo of the given size."""
        if self.native_size is not None:
            return self.native_size
        if self._working_size is not None:
            return self._working_size
        return self.default_size

    def describe(self) -> dict:
        """A JSON-friendly summary for reports."""
        return {
            "family": self.family,
            "num_frames": self.num_frames,
            "dtype": str(self.dtype).replace("torch.", ""),
            "gradient_checkpointing": self.gradient_checkpointing,
            "early_exit": self.early_exit,
            "num_blocks": self.num_blocks,
            "num_vae_layers": self.num_vae_layers,
        }

    def draw_noise(self, batch: int, generator: torch.Generator, size: tuple[int, int] | None = None) -> NoiseDraw:
        """:meth:`sample_noise` for images at ``size`` (the working size of the photo), for families whose
        latent depends on it (``sample_noise(..., size=)``); families with a fixed size ignore it."""
        if size is not None:
            try:
                takes_size = "size" in inspect.signature(self.sample_noise).parameters
            except (TypeError, ValueError):
                takes_size = False
            if takes_size:
                return self.sample_noise(batch, generator, size=tuple(size))
        return self.sample_noise(batch, generator)

    def noise_for(self, x0: Tensor, draw: NoiseDraw, pixels_per_latent: int) -> Tensor:
        """``draw.noise`` as float32 on the device, checked against the shape of the video latent ``x0``.

        Raises:
            SurrogateError: naming both shapes, the pixel size they stand for and the call that draws the right one.
        """
        noise = draw.noise.to(device=self.device, dtype=torch.float32)
        if noise.shape != x0.shape:
            s = int(pixels_per_latent)
            raise SurrogateError(
                f"draw.noise has shape {tuple(noise.shape)} but the video latent x0 has shape {tuple(x0.shape)} "
                f"({x0.shape[-2] * s}x{x0.shape[-1] * s} pixels at num_frames={self.num_frames}): draw the noise "
                "with sample_noise(batch, generator, size=working size) after setting num_frames"
            )
        return noise

    def validate_request(self, request: FeatureRequest) -> None:
        """Raise :class:`SurrogateError` naming the valid range for any bad index."""
        nb, nv = self.num_blocks, self.num_vae_layers
        bad = sorted(i for i in request.blocks if not 0 <= i < nb)
        if bad:
            raise SurrogateError(
                f"denoiser block index {bad[0]} is out of range for the {self.family} surrogate: "
                f"valid indices are 0-{nb - 1} ({nb} blocks)"
            )
        bad = sorted(i for i in request.vae_layers if not 0 <= i < nv)
        if bad:
            raise SurrogateError(
                f"VAE-encoder layer index {bad[0]} is out of range for the {self.family} surrogate: "
                f"valid indices are 0-{nv - 1} ({nv} layers)"
            )

    def encode_image(self, image: Tensor, vae_layers: frozenset[int] | set[int] = frozenset()) -> Conditioning:
        """:meth:`encode` with the outputs of the VAE-encoder layers ``vae_layers`` captured into ``cond.vae``.

        Each layer keeps its *first* call (encoders that run in temporal chunks, like Wan's, see the photo first).
        """
        self.validate_request(FeatureRequest(vae_layers=frozenset(vae_layers)))
        if image.ndim != 4 or image.shape[1] != 3:
            raise SurrogateError(f"image must have shape (B, 3, H, W), got {tuple(image.shape)}")
        layers = self.vae_encoder_layers()
        captured: dict[int, Tensor] = {}

        def vae_hook(index: int):
            def hook(_module, _args, output):
                captured.setdefault(index, first_tensor(output))

            return hook

        handles = [layers[i][1].register_forward_hook(vae_hook(i)) for i in sorted(vae_layers)]
        try:
            cond = self.encode(image)
        finally:
            for h in handles:
                h.remove()
        cond.vae = {**cond.vae, **captured}
        return cond

    def features(
        self,
        image: Tensor | None,
        draw: NoiseDraw,
        request: FeatureRequest,
        *,
        clean: Tensor | None = None,
        cond: Conditioning | None = None,
    ) -> Features:
        """Run the surrogate on ``image`` (or a cached conditioning) and capture what ``request`` asks for.

        Args:
            image: (B, 3, H, W) in [0, 1] at :meth:`working_size`; may require grad. None when ``cond`` is given.
            draw: timestep and noise from :meth:`sample_noise`.
            request: which blocks, VAE layers and outputs to capture.
            clean: the shared clean video latent ``x0`` (:meth:`clean_latent` of the clean photo): ``z_t`` is built
                from it, so two passes with the same ``draw`` and ``clean`` see the same ``z_t`` (Anti-I2V's IRA).
                Ignored when ``request.own_latent`` (AdvDM). None: ``z_t`` from this image's own latent.
            cond: a conditioning computed earlier with :meth:`encode_image` (e.g. the target image's, cached
                once per run); its ``vae`` entries must cover ``request.vae_layers``.

        Returns:
            :class:`Features` whose tensors carry the graph back to ``image``.
        """
        self.validate_request(request)
        out = Features()
        if cond is None:
            if image is None:
                raise SurrogateError("features: pass an image or a cached conditioning")
            cond = self.encode_image(image, request.vae_layers)
        missing_vae = sorted(request.vae_layers - cond.vae.keys())
        if missing_vae:
            raise SurrogateError(f"the cached conditioning has no VAE-encoder layer(s) {missing_vae}")
        out.latent = cond.latent
        out.vae = {i: cond.vae[i] for i in request.vae_layers}
        if request.image_embed:
            out.image_embed = self.image_embedding(cond)
        if not request.needs_denoiser:
            return out
        if clean is None or request.own_latent:
            x0 = self.clean_latent(cond)
        else:
            x0 = clean
            if x0.shape[0] != cond.batch:
                if x0.shape[0] != 1:
                    raise SurrogateError(f"clean latent batch ({x0.shape[0]}) must be 1 or the image batch ({cond.batch})")
                x0 = x0.expand(cond.batch, *x0.shape[1:])
        noisy = self.noisy_latent(x0, draw)
        out.noisy = noisy
        out.draw = draw
        deepest = max(request.blocks) if request.blocks else -1
        stop_early = self.early_exit and not request.need_output and not request.attention and deepest >= 0
        attn_modules = list(self.temporal_attention_modules()) if request.attention else []
        if request.attention and not attn_modules:
            raise SurrogateError(f"the {self.family} surrogate has no temporal self-attention module to read")
        blocks = self.denoiser_blocks()

        def block_hook(index: int):
            def hook(_module, _args, output):
                if index in request.blocks:
                    out.blocks[index] = first_tensor(output)
                if stop_early and index == deepest:
                    raise _EarlyExit()

            return hook

        handles = []
        try:
            for i in sorted(request.blocks):
                handles.append(blocks[i][1].register_forward_hook(block_hook(i)))
            from .attention import capture_attention

            graph = contextlib.nullcontext() if not request.jacobian_free else torch.no_grad()
            # attention maps are intermediate tensors of a block: under gradient checkpointing their graph would be
            # dropped and recomputed, so a pass that reads them runs without checkpointing
            ckpt = self._checkpointing() if not request.attention else contextlib.nullcontext()
            with ckpt, capture_attention(attn_modules, out.attention), graph:
                try:
                    pred = self.denoise(cond, noisy.detach() if request.jacobian_free else noisy, draw)
                    out.output = pred.float()
                    out.target = self.prediction_target(x0, draw)
                except _EarlyExit:
                    pass
            if request.jacobian_free and out.target is not None:
                out.target = out.target.detach()
        finally:
            for h in handles:
                h.remove()
        missing = sorted(request.blocks - out.blocks.keys())
        if missing:
            raise RuntimeError(f"{self.family}: block(s) {missing} did not run in the forward pass")
        unread = [n for n, _ in attn_modules if n not in out.attention]
        if unread:
            raise SurrogateError(f"{self.family}: the attention map(s) of {', '.join(unread[:3])}"
                                 f"{' ...' if len(unread) > 3 else ''} were not computed: those attention modules did "
                                 "not run their own forward (an attention patch of the model replaced them?)")
        return out

    @contextlib.contextmanager
    def _checkpointing(self) -> Iterator[None]:
        """Enable diffusers gradient checkpointing for the call when asked, and restore the flags after."""
        den = self.denoiser()
        if not self.gradient_checkpointing or not getattr(den, "_supports_gradient_checkpointing", False):
            yield
            return
        saved = [(m, m.gradient_checkpointing) for m in den.modules() if hasattr(m, "gradient_checkpointing")]
        den.enable_gradient_checkpointing()
        try:
            yield
        finally:
            for m, flag in saved:
                m.gradient_checkpointing = flag

    def to(self, device: str | torch.device) -> "Surrogate":
        """Move every model (and cached tensors, see :meth:`_move_extras`) to ``device``; returns self."""
        device = torch.device(device)
        for m in self.modules():
            m.to(device)
        self._move_extras(device)
        return self

    def _move_extras(self, device: torch.device) -> None:
        """Move cached tensors (prompt embeddings...) with the models. Override when there are any."""

    def default_objective(self):
        """The paper's layer choices mapped onto this model's depth (CogVideoX-5B: IRC 3 -> 27, IRA on 27).

        IRA reads the deep block and the last two VAE-encoder layers; IRC pulls the deep block to the shallow one.
        """
        from ..losses import IRALoss, IRCLoss, Objective

        n = self.num_blocks
        shallow = min(max(round(3 / 42 * n), 0), n - 1)
        deep = min(max(round(27 / 42 * n), shallow + 1), n - 1)
        nv = self.num_vae_layers
        vae = tuple(range(max(nv - 2, 0), nv))
        terms = [IRALoss(blocks=(deep,), vae_layers=vae, weight=1.0)]
        notes: list[str] = []
        if deep != shallow and self.block_shapes_match(shallow, deep):
            terms.append(IRCLoss(pairs=((shallow, deep),), weight=1.0))
        else:
            notes.append(f"IRC left out: {self.family} has no shallow/deep block pair of one shape near "
                         f"blocks {shallow} and {deep}")
        return Objective(tuple(terms), tuple(notes))

    def record_block_shapes(self, run) -> list[torch.Size]:
        """The output shape of every denoiser block during ``run()`` (a no-grad probe forward; hooks removed after).

        U-Net adapters use it to find IRC pairs of equal shape (:meth:`block_shapes_match`).
        """
        shapes: dict[int, torch.Size] = {}

        def rec(i: int):
            def hook(_module, _args, output):
                shapes[i] = first_tensor(output).shape

            return hook

        handles = [mod.register_forward_hook(rec(i)) for i, (_, mod) in enumerate(self.denoiser_blocks())]
        try:
            with torch.no_grad():
                run()
        finally:
            for h in handles:
                h.remove()
        return [shapes[i] for i in range(self.num_blocks)]

    def image_embedding(self, cond: Conditioning) -> Tensor | None:
        """The image encoder's embedding of the conditioned photo (differentiable), or None when the family has no
        image encoder (CogVideoX). Default: the ``image_embeds`` part of the conditioning when there is one."""
        emb = cond.parts.get("image_embeds")
        return emb if isinstance(emb, Tensor) else None

    #: whether :meth:`generate_latent` works (the diffusers families: their pipeline's ``output_type="latent"``)
    generates_latents: ClassVar[bool] = False

    def generate_latent(self, image: Tensor, *, num_inference_steps: int = 3, seed: int = 0) -> Tensor:
        """The latent video the family's pipeline generates from ``image`` (1, 3, H, W), in the convention and
        shape of :meth:`clean_latent` at the working size, on the surrogate's device (I2VGuard's clean generation).

        Raises:
            SurrogateError: the family cannot generate a latent video (:attr:`generates_latents` is False).
        """
        if not self.generates_latents:
            raise SurrogateError(f"the {self.family} surrogate cannot generate a latent video")
        out = self.generate(image, num_inference_steps=int(num_inference_steps), seed=int(seed), output_type="latent")
        return out.to(self.device)

    def temporal_attention_modules(self) -> list[tuple[str, nn.Module]]:
        """Attention modules that attend over frames only (temporal self-attention), in forward order.

        Empty by default: DiT families (CogVideoX, Wan, LTX-Video, HunyuanVideo) have full 3D attention over all
        tokens and no temporal self-attention module. SVD (diffusers and native), DynamiCrafter and Open-Sora
        return theirs; :func:`~anti_i2v.surrogates.attention.capture_attention` must be able to read each one.
        """
        return []

    def block_shapes_match(self, i: int, j: int) -> bool:
        """Whether blocks ``i`` and ``j`` output features of one shape (IRC needs it). DiTs: always."""
        return True

    # helpers for subclasses
    @staticmethod
    def _generate_image(image: Tensor, num_inference_steps: int) -> Tensor:
        """Validate the arguments of ``generate``: one (3, H, W) or (1, 3, H, W) image, >= 1 step."""
        if image.ndim == 3:
            image = image.unsqueeze(0)
        if image.ndim != 4 or image.shape[0] != 1 or image.shape[1] != 3:
            raise SurrogateError(f"image must have shape (3, H, W) or (1, 3, H, W), got {tuple(image.shape)}")
        if int(num_inference_steps) < 1:
            raise SurrogateError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
        return image

    def _to_model(self, x: Tensor) -> Tensor:
        return x.to(device=self.device, dtype=self.dtype)
