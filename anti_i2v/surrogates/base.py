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
"""

from __future__ import annotations

import abc
import contextlib
from dataclasses import dataclass, field
from typing import ClassVar, Iterator, Sequence

import torch
from torch import Tensor, nn

__all__ = [
    "FeatureRequest",
    "Features",
    "NoiseDraw",
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
    """

    blocks: frozenset[int] = frozenset()
    vae_layers: frozenset[int] = frozenset()
    need_output: bool = False
    need_latent: bool = False

    def merge(self, other: "FeatureRequest") -> "FeatureRequest":
        return FeatureRequest(
            blocks=self.blocks | other.blocks,
            vae_layers=self.vae_layers | other.vae_layers,
            need_output=self.need_output or other.need_output,
            need_latent=self.need_latent or other.need_latent,
        )

    @property
    def needs_denoiser(self) -> bool:
        return bool(self.blocks) or self.need_output

    @property
    def empty(self) -> bool:
        return not (self.blocks or self.vae_layers or self.need_output or self.need_latent)


@dataclass
class Features:
    """What :meth:`Surrogate.features` captured. Tensors keep their graph to the input image."""

    blocks: dict[int, Tensor] = field(default_factory=dict)
    vae: dict[int, Tensor] = field(default_factory=dict)
    latent: Tensor | None = None
    output: Tensor | None = None
    target: Tensor | None = None


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
    def _forward(self, image: Tensor, draw: NoiseDraw, request: FeatureRequest, out: Features) -> None:
        """Encode ``image`` (B, 3, H, W in [0, 1]) and run the denoiser as the pipeline would.

        Must fill ``out.latent`` (always) and, when the denoiser runs to the end, ``out.output`` and
        ``out.target``. Must skip the denoiser when ``request.needs_denoiser`` is false. Hooks installed by
        the base class capture blocks and VAE layers; the early exit surfaces as an exception the base
        class catches.
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

    def features(self, image: Tensor, draw: NoiseDraw, request: FeatureRequest) -> Features:
        """Run the surrogate on ``image`` and capture what ``request`` asks for.

        Args:
            image: (B, 3, H, W) in [0, 1] at :meth:`working_size`; may require grad.
            draw: timestep and noise from :meth:`sample_noise`.
            request: which blocks, VAE layers and outputs to capture.

        Returns:
            :class:`Features` whose tensors carry the graph back to ``image``.
        """
        self.validate_request(request)
        if image.ndim != 4 or image.shape[1] != 3:
            raise SurrogateError(f"image must have shape (B, 3, H, W), got {tuple(image.shape)}")
        out = Features()
        deepest = max(request.blocks) if request.blocks else -1
        stop_early = self.early_exit and not request.need_output and deepest >= 0
        blocks = self.denoiser_blocks()
        vae_layers = self.vae_encoder_layers()

        def block_hook(index: int):
            def hook(_module, _args, output):
                if index in request.blocks:
                    out.blocks[index] = first_tensor(output)
                if stop_early and index == deepest:
                    raise _EarlyExit()

            return hook

        def vae_hook(index: int):
            # first call only: encoders that run in temporal chunks (Wan) see the image itself first
            def hook(_module, _args, output):
                out.vae.setdefault(index, first_tensor(output))

            return hook

        handles = []
        try:
            if request.blocks:
                for i, (_, mod) in enumerate(blocks[: deepest + 1]):
                    if i in request.blocks:
                        handles.append(mod.register_forward_hook(block_hook(i)))
            for i in request.vae_layers:
                handles.append(vae_layers[i][1].register_forward_hook(vae_hook(i)))
            with self._checkpointing():
                try:
                    self._forward(image, draw, request, out)
                except _EarlyExit:
                    pass
        finally:
            for h in handles:
                h.remove()
        missing = sorted(request.blocks - out.blocks.keys())
        if missing:
            raise RuntimeError(f"{self.family}: block(s) {missing} did not run in the forward pass")
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
        if deep != shallow and self.block_shapes_match(shallow, deep):
            terms.append(IRCLoss(pairs=((shallow, deep),), weight=1.0))
        return Objective(tuple(terms))

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
