"""Dual-Space Perturbation (DSP), Anti-I2V Sec. 3.1, with numerics that keep it imperceptible.

The perturbation lives in two spaces, both optimised by the protect loop (paper Eq. 1-2):

* a **colour part** on the a* and b* channels of CIE L*a*b* (L* is left alone): a field at the photo's
  chroma resolution (``chroma_downsample``: 2 = half the photo's size, the resolution JPEG's 4:2:0
  subsampling keeps; 1 = full resolution), bilinearly upsampled to the photo;
* a **low-frequency part**: the top-left ``k x k`` block of orthonormal DCT-II coefficients per channel
  (``dct_channels``: a*/b* by default, so L* stays untouched), synthesised directly at the photo's resolution
  as ``C_H[:k].T @ coeff @ C_W[:k]`` (no full DCT needed).

Numerics (how this differs from a naive implementation, and why; measured in ``bench/quality.py``):

* **Pixel units everywhere.** Both parts are parametrised in units of the [0, 1] RGB range. An a*/b* change
  is converted per pixel with the local Jacobian of Lab -> sRGB: ``scale(x) = 1 / max_c(|dRGB_c/da*| +
  |dRGB_c/db*|)`` Lab units per pixel unit, so a signed step of ``s`` on the colour field moves no RGB
  channel of any pixel by more than about ``s`` (first order), whatever the pixel's colour.
* **One step moves no pixel by more than the step** (:func:`step_params`). The default step is the gradient
  scaled so that its peak (for the DCT part: the peak of the synthesised pattern) equals the step size; the
  classic signed step (``rule="sign"``) is also available, with the DCT block's signed step scaled so its
  synthesised pattern peaks at the step size: a plain signed step on all ``k*k`` coefficients would move
  pixels by about ``k`` times the step and fill the budget in a few iterations. Bilinear upsampling of the
  colour field cannot exceed the field's own step.
* **Bounds in pixel units.** The colour field is clipped to ``mix * eps`` and the synthesised DCT part to
  ``(1 - mix) * eps`` (its coefficients are scaled down when its peak exceeds that): the two parts add up to
  at most the budget before the final projection, so the projection no longer pins most pixels at the budget.
* The final projection to the L-inf ball and to [0, 1] is done in RGB inside the graph (clamping is a valid
  sub-gradient); near-black and near-white pixels cannot take an a*/b* change, so projecting in Lab would not
  bound the RGB change. ``restore_luminance`` finishes with rounds of "clip in RGB, put back the original L*".

``space`` chooses what is optimised: ``"dsp"`` (both parts, the paper's DSP), ``"ab"`` (the colour part alone),
``"dct"`` (the low-frequency part alone) or ``"rgb"`` (plain per-pixel L-inf PGD in RGB, what the baselines of
the field use; for comparisons).

Budget convention: ``eps`` is in 1/255 of the [0, 1] pixel range. Code that budgets images in [-1, 1] (e.g.
diffusers pipelines, the authors' baseline repo) uses twice the number for the same change: their "16/255 in
[-1, 1]" is ``eps=8`` here, and 8 is this module's default (the paper's 16/255 of the [0, 1] range is visible:
see the README's quality figures). ``eps`` stays the user's knob.
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
    "SPACES",
    "dct_matrix",
    "low_freq_synthesis",
    "apply_dsp",
    "init_params",
    "step_params",
    "STEP_RULES",
    "project_params",
    "chroma_scale",
    "project_linf",
    "restore_luminance",
    "check_image",
    "quantize_8bit",
    "check_mask",
]

DCT_CHANNEL_SETS = ("ab", "rgb", "lab")
#: perturbation spaces: the DSP, its two parts alone, and plain RGB PGD
SPACES = ("dsp", "ab", "dct", "rgb")
#: the largest Lab change one pixel unit may map to (guards the Jacobian near out-of-gamut pixels)
_MAX_LAB_PER_PIXEL = 1000.0


@dataclass(frozen=True)
class DSPConfig:
    """Settings of the perturbation.

    Args:
        eps: L-inf budget in 1/255 of the [0, 1] pixel range (default 8; ``eps=8`` equals "16/255" in [-1, 1]).
        space: ``"dsp"`` (colour + DCT, the paper's DSP), ``"ab"`` (colour part only), ``"dct"`` (DCT part only)
            or ``"rgb"`` (plain per-pixel RGB PGD, for comparisons).
        dct_block: k, the side of the low-frequency DCT coefficient block (k x k per channel).
        dct_channels: where the DCT part acts: ``"ab"`` (a*, b*; L* untouched), ``"rgb"`` or ``"lab"``.
        mix: share of the budget for the colour part in ``"dsp"``; ``1 - mix`` goes to the DCT part.
        chroma_downsample: the colour field has the photo's size divided by this (2: JPEG's chroma resolution).
        restore_luminance: finish with rounds of "clip in RGB, restore the original L*".
        restore_rounds: number of such rounds.
    """

    eps: float = 8.0
    space: str = "dsp"
    dct_block: int = 16
    dct_channels: str = "ab"
    mix: float = 0.5
    chroma_downsample: int = 2
    restore_luminance: bool = True
    restore_rounds: int = 5

    def __post_init__(self) -> None:
        if not (math.isfinite(self.eps) and 0 < self.eps <= 255):
            raise ValueError(f"eps must be in (0, 255] (units of 1/255), got {self.eps}")
        if self.space not in SPACES:
            raise ValueError(f"space must be one of {SPACES}, got {self.space!r}")
        if int(self.dct_block) != self.dct_block or self.dct_block < 1:
            raise ValueError(f"dct_block must be a positive integer, got {self.dct_block}")
        if self.dct_channels not in DCT_CHANNEL_SETS:
            raise ValueError(f"dct_channels must be one of {DCT_CHANNEL_SETS}, got {self.dct_channels!r}")
        if not (0.0 <= self.mix <= 1.0):
            raise ValueError(f"mix must be in [0, 1], got {self.mix}")
        if int(self.chroma_downsample) != self.chroma_downsample or not 1 <= self.chroma_downsample <= 16:
            raise ValueError(f"chroma_downsample must be an integer in 1-16, got {self.chroma_downsample}")
        if self.restore_rounds < 0:
            raise ValueError(f"restore_rounds must be >= 0, got {self.restore_rounds}")

    @property
    def eps01(self) -> float:
        """The budget in [0, 1] pixel units."""
        return self.eps / 255.0

    @property
    def colour_share(self) -> float:
        """Share of the budget (and of each step) of the colour part."""
        return {"dsp": self.mix, "ab": 1.0, "dct": 0.0, "rgb": 0.0}[self.space]

    @property
    def dct_share(self) -> float:
        """Share of the budget (and of each step) of the low-frequency DCT part."""
        return {"dsp": 1.0 - self.mix, "ab": 0.0, "dct": 1.0, "rgb": 0.0}[self.space]

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class DSPParams:
    """The optimised tensors and what is precomputed for one photo batch.

    Attributes:
        lab: (B, 2, H/c, W/c) colour field in pixel units (empty when the space has no colour part).
        dct: (B, C, k, k) low-frequency coefficients in pixel units (empty when the space has no DCT part).
        rgb: (B, 3, H, W) per-pixel RGB perturbation (``space="rgb"`` only; empty otherwise).
        extra: precomputed per-photo tensors (the clean Lab image, the per-pixel Lab scale, DCT matrices).
    """

    lab: Tensor
    dct: Tensor
    rgb: Tensor | None = None
    extra: dict = field(default_factory=dict)

    def tensors(self) -> list[Tensor]:
        """The tensors the optimiser updates (non-empty ones only)."""
        return [t for t in (self.lab, self.dct, self.rgb) if t is not None and t.numel() > 0]

    def detached(self) -> "DSPParams":
        d = (lambda t: None if t is None else t.detach())
        return DSPParams(d(self.lab), d(self.dct), d(self.rgb), self.extra)


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


def _lab_scale(lab: Tensor, channels: tuple[int, ...], *, delta: float = 0.5) -> Tensor:
    """Lab units per RGB pixel unit of a change on ``channels`` of ``lab`` at every pixel, (B, 1, H, W).

    ``1 / max_c(sum_k |dRGB_c / dLab_k|)`` from central differences of Lab -> sRGB at the photo's own colours:
    a change of ``s * scale`` on those channels (any signs) moves no RGB channel by more than about ``s``.
    """
    with torch.no_grad():
        total = torch.zeros_like(lab)
        for ch in channels:
            e = torch.zeros_like(lab)
            e[:, ch] = delta
            d = kornia.color.lab_to_rgb(lab + e, clip=False) - kornia.color.lab_to_rgb(lab - e, clip=False)
            total = total + (d / (2 * delta)).abs()
        worst = total.amax(dim=1, keepdim=True)
        return 1.0 / worst.clamp_min(1.0 / _MAX_LAB_PER_PIXEL)


def chroma_scale(image: Tensor, lab: Tensor | None = None) -> Tensor:
    """Lab units per RGB pixel unit of an a*/b* change at every pixel, (B, 1, H, W) (see :func:`_lab_scale`)."""
    lab = kornia.color.rgb_to_lab(image) if lab is None else lab
    return _lab_scale(lab, (1, 2)).to(image.dtype)


def _chroma_size(height: int, width: int, config: DSPConfig) -> tuple[int, int]:
    c = int(config.chroma_downsample)
    return (max(1, math.ceil(height / c)), max(1, math.ceil(width / c)))


def _dct_scale(height: int, width: int) -> float:
    # one orthonormal coefficient unit peaks at 2 / sqrt(HW): rescale so one unit is ~one pixel unit
    return math.sqrt(height * width) / 2.0


def init_params(
    image: Tensor | int, work_size: tuple[int, int] | None = None, config: DSPConfig | None = None, *,
    device=None, dtype=torch.float32,
) -> DSPParams:
    """Zero parameters for ``image`` (B, 3, H, W) (a zero perturbation is the identity), with the per-photo
    precomputation (clean Lab image, per-pixel Lab scale, DCT synthesis matrices).

    ``work_size`` is accepted for backward compatibility and ignored: the colour field follows the photo.
    """
    config = config or DSPConfig()
    if not isinstance(image, Tensor):
        raise TypeError("init_params needs the photo batch (B, 3, H, W) to precompute its colour scale")
    b, _, h, w = image.shape
    device = image.device if device is None else device
    x = image.to(device=device, dtype=dtype)
    extra: dict = {}
    empty = torch.zeros(b, 0, device=device, dtype=dtype)
    lab_p, dct_p, rgb_p = empty, empty.clone(), None
    if config.space == "rgb":
        rgb_p = torch.zeros(b, 3, h, w, device=device, dtype=dtype)
    else:
        lab0 = kornia.color.rgb_to_lab(x)
        extra["lab0"] = lab0
        extra["rgb_of_lab0"] = kornia.color.lab_to_rgb(lab0, clip=False)
        extra["scale_ab"] = chroma_scale(x, lab0)
        if config.colour_share > 0:
            lab_p = torch.zeros(b, 2, *_chroma_size(h, w, config), device=device, dtype=dtype)
        if config.dct_share > 0:
            nch = 2 if config.dct_channels == "ab" else 3
            dct_p = torch.zeros(b, nch, config.dct_block, config.dct_block, device=device, dtype=dtype)
            k = config.dct_block
            extra["ch"] = dct_matrix(h, k, device=device, dtype=dtype)
            extra["cw"] = dct_matrix(w, k, device=device, dtype=dtype)
            if config.dct_channels == "lab":
                extra["scale_l"] = _lab_scale(lab0, (0,))
    return DSPParams(lab=lab_p, dct=dct_p, rgb=rgb_p, extra=extra)


def _synth(coeff: Tensor, params: DSPParams, h: int, w: int) -> Tensor:
    """The DCT part in pixel units at the photo's size (B, C, H, W)."""
    ch, cw = params.extra.get("ch"), params.extra.get("cw")
    if ch is None or ch.shape[1] != h or cw.shape[1] != w:
        return low_freq_synthesis(coeff, h, w) * _dct_scale(h, w)
    k = coeff.shape[-1]
    ch, cw = ch[: min(k, h)], cw[: min(k, w)]
    return ch.transpose(0, 1) @ coeff[..., : ch.shape[0], : cw.shape[0]] @ cw * _dct_scale(h, w)


def _upsample(field_: Tensor, height: int, width: int) -> Tensor:
    if field_.shape[-2:] == (height, width):
        return field_
    return F.interpolate(field_, size=(height, width), mode="bilinear", align_corners=False)


def apply_dsp(image: Tensor, params: DSPParams, config: DSPConfig, mask: Tensor | None = None) -> Tensor:
    """Perturb ``image`` (B, 3, H, W in [0, 1]) with ``params``; returns the projected image.

    The result is differentiable in ``params`` and lies in [0, 1] within ``config.eps`` of ``image`` in
    RGB. With zero parameters it equals ``image`` exactly. ``mask`` (B or 1, 1, H, W in [0, 1]) scales the
    change per pixel: 0 leaves a pixel exactly as it was (e.g. protect only the face).
    """
    b, _, h, w = image.shape
    for t in params.tensors():
        if t.shape[0] != b:
            raise ValueError(f"perturbation batch ({t.shape[0]}) does not match the image batch ({b})")
    if config.space == "rgb":
        delta = params.rgb
    else:
        lab = params.extra.get("lab0")
        if lab is None or lab.shape[-2:] != (h, w):
            params.extra.update(init_params(image, config=config).extra)
            lab = params.extra["lab0"]
        scale = params.extra["scale_ab"]
        d_ab = torch.zeros(b, 2, h, w, device=image.device, dtype=image.dtype)
        d_l = torch.zeros(b, 1, h, w, device=image.device, dtype=image.dtype)
        d_rgb = None
        if params.lab.numel():
            d_ab = d_ab + _upsample(params.lab, h, w) * scale
        if params.dct.numel():
            d = _synth(params.dct, params, h, w)
            if config.dct_channels == "ab":
                d_ab = d_ab + d * scale
            elif config.dct_channels == "lab":
                d_l = d[:, :1] * params.extra["scale_l"]
                d_ab = d_ab + d[:, 1:] * scale
            else:
                d_rgb = d
        # the change the Lab edit makes, measured against the same conversion of the clean image: exactly
        # zero for zero parameters (no round-trip error leaks into the output).
        delta = kornia.color.lab_to_rgb(lab + torch.cat([d_l, d_ab], dim=1), clip=False) - params.extra["rgb_of_lab0"]
        if d_rgb is not None:
            delta = delta + d_rgb
    if mask is not None:
        delta = delta.clamp(-config.eps01, config.eps01) * mask
    return project_linf(image + delta, image, config.eps01)


STEP_RULES = ("normalized", "sign")


def step_params(
    params: DSPParams, grads: list[Tensor | None], lr: float, config: DSPConfig, *, rule: str = "normalized"
) -> None:
    """One descent step on the parameters (in place) that moves no pixel by more than ``lr``.

    Each part's step is its share of ``lr`` (``mix`` / ``1 - mix``), in pixel units. Two rules:

    * ``"normalized"`` (default): the step is the gradient divided by its peak, per image: the element (colour
      field, RGB field) or the synthesised DCT pixel with the largest gradient moves by ``share * lr``, the
      others in proportion. The change goes where the model is sensitive.
    * ``"sign"``: L-inf PGD's signed step (Madry et al. 2018): every element moves by ``share * lr``; the DCT
      block steps along ``sign(g)`` scaled so that its synthesised pattern peaks at ``share * lr``.

    Why ``"normalized"`` is the default (a deviation from the signed step of PGD-style protections): the
    surrogate sees the photo resized to its working size, so most full-resolution elements get a vanishing
    gradient (detail the resize filters out). A signed step moves them by the full step anyway: visible change
    that does nothing to the model. Measured with ``bench/quality.py`` (README, "Does it work?"): at equal
    CIEDE2000, the default DSP with this step disrupted the tiny surrogates' videos 1-32 % more than signed RGB
    PGD (all 9 photo / family pairs), where the DSP with signed steps lost in 7 of 9.

    Follow with :func:`project_params`.
    """
    if rule not in STEP_RULES:
        raise ValueError(f"rule must be one of {STEP_RULES}, got {rule!r}")
    with torch.no_grad():
        for t, g in zip(params.tensors(), grads):
            if g is None:
                continue
            share = config.dct_share if t is params.dct else (config.colour_share if t is params.lab else 1.0)
            if t is params.dct:
                h, w = params.extra["ch"].shape[1], params.extra["cw"].shape[1]
                d = g.sign() if rule == "sign" else g
                dims = (-2, -1) if rule == "sign" else (1, 2, 3)
                peak = _synth(d, params, h, w).abs().amax(dim=dims, keepdim=True).clamp_min(1e-30)
                t.sub_(d * (share * lr / peak))
            elif rule == "sign":
                t.sub_(share * lr * g.sign())
            else:
                peak = g.abs().amax(dim=tuple(range(1, g.ndim)), keepdim=True).clamp_min(1e-30)
                t.sub_(g * (share * lr / peak))


def project_params(params: DSPParams, config: DSPConfig) -> None:
    """Bound each part in pixel units (in place): colour field to ``mix * eps``, synthesised DCT part to
    ``(1 - mix) * eps`` (coefficients scaled down when its peak exceeds it), RGB field to ``eps``."""
    eps = config.eps01
    with torch.no_grad():
        if params.rgb is not None and params.rgb.numel():
            params.rgb.clamp_(-eps, eps)
        if params.lab.numel():
            bound = config.colour_share * eps
            params.lab.clamp_(-bound, bound)
        if params.dct.numel():
            bound = config.dct_share * eps
            h, w = params.extra["ch"].shape[1], params.extra["cw"].shape[1]
            peak = _synth(params.dct, params, h, w).abs().amax(dim=(-2, -1), keepdim=True)
            params.dct.mul_((bound / peak.clamp_min(1e-12)).clamp(max=1.0))


def project_linf(adv: Tensor, image: Tensor, eps01: float) -> Tensor:
    """Clip ``adv`` to the L-inf ball of radius ``eps01`` around ``image`` and to [0, 1] (differentiable)."""
    delta = (adv - image).clamp(-eps01, eps01)
    return (image + delta).clamp(0.0, 1.0)


def restore_luminance(adv: Tensor, image: Tensor, config: DSPConfig) -> Tensor:
    """Finishing projection: rounds of "clip in RGB, put back the original L*", then a final clip.

    Each round adds the RGB change that moving L* back to the original's makes, measured against the same
    conversion (so a pixel whose L* is already the original's is left exactly as it is). Keeps the L-inf
    budget exactly and the mean |dL*| small. No gradient is needed here.
    """
    with torch.no_grad():
        l0 = kornia.color.rgb_to_lab(image)[:, :1]
        x = project_linf(adv, image, config.eps01)
        for _ in range(config.restore_rounds):
            lab = kornia.color.rgb_to_lab(x)
            fixed = torch.cat([l0, lab[:, 1:]], dim=1)
            corr = kornia.color.lab_to_rgb(fixed, clip=False) - kornia.color.lab_to_rgb(lab, clip=False)
            x = project_linf(x + corr, image, config.eps01)
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
    """Module form of :func:`apply_dsp` for one photo batch, holding its parameters (for Adam, ``state_dict``).

    Example:
        >>> cfg = DSPConfig(eps=8, dct_block=8)
        >>> x = torch.rand(1, 3, 40, 50)
        >>> dsp = DualSpacePerturbation(x, cfg)
        >>> torch.equal(dsp(x), x)
        True
    """

    def __init__(self, image: Tensor, config: DSPConfig) -> None:
        super().__init__()
        self.config = config
        p = init_params(image, config=config)
        self.extra = p.extra
        self.lab = nn.Parameter(p.lab)
        self.dct = nn.Parameter(p.dct)
        self.rgb = nn.Parameter(p.rgb) if p.rgb is not None else None

    def params(self) -> DSPParams:
        return DSPParams(self.lab, self.dct, self.rgb, self.extra)

    def forward(self, image: Tensor) -> Tensor:
        return apply_dsp(image, self.params(), self.config)
