"""Imperceptibility and efficacy metrics.

* :func:`image_quality` - L-inf (in 1/255), PSNR and SSIM between protected and original photos.
"""

from __future__ import annotations

import kornia
import torch
from torch import Tensor

__all__ = ["image_quality", "psnr", "ssim"]


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


def image_quality(protected: Tensor, original: Tensor) -> dict[str, list[float]]:
    """L-inf (1/255), PSNR (dB) and SSIM per image between ``protected`` and ``original``."""
    with torch.no_grad():
        linf = (protected.float() - original.float()).abs().flatten(1).amax(1) * 255.0
        return {
            "linf_255": [round(float(v), 4) for v in linf],
            "psnr_db": [round(v, 3) if v != float("inf") else v for v in psnr(protected, original)],
            "ssim": [round(v, 5) for v in ssim(protected, original)],
        }
