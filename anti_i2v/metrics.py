"""Imperceptibility and efficacy metrics.

Imperceptibility (protected photo vs original):

* :func:`image_quality` - L-inf (in 1/255), PSNR, SSIM, CIEDE2000 (mean and 95th percentile) and mean |dL*|
  between protected and original photos;
* :func:`ciede2000` - the CIEDE2000 colour difference per pixel (Sharma, Wu & Dalal 2005), about 1 is a
  just-noticeable difference and 2-3 is visible side by side.

Efficacy (the video generated from the protected photo vs the one generated from the clean photo, Anti-I2V
Sec. 4; videos are (F, 3, H, W) float tensors in [0, 1]):

* :func:`video_psnr`, :func:`video_ssim` - per-frame PSNR / SSIM between two videos and their mean;
* :func:`latent_distance` - distance between the two videos' VAE latents (a surrogate's VAE or any encoder);
* :func:`ism` / :func:`identity` - identity similarity (ISM) of each frame's largest face to the face of the
  source photo (SFace cosine similarity, :mod:`anti_i2v.faces`) with the face detection rate (1 - FDFR).

:func:`json_safe` turns the results into strict JSON (infinite PSNR becomes the string ``"inf"``).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import kornia
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "image_quality",
    "ciede2000",
    "psnr",
    "ssim",
    "check_video",
    "video_psnr",
    "video_ssim",
    "latent_distance",
    "ism",
    "identity",
    "NoFaceError",
    "json_safe",
]


def psnr(a: Tensor, b: Tensor) -> list[float]:
    """PSNR in dB per image of two (B, C, H, W) batches in [0, 1] (inf for identical images)."""
    mse = (a.double() - b.double()).pow(2).flatten(1).mean(1)
    return [float("inf") if m == 0 else float(10 * torch.log10(1.0 / m)) for m in mse]


def ssim(a: Tensor, b: Tensor, window: int = 11) -> list[float]:
    """Mean SSIM per image (Gaussian window, kornia) of two (B, C, H, W) batches in [0, 1]."""
    win = min(window, a.shape[-1] - (1 - a.shape[-1] % 2), a.shape[-2] - (1 - a.shape[-2] % 2))
    win = max(win if win % 2 else win - 1, 1)
    m = kornia.metrics.ssim(a.float(), b.float(), win, max_val=1.0)
    return [float(v) for v in m.flatten(1).mean(1)]


def ciede2000(lab1: Tensor, lab2: Tensor) -> Tensor:
    """CIEDE2000 colour difference per pixel of two (B, 3, H, W) CIE L*a*b* images (kL = kC = kH = 1).

    Follows the equations of Sharma, Wu & Dalal, "The CIEDE2000 color-difference formula: implementation
    notes, supplementary test data, and mathematical observations" (2005), Eq. 1-22, in float64.
    Returns (B, H, W).
    """
    l1, a1, b1 = lab1.double().unbind(1)
    l2, a2, b2 = lab2.double().unbind(1)
    c_bar = (torch.hypot(a1, b1) + torch.hypot(a2, b2)) / 2
    c7 = c_bar**7
    g = 0.5 * (1 - torch.sqrt(c7 / (c7 + 25.0**7)))
    a1p, a2p = (1 + g) * a1, (1 + g) * a2
    c1p, c2p = torch.hypot(a1p, b1), torch.hypot(a2p, b2)
    two_pi = 2 * math.pi
    h1p = torch.remainder(torch.atan2(b1, a1p), two_pi)
    h2p = torch.remainder(torch.atan2(b2, a2p), two_pi)
    h1p = torch.where((a1p == 0) & (b1 == 0), torch.zeros_like(h1p), h1p)
    h2p = torch.where((a2p == 0) & (b2 == 0), torch.zeros_like(h2p), h2p)
    chroma_zero = (c1p * c2p) == 0
    dl = l2 - l1
    dc = c2p - c1p
    dh = h2p - h1p
    dh = torch.where(dh > math.pi, dh - two_pi, torch.where(dh < -math.pi, dh + two_pi, dh))
    dh = torch.where(chroma_zero, torch.zeros_like(dh), dh)
    d_big_h = 2 * torch.sqrt(c1p * c2p) * torch.sin(dh / 2)
    l_bar = (l1 + l2) / 2
    cp_bar = (c1p + c2p) / 2
    hsum = h1p + h2p
    h_bar = torch.where(
        (h1p - h2p).abs() <= math.pi, hsum / 2, torch.where(hsum < two_pi, (hsum + two_pi) / 2, (hsum - two_pi) / 2)
    )
    h_bar = torch.where(chroma_zero, hsum, h_bar)
    deg = math.pi / 180
    t = (1 - 0.17 * torch.cos(h_bar - 30 * deg) + 0.24 * torch.cos(2 * h_bar) + 0.32 * torch.cos(3 * h_bar + 6 * deg)
         - 0.20 * torch.cos(4 * h_bar - 63 * deg))
    d_theta = 30 * deg * torch.exp(-(((h_bar / deg) - 275) / 25) ** 2)
    cp7 = cp_bar**7
    r_c = 2 * torch.sqrt(cp7 / (cp7 + 25.0**7))
    s_l = 1 + 0.015 * (l_bar - 50) ** 2 / torch.sqrt(20 + (l_bar - 50) ** 2)
    s_c = 1 + 0.045 * cp_bar
    s_h = 1 + 0.015 * cp_bar * t
    r_t = -torch.sin(2 * d_theta) * r_c
    tl, tc, th = dl / s_l, dc / s_c, d_big_h / s_h
    return torch.sqrt((tl**2 + tc**2 + th**2 + r_t * tc * th).clamp_min(0))


def image_quality(protected: Tensor, original: Tensor) -> dict[str, list[float]]:
    """Imperceptibility figures per image between ``protected`` and ``original`` ((B, 3, H, W) in [0, 1]).

    ``linf_255`` (L-inf in 1/255), ``psnr_db``, ``ssim``, ``ciede2000_mean`` and ``ciede2000_p95`` (CIEDE2000
    over the pixels, D65 Lab) and ``mean_abs_dl`` (mean |dL*|: how much lightness changed).
    """
    with torch.no_grad():
        linf = (protected.float() - original.float()).abs().flatten(1).amax(1) * 255.0
        lab_p = kornia.color.rgb_to_lab(protected.float().clamp(0, 1))
        lab_o = kornia.color.rgb_to_lab(original.float().clamp(0, 1))
        de = ciede2000(lab_p, lab_o).flatten(1)
        dl = (lab_p[:, 0] - lab_o[:, 0]).abs().flatten(1).mean(1)
        return {
            "linf_255": [round(float(v), 4) for v in linf],
            "psnr_db": [round(v, 3) if v != float("inf") else v for v in psnr(protected, original)],
            "ssim": [round(v, 5) for v in ssim(protected, original)],
            "ciede2000_mean": [round(float(v), 4) for v in de.mean(1)],
            # kthvalue, not torch.quantile: quantile refuses inputs over 16 M elements (large photos)
            "ciede2000_p95": [round(float(v), 4) for v in de.kthvalue(max(1, math.ceil(0.95 * de.shape[1])), dim=1).values],
            "mean_abs_dl": [round(float(v), 4) for v in dl],
        }


# ----------------------------------------------------------------------------------------------- videos


def check_video(video: Tensor, name: str = "video") -> Tensor:
    """Validate a video (F, 3, H, W) float in [0, 1] (a leading batch of one, (1, F, 3, H, W), is dropped).

    Returns:
        The video as a float32 tensor without autograd history.
    """
    if not isinstance(video, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(video).__name__}")
    if video.ndim == 5 and video.shape[0] == 1:
        video = video[0]
    if video.ndim != 4 or video.shape[1] != 3:
        raise ValueError(f"{name} must have shape (F, 3, H, W) with F frames, got {tuple(video.shape)}")
    if video.shape[0] == 0:
        raise ValueError(f"{name} has no frames")
    if not video.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor in [0, 1], got {video.dtype}")
    video = video.detach().float()
    if not torch.isfinite(video).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    lo, hi = float(video.min()), float(video.max())
    if lo < -1e-4 or hi > 1 + 1e-4:
        raise ValueError(f"{name} must have values in [0, 1], got [{lo:.4g}, {hi:.4g}]")
    return video.clamp(0, 1)


def _check_pair(a: Tensor, b: Tensor, names: tuple[str, str]) -> tuple[Tensor, Tensor]:
    a, b = check_video(a, names[0]), check_video(b, names[1])
    if a.shape != b.shape:
        raise ValueError(
            f"{names[0]} {tuple(a.shape)} and {names[1]} {tuple(b.shape)} must have the same frames and size"
        )
    return a, b


def _summary(per_frame: list[float]) -> dict[str, Any]:
    return {"per_frame": per_frame, "mean": float(sum(per_frame) / len(per_frame))}


def video_psnr(a: Tensor, b: Tensor) -> dict[str, Any]:
    """Per-frame PSNR (dB, peak 1) between two videos (F, 3, H, W) in [0, 1], and its mean over frames.

    Identical frames give ``inf`` (and then the mean is ``inf``): see :func:`json_safe` for strict JSON.

    Returns:
        ``{"per_frame": [F floats], "mean": float}``
    """
    a, b = _check_pair(a, b, ("a", "b"))
    with torch.no_grad():
        return _summary(psnr(a, b))


def video_ssim(a: Tensor, b: Tensor, window: int = 11) -> dict[str, Any]:
    """Per-frame SSIM (Gaussian window, kornia) between two videos (F, 3, H, W) in [0, 1], and its mean.

    Returns:
        ``{"per_frame": [F floats], "mean": float}``
    """
    a, b = _check_pair(a, b, ("a", "b"))
    with torch.no_grad():
        return _summary(ssim(a, b, window))


def _surrogate_encoder(surrogate, seed: int, batch_size: int) -> Callable[[Tensor], Tensor]:
    """Frames -> image latents as the surrogate's pipeline computes them for its conditioning image."""
    from .surrogates.base import FeatureRequest

    request = FeatureRequest(need_latent=True)

    def encode(frames: Tensor) -> Tensor:
        size = tuple(surrogate.working_size(frames.shape[-2], frames.shape[-1]))
        if tuple(frames.shape[-2:]) != size:
            frames = F.interpolate(frames, size=size, mode="bilinear", align_corners=False, antialias=True)
        out = []
        for start in range(0, frames.shape[0], batch_size):
            chunk = frames[start:start + batch_size].to(surrogate.device)
            # the same draw for every call: families whose image latent depends on it (SVD's noise
            # augmentation) encode both videos under identical noise
            gen = torch.Generator(device="cpu").manual_seed(int(seed))
            draw = surrogate.sample_noise(chunk.shape[0], gen)
            latent = surrogate.features(chunk, draw, request).latent
            if latent is None:
                raise RuntimeError(f"the {surrogate.family} surrogate returned no latent")
            out.append(latent.float().cpu())
        return torch.cat(out, dim=0)

    return encode


def latent_distance(
    a: Tensor,
    b: Tensor,
    encoder: Callable[[Tensor], Tensor] | Any,
    *,
    seed: int = 0,
    batch_size: int = 4,
) -> dict[str, Any]:
    """Distance between the VAE latents of two videos (F, 3, H, W) in [0, 1].

    Args:
        a, b: the two videos (same shape).
        encoder: either a :class:`~anti_i2v.surrogates.base.Surrogate` - every frame is resized to the
            surrogate's working size and encoded as the surrogate's pipeline encodes its conditioning image
            (the ``latent`` of :meth:`Surrogate.features`, with a fixed noise draw from ``seed``) - or any
            callable mapping a video (F, 3, H, W) in [0, 1] to a latent tensor. When the callable's output
            has F in its first dimension, per-frame figures are reported, otherwise only the totals.
        seed: seed of the noise draw used with a surrogate.
        batch_size: frames encoded at once with a surrogate.

    Returns:
        ``{"per_frame": [F mean squared differences] or None, "mean": mean squared difference over all latent
        elements, "relative": ||z_a - z_b|| / ||z_a|| (0 for identical videos)}``.
    """
    a, b = _check_pair(a, b, ("a", "b"))
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if hasattr(encoder, "features") and hasattr(encoder, "sample_noise"):
        encode = _surrogate_encoder(encoder, seed, batch_size)
    elif callable(encoder):
        encode = encoder
    else:
        raise TypeError(f"encoder must be a Surrogate or a callable, got {type(encoder).__name__}")
    with torch.no_grad():
        za, zb = encode(a), encode(b)
    if not isinstance(za, Tensor) or not isinstance(zb, Tensor) or za.shape != zb.shape:
        raise ValueError("encoder must return tensors of one shape for both videos")
    za, zb = za.detach().double(), zb.detach().double()
    diff = za - zb
    per_frame = None
    if za.ndim >= 1 and za.shape[0] == a.shape[0]:
        per_frame = [float(v) for v in diff.pow(2).reshape(za.shape[0], -1).mean(1)]
    norm_a = float(za.norm())
    dist = float(diff.norm())
    relative = 0.0 if dist == 0.0 else (dist / norm_a if norm_a > 0 else float("inf"))
    return {"per_frame": per_frame, "mean": float(diff.pow(2).mean()), "relative": relative}


# --------------------------------------------------------------------------------------------- identity


class NoFaceError(ValueError):
    """The source photo has no detectable face, so identity similarity is undefined."""


def _frames_of(frames: Tensor) -> list[Tensor]:
    if frames.ndim == 3:
        frames = frames.unsqueeze(0)
    return list(check_video(frames, "frames"))


def _identity(frames: Tensor, source: Tensor, analyzer, *, strict: bool) -> dict[str, Any]:
    from .faces import face_analyzer

    analyzer = analyzer if analyzer is not None else face_analyzer()
    if not isinstance(source, Tensor):
        raise TypeError(f"source must be a torch.Tensor, got {type(source).__name__}")
    src = source[0] if source.ndim == 4 and source.shape[0] == 1 else source
    if src.ndim != 3:
        raise ValueError(f"source must be one photo (3, H, W) or (1, 3, H, W), got {tuple(source.shape)}")
    src = check_video(src.unsqueeze(0), "source")[0]
    ref = analyzer.largest_face(src)
    video = _frames_of(frames)
    if ref is None:
        if strict:
            raise NoFaceError("source: no face was detected in the source photo, identity similarity is undefined")
        return {
            "source_detected": False,
            "per_frame": [None] * len(video),
            "mean": None,
            "detection_rate": None,
            "fdfr": None,
            "num_frames": len(video),
        }
    per_frame: list[float | None] = []
    for frame in video:
        face = analyzer.largest_face(frame)
        per_frame.append(None if face is None else ref.similarity(face))
    found = [v for v in per_frame if v is not None]
    rate = len(found) / len(video)
    return {
        "source_detected": True,
        "per_frame": per_frame,
        "mean": float(sum(found) / len(found)) if found else None,
        "detection_rate": rate,
        "fdfr": 1.0 - rate,
        "num_frames": len(video),
    }


def ism(frames: Tensor, source: Tensor, *, analyzer=None) -> dict[str, Any]:
    """Identity similarity (ISM) of each frame's largest face to the largest face of the source photo.

    Faces: YuNet detection, SFace 128-d embeddings, cosine similarity (see :mod:`anti_i2v.faces`). A frame
    without a detected face counts as not detected (its entry is None) and is left out of the mean, as in
    Anti-DreamBooth's ISM / FDFR.

    Args:
        frames: (F, 3, H, W) or one image (3, H, W), float in [0, 1].
        source: the source photo (3, H, W) or (1, 3, H, W) in [0, 1].
        analyzer: a :class:`~anti_i2v.faces.FaceAnalyzer`; the cached default when None.

    Returns:
        ``{"source_detected": True, "per_frame": [float | None], "mean": float | None (over detected frames),
        "detection_rate": float, "fdfr": 1 - detection_rate, "num_frames": F}``

    Raises:
        NoFaceError: no face in the source photo (use :func:`identity` for None-safe figures).
    """
    return _identity(frames, source, analyzer, strict=True)


def identity(frames: Tensor, source: Tensor, *, analyzer=None) -> dict[str, Any]:
    """:func:`ism`, but None-safe: without a face in the source, every figure is None and
    ``source_detected`` is False instead of raising."""
    return _identity(frames, source, analyzer, strict=False)


def json_safe(obj: Any) -> Any:
    """A copy of ``obj`` that strict JSON accepts: non-finite floats become ``"inf"``, ``"-inf"``, ``"nan"``,
    tuples become lists, numpy / torch scalars become Python numbers."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, Tensor) and obj.numel() == 1:
        obj = obj.item()
    elif hasattr(obj, "item") and callable(obj.item) and getattr(obj, "shape", None) == ():
        obj = obj.item()  # numpy scalar
    if isinstance(obj, bool) or obj is None or isinstance(obj, (int, str)):
        return obj
    if isinstance(obj, float):
        if math.isnan(obj):
            return "nan"
        if math.isinf(obj):
            return "inf" if obj > 0 else "-inf"
        return obj
    raise TypeError(f"cannot make a {type(obj).__name__} JSON-safe")
