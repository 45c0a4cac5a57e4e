"""Verification videos: does the protection change what an I2V model makes of the photo?

The question users ask of protection tools ("does it work?", Mist-v2 #22, Anti-DreamBooth #27) is answered the
way Anti-I2V evaluates (Sec. 4): generate a short video from the clean photo and one from the protected photo
with the same model, seed and settings, and measure how far they drift apart:

* per-frame PSNR and SSIM between the two videos (lower = the protection changed more),
* the distance between the two videos' VAE latents under the surrogate's own VAE,
* identity similarity (ISM) of each video's frames to the face in the clean photo, with face detection rates
  (the paper's headline figure: ISM drops from 0.616 to 0.353 on real models).

Videos come from the surrogate's ``generate`` (the family's diffusers pipeline). On tiny random-weight test
models the videos are noise: the figures then only show that the machinery runs.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .dsp import check_image
from .metrics import check_video, identity, image_quality, json_safe, latent_distance, video_psnr, video_ssim

__all__ = ["verify", "generate_video", "compare_videos"]


def _check_photo(image: Tensor, name: str) -> Tensor:
    x = check_image(image, name)
    if x.shape[0] != 1:
        raise ValueError(f"{name} must be one photo (3, H, W) or (1, 3, H, W), got a batch of {x.shape[0]}")
    return x.detach().float()


def generate_video(
    surrogate, image: Tensor, *, steps: int = 4, seed: int = 0, num_frames: int | None = None
) -> Tensor:
    """One video from ``image`` with ``surrogate.generate``, checked and returned as (F, 3, h, w) in [0, 1].

    Args:
        surrogate: a surrogate adapter with a ``generate(image, *, num_inference_steps, seed, num_frames)``.
        image: (3, H, W) or (1, 3, H, W) in [0, 1].
        steps: denoising steps.
        seed: seed of the pipeline's noise (use the same for videos you compare).
        num_frames: pixel frames; None keeps the surrogate's default.
    """
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps}")
    if num_frames is not None and (int(num_frames) != num_frames or num_frames < 1):
        raise ValueError(f"num_frames must be a positive integer or None, got {num_frames}")
    if not callable(getattr(surrogate, "generate", None)):
        raise TypeError(f"{type(surrogate).__name__} has no generate() method: it cannot make verification videos")
    x = _check_photo(image, "image")
    kwargs: dict[str, Any] = {"num_inference_steps": int(steps), "seed": int(seed)}
    if num_frames is not None:
        kwargs["num_frames"] = int(num_frames)
    with torch.no_grad():
        video = surrogate.generate(x, **kwargs)
    return check_video(video, f"the video {getattr(surrogate, 'family', 'the surrogate')}.generate returned").cpu()


def compare_videos(
    clean_video: Tensor,
    protected_video: Tensor,
    *,
    source: Tensor | None = None,
    encoder: Any = None,
    faces: bool = True,
    seed: int = 0,
) -> dict[str, Any]:
    """Drift between a clean and a protected video (both (F, 3, h, w) in [0, 1], same shape).

    Args:
        clean_video: the video generated from the clean photo.
        protected_video: the video generated from the protected photo (same model, seed, settings).
        source: the clean photo: the identity reference (identity figures are skipped when None).
        encoder: a surrogate or a callable for :func:`~anti_i2v.metrics.latent_distance` (skipped when None).
        faces: compute the identity figures.
        seed: seed of the latent encoder's noise draw.

    Returns:
        ``{"psnr": {...}, "ssim": {...}, "latent_distance": {...} | None, "identity": {"clean": {...},
        "protected": {...}} | None}`` with raw floats (PSNR may be ``inf``).
    """
    out: dict[str, Any] = {
        "psnr": video_psnr(clean_video, protected_video),
        "ssim": video_ssim(clean_video, protected_video),
        "latent_distance": None,
        "identity": None,
    }
    if encoder is not None:
        out["latent_distance"] = latent_distance(clean_video, protected_video, encoder, seed=seed)
    if faces and source is not None:
        src = _check_photo(source, "source")
        out["identity"] = {
            "clean": identity(clean_video, src),
            "protected": identity(protected_video, src),
        }
    return out


def verify(
    surrogate,
    clean: Tensor,
    protected: Tensor,
    *,
    steps: int = 4,
    seed: int = 0,
    num_frames: int | None = None,
    faces: bool = True,
    latent: bool = True,
) -> dict[str, Any]:
    """Generate a video from the clean and from the protected photo (same seed) and compare them.

    Args:
        surrogate: the I2V surrogate (its ``generate`` makes the videos, its VAE the latent distance).
        clean: the original photo, (3, H, W) or (1, 3, H, W) in [0, 1].
        protected: the protected photo, same shape as ``clean``.
        steps: denoising steps of both generations.
        seed: seed of both generations.
        num_frames: pixel frames of both videos; None keeps the surrogate's default.
        faces: compute identity similarity (ISM) of each video's frames to the face in ``clean``.
        latent: compute the VAE-latent distance between the videos.

    Returns:
        ``{"clean_video": (F, 3, h, w), "protected_video": (F, 3, h, w)`` (float tensors in [0, 1], CPU) and
        ``"metrics"``: strict-JSON-safe (:func:`~anti_i2v.metrics.json_safe`, so an infinite PSNR is ``"inf"``)
        dict with ``settings``, ``photo`` (L-inf, PSNR, SSIM of protected vs clean), ``psnr`` and ``ssim``
        (``per_frame`` and ``mean`` between the videos), ``latent_distance`` (``per_frame``, ``mean``,
        ``relative``) and ``identity`` (``clean`` and ``protected``: ``per_frame``, ``mean``,
        ``detection_rate``, ``fdfr``, ``source_detected``).
    """
    c = _check_photo(clean, "clean")
    p = _check_photo(protected, "protected")
    if c.shape != p.shape:
        raise ValueError(f"clean {tuple(c.shape)} and protected {tuple(p.shape)} must have the same size")
    clean_video = generate_video(surrogate, c, steps=steps, seed=seed, num_frames=num_frames)
    protected_video = generate_video(surrogate, p, steps=steps, seed=seed, num_frames=num_frames)
    if clean_video.shape != protected_video.shape:
        raise RuntimeError(
            f"the two generations differ in shape: {tuple(clean_video.shape)} vs {tuple(protected_video.shape)}"
        )
    drift = compare_videos(
        clean_video, protected_video, source=c, encoder=surrogate if latent else None, faces=faces, seed=seed
    )
    quality = image_quality(p, c)
    metrics = {
        "settings": {
            "family": getattr(surrogate, "family", type(surrogate).__name__),
            "steps": int(steps),
            "seed": int(seed),
            "num_frames": int(clean_video.shape[0]),
            "video_size": [int(clean_video.shape[-2]), int(clean_video.shape[-1])],
        },
        "photo": {k: v[0] for k, v in quality.items()},
        **drift,
    }
    return {"clean_video": clean_video, "protected_video": protected_video, "metrics": json_safe(metrics)}
