"""Dual-Space Perturbation (DSP), Anti-I2V Sec. 3.1.

The perturbation has two parts, both optimised by the protect loop:

* a colour part on the a* and b* channels of CIE L*a*b* (L* is left alone), a field at the surrogate's
  working resolution that is upsampled to the photo's resolution;
* a low-frequency part: the top-left ``k x k`` block of orthonormal DCT-II coefficients per channel,
  synthesised directly at the photo's resolution as ``C_H[:k].T @ coeff @ C_W[:k]`` (no full DCT needed).

``mix`` splits the perturbation between the two spaces (1 = colour only, 0 = DCT only). Both parameter
tensors are scaled so that one parameter unit moves a pixel by about one unit of the [0, 1] range, which
lets one signed step size serve both.

Budget convention: ``eps`` is in 1/255 of the [0, 1] pixel range (default 16, the paper's 16/255). Code that
budgets images in [-1, 1] (e.g. diffusers pipelines, the authors' baseline repo) uses twice the number for
the same change: their "16/255 in [-1, 1]" is ``eps=8`` here. The projection to the L-inf ball and to [0, 1]
is done in RGB inside the graph (clamping is a valid sub-gradient); near-black and near-white pixels cannot
take an a*/b* change, so projecting in Lab would not bound the RGB change.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import kornia
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "DSPConfig",
    "DSPParams",
    "DualSpacePerturbation",
    "dct_matrix",
    "low_freq_synthesis",
    "apply_dsp",
    "init_params",
    "project_linf",
    "restore_luminance",
    "check_image",
    "quantize_8bit",
    "check_mask",
]

#: a*/b* units per parameter unit: 16/255 in RGB is a median of ~6.5 a* and ~8.2 b* units, i.e. ~100x.
LAB_SCALE = 100.0
DCT_CHANNEL_SETS = ("rgb", "ab", "lab")


@dataclass(frozen=True)
class DSPConfig:
    """Settings of the Dual-Space Perturbation.

    Args:
        eps: L-inf budget in 1/255 of the [0, 1] pixel range (paper: 16). ``eps=8`` equals "16/255" in [-1, 1].
        dct_block: k, the side of the low-frequency DCT coefficient block (k x k per channel).
        dct_channels: where the DCT part acts: ``"rgb"`` (R, G, B), ``"ab"`` (a*, b*) or ``"lab"`` (L*, a*, b*).
        mix: share of the colour (a*/b*) part; 1 - mix goes to the DCT part.
        restore_luminance: finish with rounds of "clip in RGB, restore the original L*".
        restore_rounds: number of such rounds.
    """

    eps: float = 16.0
    dct_block: int = 32
    dct_channels: str = "rgb"
    mix: float = 0.5
    restore_luminance: bool = False
    restore_rounds: int = 5

    def __post_init__(self) -> None:
        if not (math.isfinite(self.eps) and 0 < self.eps <= 255):
            raise ValueError(f"eps must be in (0, 255] (units of 1/255), got {self.eps}")
        if int(self.dct_block) != self.dct_block or self.dct_block < 1:
            raise ValueError(f"dct_block must be a positive integer, got {self.dct_block}")
        if self.dct_channels not in DCT_CHANNEL_SETS:
            raise ValueError(f"dct_channels must be one of {DCT_CHANNEL_SETS}, got {self.dct_channels!r}")
        if not (0.0 <= self.mix <= 1.0):
            raise ValueError(f"mix must be in [0, 1], got {self.mix}")
        if self.restore_rounds < 0:
            raise ValueError(f"restore_rounds must be >= 0, got {self.restore_rounds}")

    @property
    def eps01(self) -> float:
        """The budget in [0, 1] pixel units."""
        return self.eps / 255.0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class DSPParams:
    """The optimised tensors. ``lab``: (B, 2, h, w) at working size; ``dct``: (B, C, k, k)."""

    lab: Tensor
    dct: Tensor
    extra: dict = field(default_factory=dict)

    def tensors(self) -> list[Tensor]:
        return [self.lab, self.dct]


def check_image(image: Tensor, name: str = "image") -> Tensor:
    """Validate an image batch (B, C, H, W) in [0, 1]; RGBA loses alpha, grey is repeated, NaN is refused.

    Returns the RGB batch (a new tensor when converted, else the input).
    """
    if not isinstance(image, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(image).__name__}")
    if image.ndim == 3:
        image = image.unsqueeze(0)
    if image.ndim != 4:
        raise ValueError(f"{name} must have shape (B, C, H, W), got {tuple(image.shape)}")
    if image.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (0 images)")
    if image.shape[-1] < 2 or image.shape[-2] < 2:
        raise ValueError(f"{name} is {image.shape[-2]}x{image.shape[-1]} pixels: at least 2x2 is needed")
    if not image.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor in [0, 1], got {image.dtype}")
    c = image.shape[1]
    if c == 4:
        image = image[:, :3]
    elif c == 1:
        image = image.expand(-1, 3, -1, -1)
    elif c != 3:
        raise ValueError(f"{name} must have 1, 3 or 4 channels (grey, RGB, RGBA), got {c}")
    if not torch.isfinite(image).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    lo, hi = float(image.min()), float(image.max())
    if lo < -1e-4 or hi > 1 + 1e-4:
        raise ValueError(f"{name} must have values in [0, 1], got [{lo:.4g}, {hi:.4g}]")
    return image.clamp(0, 1) if (lo < 0 or hi > 1) else image


def check_mask(mask: Tensor | None, image: Tensor, name: str = "mask") -> Tensor | None:
    """Validate a protection mask for ``image`` (B, 3, H, W): (H, W), (B|1, H, W) or (B|1, 1, H, W) in [0, 1].

    Returns a (B|1, 1, H, W) float tensor on the image's device, or None.
    """
    if mask is None:
        return None
    if not isinstance(mask, Tensor) or not mask.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor in [0, 1]")
    m = mask
    if m.ndim == 2:
        m = m[None, None]
    elif m.ndim == 3:
        m = m[:, None]
    if m.ndim != 4 or m.shape[1] != 1:
        raise ValueError(f"{name} must have shape (H, W), (B, H, W) or (B, 1, H, W), got {tuple(mask.shape)}")
    b, _, h, w = image.shape
    if tuple(m.shape[-2:]) != (h, w):
        raise ValueError(f"{name} is {m.shape[-2]}x{m.shape[-1]} but the image is {h}x{w}: they must match")
    if m.shape[0] not in (1, b):
        raise ValueError(f"{name} has a batch of {m.shape[0]}; it must be 1 or the image batch ({b})")
    if not torch.isfinite(m).all() or float(m.min()) < 0 or float(m.max()) > 1:
        raise ValueError(f"{name} must have finite values in [0, 1]")
    if float(m.max()) == 0:
        raise ValueError(f"{name} is all zero: nothing would be protected")
    return m.to(device=image.device, dtype=image.dtype)


def dct_matrix(n: int, k: int | None = None, *, device=None, dtype=torch.float32) -> Tensor:
    """The first ``k`` rows of the orthonormal DCT-II matrix of size ``n`` (shape (k, n))."""
    k = n if k is None else min(k, n)
    i = torch.arange(n, device=device, dtype=torch.float64)
    u = torch.arange(k, device=device, dtype=torch.float64).unsqueeze(1)
    m = torch.cos(math.pi * (2 * i + 1) * u / (2 * n)) * math.sqrt(2.0 / n)
    m[0] = m[0] / math.sqrt(2.0)
    return m.to(dtype)


def low_freq_synthesis(coeff: Tensor, height: int, width: int) -> Tensor:
    """Inverse orthonormal 2-D DCT of a zero-padded low-frequency block.

    Equals ``torch_dct.idct_2d(pad(coeff), norm="ortho")`` but costs two small matrix products.

    Args:
        coeff: (..., k, k) low-frequency coefficients.
    Returns:
        (..., height, width) spatial signal.
    """
    k = coeff.shape[-1]
    ch = dct_matrix(height, k, device=coeff.device, dtype=coeff.dtype)[: min(k, height)]
    cw = dct_matrix(width, k, device=coeff.device, dtype=coeff.dtype)[: min(k, width)]
    c = coeff[..., : ch.shape[0], : cw.shape[0]]
    return ch.transpose(0, 1) @ c @ cw


def init_params(
    batch: int, work_size: tuple[int, int], config: DSPConfig, *, device=None, dtype=torch.float32
) -> DSPParams:
    """Zero parameters (a zero perturbation is the identity)."""
    h, w = work_size
    nch = 3 if config.dct_channels in ("rgb", "lab") else 2
    lab = torch.zeros(batch, 2, h, w, device=device, dtype=dtype)
    dct = torch.zeros(batch, nch, config.dct_block, config.dct_block, device=device, dtype=dtype)
    return DSPParams(lab=lab, dct=dct)


def project_linf(adv: Tensor, image: Tensor, eps01: float) -> Tensor:
    """Clip ``adv`` to the L-inf ball of radius ``eps01`` around ``image`` and to [0, 1] (differentiable)."""
    delta = (adv - image).clamp(-eps01, eps01)
    return (image + delta).clamp(0.0, 1.0)


def _upsample(field_: Tensor, height: int, width: int) -> Tensor:
    if field_.shape[-2:] == (height, width):
        return field_
    return F.interpolate(field_, size=(height, width), mode="bilinear", align_corners=False)


def apply_dsp(image: Tensor, params: DSPParams, config: DSPConfig, mask: Tensor | None = None) -> Tensor:
    """Perturb ``image`` (B, 3, H, W in [0, 1]) with the DSP ``params``; returns the projected image.

    The result is differentiable in ``params`` and lies in [0, 1] within ``config.eps`` of ``image`` in
    RGB. With zero parameters it equals ``image`` exactly. ``mask`` (B or 1, 1, H, W in [0, 1]) scales the
    change per pixel: 0 leaves a pixel exactly as it was (e.g. protect only the face).
    """
    b, _, h, w = image.shape
    if params.lab.shape[0] != b or params.dct.shape[0] != b:
        raise ValueError(
            f"perturbation batch ({params.lab.shape[0]}) does not match the image batch ({b})"
        )
    lab = kornia.color.rgb_to_lab(image)
    d_ab = _upsample(params.lab, h, w) * (config.mix * LAB_SCALE)
    # one orthonormal coefficient unit peaks at 2 / sqrt(HW) pixels: rescale to ~1 pixel unit.
    d_dct = low_freq_synthesis(params.dct, h, w) * ((1.0 - config.mix) * math.sqrt(h * w) / 2.0)
    zeros_l = torch.zeros_like(lab[:, :1])
    if config.dct_channels == "rgb":
        d_lab = torch.cat([zeros_l, d_ab], dim=1)
    elif config.dct_channels == "ab":
        d_lab = torch.cat([zeros_l, d_ab + d_dct * LAB_SCALE], dim=1)
    else:  # "lab": L* in its 0-100 range takes the same pixel-unit scaling
        d_lab = torch.cat([d_dct[:, :1] * 100.0, d_ab + d_dct[:, 1:] * LAB_SCALE], dim=1)
    # the change the Lab edit makes, measured against the same conversion of the clean image: exactly
    # zero for zero parameters (no round-trip error leaks into the output).
    delta = kornia.color.lab_to_rgb(lab + d_lab, clip=False) - kornia.color.lab_to_rgb(lab, clip=False)
    if config.dct_channels == "rgb":
        delta = delta + d_dct
    if mask is not None:
        delta = delta.clamp(-config.eps01, config.eps01) * mask
    return project_linf(image + delta, image, config.eps01)


def restore_luminance(adv: Tensor, image: Tensor, config: DSPConfig) -> Tensor:
    """Finishing projection: rounds of "clip in RGB, put back the original L*", then a final clip.

    Keeps the L-inf budget exactly and the mean |dL*| small. No gradient is needed here.
    """
    with torch.no_grad():
        l0 = kornia.color.rgb_to_lab(image)[:, :1]
        x = project_linf(adv, image, config.eps01)
        for _ in range(config.restore_rounds):
            lab = kornia.color.rgb_to_lab(x)
            lab = torch.cat([l0, lab[:, 1:]], dim=1)
            x = project_linf(kornia.color.lab_to_rgb(lab, clip=False), image, config.eps01)
        return x


def quantize_8bit(adv: Tensor, image: Tensor, eps01: float) -> Tensor:
    """Snap ``adv`` to the 8-bit grid (k/255) without leaving the L-inf ball around ``image`` or [0, 1].

    What is saved as an 8-bit PNG is then exactly what was measured (ComfyUI's SaveImage truncates, which would
    otherwise add up to 1/255 to the change). For 8-bit originals and an integer ``eps`` the budget holds exactly.
    """
    with torch.no_grad():
        q = torch.round(adv * 255.0)
        lo = torch.ceil((image - eps01) * 255.0 - 1e-4).clamp(min=0.0)
        hi = torch.floor((image + eps01) * 255.0 + 1e-4).clamp(max=255.0)
        return (torch.maximum(torch.minimum(q, hi), lo) / 255.0).to(adv.dtype)


class DualSpacePerturbation(nn.Module):
    """Module form of :func:`apply_dsp` holding its parameters (handy for Adam and for ``state_dict``).

    Example:
        >>> cfg = DSPConfig(eps=16, dct_block=8)
        >>> dsp = DualSpacePerturbation(1, (32, 32), cfg)
        >>> x = torch.rand(1, 3, 40, 50)
        >>> torch.equal(dsp(x), x)
        True
    """

    def __init__(self, batch: int, work_size: tuple[int, int], config: DSPConfig) -> None:
        super().__init__()
        self.config = config
        p = init_params(batch, work_size, config)
        self.lab = nn.Parameter(p.lab)
        self.dct = nn.Parameter(p.dct)

    def forward(self, image: Tensor) -> Tensor:
        return apply_dsp(image, DSPParams(self.lab, self.dct), self.config)
