"""The ComfyUI traps, handled in one place.

* Gradients: ComfyUI runs every prompt under ``torch.inference_mode()``; tensors made there (input images,
  weights loaded by a node) cannot be saved for backward. :func:`grad_enabled` leaves inference mode and
  enables autograd; :func:`to_library_image` clones an IMAGE out of inference mode while converting it.
* Layout: ComfyUI IMAGE is (B, H, W, C) float in [0, 1]; the library takes (B, C, H, W).
* Progress and cancel: :func:`progress_callback` moves ComfyUI's progress bar, sends ``anti_i2v.progress``
  over the websocket and raises ComfyUI's interrupt exception at the end of the iteration in which the user
  pressed Cancel.
* Memory: a surrogate loaded from a diffusers folder is wrapped in a ``comfy.model_patcher.ModelPatcher``
  (:func:`manage_surrogate`) so ComfyUI's model management can load and offload it; :func:`loaded_for_run`
  asks ComfyUI to load it (or a native surrogate's own patchers, ``surrogate.comfy_patchers``) and frees
  memory when a run fails or is cancelled. User models are never moved with ``.to()`` here.
* Errors: :func:`node_errors` prefixes ValueError messages with the node id (and keeps ComfyUI's interrupt).
* Graph checks: :func:`clip_vision_warnings` finds a CLIPVisionEncode that still reads the unprotected photo
  while the video model reads the protected one (the trap of ComfyUI's Wan 2.1 I2V template).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Callable, Iterator

import torch
from torch import nn

from anti_i2v.protect import Progress
from anti_i2v.surrogates.base import Surrogate

__all__ = [
    "LOG",
    "grad_enabled",
    "to_library_image",
    "to_comfy_image",
    "progress_callback",
    "manage_surrogate",
    "loaded_for_run",
    "frames_for_run",
    "member_loaded",
    "unload_patchers",
    "not_a_surrogate",
    "node_errors",
    "perturbation_view",
    "to_json",
    "clip_vision_warnings",
]

LOG = logging.getLogger("anti_i2v.nodes")

PROGRESS_EVENT = "anti_i2v.progress"


@contextlib.contextmanager
def grad_enabled() -> Iterator[None]:
    """Leave ComfyUI's inference mode and enable autograd for the block."""
    with torch.inference_mode(False), torch.enable_grad():
        yield


def to_library_image(image: torch.Tensor, *, node: str, arg: str) -> torch.Tensor:
    """A ComfyUI IMAGE (B, H, W, C) as a normal (non-inference) float32 tensor (B, 3, H, W).

    RGBA loses its alpha channel with a warning; grey (C = 1) is repeated to RGB. Call it inside
    :func:`grad_enabled` so the clone is a normal tensor.

    Raises:
        ValueError: naming ``node`` and ``arg``: not a 4-D IMAGE, an empty batch, an unsupported channel count.
    """
    if not isinstance(image, torch.Tensor):
        raise ValueError(f"{node}: {arg} must be an IMAGE tensor, got {type(image).__name__}")
    if image.ndim == 3:
        image = image.unsqueeze(0)
    if image.ndim != 4:
        raise ValueError(f"{node}: {arg} must be an IMAGE of shape (batch, height, width, channels), "
                         f"got shape {tuple(image.shape)}")
    if image.shape[0] == 0:
        raise ValueError(f"{node}: {arg} is an empty batch (0 images); connect at least one image")
    c = image.shape[-1]
    if c == 4:
        LOG.warning("%s: %s has an alpha channel; it is dropped and the RGB channels are protected", node, arg)
        image = image[..., :3]
    elif c == 1:
        image = image.expand(-1, -1, -1, 3)
    elif c != 3:
        raise ValueError(f"{node}: {arg} must have 1, 3 or 4 channels (grey, RGB, RGBA), got {c}")
    return image.detach().movedim(-1, 1).to(dtype=torch.float32).clone().contiguous()


def to_library_mask(mask: torch.Tensor | None, image: torch.Tensor) -> torch.Tensor | None:
    """A ComfyUI MASK ((H, W) or (B, H, W)) as a normal float32 (B, H, W) tensor for ``protect(mask=)``, or None.

    Raises:
        ValueError: the mask's size is not the image's (``image`` is the library batch (B, 3, H, W)).
    """
    if mask is None:
        return None
    m = mask.detach().to(dtype=torch.float32).clone()
    if m.ndim == 2:
        m = m.unsqueeze(0)
    if tuple(m.shape[-2:]) != tuple(image.shape[-2:]):
        raise ValueError(f"mask is {m.shape[-2]}x{m.shape[-1]} but image is {image.shape[-2]}x{image.shape[-1]}: "
                         "the mask must have the image's size")
    return m


def to_comfy_image(image: torch.Tensor) -> torch.Tensor:
    """A library batch (B, 3, H, W) as a ComfyUI IMAGE (B, H, W, 3) float32 on the intermediate device."""
    import comfy.model_management as mm

    return image.detach().movedim(1, -1).to(device=mm.intermediate_device(), dtype=torch.float32).contiguous()


def perturbation_view(perturbation: torch.Tensor, eps01: float) -> torch.Tensor:
    """|delta| amplified so the L-inf budget maps to 1 (a visible picture of an invisible change), in [0, 1]."""
    return (perturbation.abs() / max(float(eps01), 1e-12)).clamp(0.0, 1.0)


def to_json(obj) -> str:
    """Strict JSON text (non-finite floats as strings) for STRING outputs that other tools parse."""
    import json

    from anti_i2v.metrics import json_safe

    return json.dumps(json_safe(obj))


def progress_callback(node_id: str | None, total: int) -> Callable[[Progress], None]:
    """A callback for :func:`anti_i2v.protect.protect` that reports progress to ComfyUI and honours Cancel.

    Every iteration it moves ComfyUI's progress bar (``ProgressBar.update_absolute``), sends
    ``PromptServer.instance.send_sync("anti_i2v.progress", {"node", "step", "total", "loss", "terms"})`` and
    calls ``comfy.model_management.throw_exception_if_processing_interrupted()``, whose exception leaves the
    loop (the library restores the models and frees memory) and marks the prompt interrupted.
    """
    import comfy.model_management as mm
    import comfy.utils

    bar = comfy.utils.ProgressBar(max(int(total), 1), node_id=node_id)
    try:
        from server import PromptServer

        server = PromptServer.instance
    except (ImportError, AttributeError):  # ComfyUI used as a library, without its server
        server = None

    def callback(p: Progress) -> None:
        bar.update_absolute(p.step, p.total)
        if server is not None:
            server.send_sync(PROGRESS_EVENT, {
                "node": node_id, "step": int(p.step), "total": int(p.total), "loss": float(p.loss),
                "terms": {k: float(v) for k, v in p.terms.items()},
            })
        mm.throw_exception_if_processing_interrupted()

    return callback


class _SurrogateModules(nn.Module):
    """Holds a surrogate's modules so one ModelPatcher can manage them together."""

    def __init__(self, modules: list[nn.Module]) -> None:
        super().__init__()
        self.parts = nn.ModuleList(modules)


def manage_surrogate(surrogate: Surrogate) -> Surrogate:
    """Wrap the surrogate's own modules in a ComfyUI ModelPatcher (stored as ``surrogate.comfy_patchers``).

    Only for surrogates this pack loaded itself (from a diffusers folder). A native surrogate built from the
    user's ComfyUI models brings its own ``comfy_patchers`` (the user's MODEL and VAE patchers).
    """
    import comfy.model_management as mm
    import comfy.model_patcher

    if getattr(surrogate, "comfy_patchers", None):
        return surrogate
    holder = _SurrogateModules(list(surrogate.modules()))
    patcher = comfy.model_patcher.ModelPatcher(
        holder, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device()
    )
    surrogate.comfy_patchers = [patcher]
    surrogate.comfy_owned = True  # the pack may move this surrogate's cached tensors with its modules
    return surrogate


def _load_models(surrogate: Surrogate) -> None:
    """``load_models_gpu`` of the surrogate's ComfyUI patchers; for the pack's own diffusers modules (now on the
    load device) the cached tensors (prompt embeddings) follow."""
    import comfy.model_management as mm

    patchers = list(getattr(surrogate, "comfy_patchers", None) or [])
    if patchers:
        mm.load_models_gpu(patchers, force_full_load=True)
        if getattr(surrogate, "comfy_owned", False):
            surrogate.to(patchers[0].load_device)


@contextlib.contextmanager
def loaded_for_run(surrogate: Surrogate) -> Iterator[Surrogate]:
    """Ask ComfyUI to load the surrogate's models on its compute device for the block.

    On failure or cancel the block's exception propagates after ``soft_empty_cache``; ComfyUI keeps the
    models registered, so it can offload them when another model needs the memory.
    """
    import comfy.model_management as mm

    _load_models(surrogate)
    try:
        yield surrogate
    except BaseException:
        mm.soft_empty_cache()
        raise
    mm.soft_empty_cache()


def _patchers_of(surrogate: Surrogate) -> list:
    """The ComfyUI ModelPatchers a surrogate runs on: the pack's own wrapper, or a native surrogate's (the user's)."""
    patchers = list(getattr(surrogate, "comfy_patchers", None) or [])
    own = getattr(surrogate, "_patchers", None)
    if not patchers and callable(own):
        patchers = list(own())
    return patchers


def unload_patchers(patchers: list) -> int:
    """Ask ComfyUI's model management to unload exactly these patchers (moved to their offload device, as ComfyUI's
    own ``free_memory`` does); returns how many were loaded."""
    import comfy.model_management as mm

    count = 0
    for i in range(len(mm.current_loaded_models) - 1, -1, -1):
        loaded = mm.current_loaded_models[i]
        if any(loaded.model is p for p in patchers):
            loaded.model_unload()
            mm.current_loaded_models.pop(i)
            count += 1
    if count:
        mm.soft_empty_cache()
    return count


@contextlib.contextmanager
def member_loaded(surrogate: Surrogate, *, offload: bool = False) -> Iterator[Surrogate]:
    """An ensemble member's turn (the ``activate`` hook of :class:`anti_i2v.surrogates.ensemble.Ensemble`).

    Checks ComfyUI's interrupt flag (Cancel between two members), then asks ComfyUI to load this member's models
    (``load_models_gpu``, which offloads other models, e.g. the other members', when the device lacks room for the
    weights); a native surrogate loads its own models in each call. With ``offload`` the member's models are unloaded
    again after its turn (also on error), so the device holds one member's weights at a time: ComfyUI's room check
    counts weights, not the loop's activations, which can be tens of GB for a real I2V model.
    """
    import comfy.model_management as mm

    mm.throw_exception_if_processing_interrupted()
    _load_models(surrogate)
    try:
        yield surrogate
    finally:
        if offload:
            unload_patchers(_patchers_of(surrogate))


@contextlib.contextmanager
def frames_for_run(surrogate: Surrogate, frames: int) -> Iterator[Surrogate]:
    """Set ``surrogate.num_frames`` for the block when ``frames`` > 0 and restore it afterwards (every member's,
    for an ensemble)."""
    members = getattr(surrogate, "surrogates", None)
    if members is not None:
        with contextlib.ExitStack() as stack:
            for s in members:
                stack.enter_context(frames_for_run(s, frames))
            yield surrogate
        return
    saved = surrogate.num_frames
    if frames and frames > 0:
        surrogate.num_frames = int(frames)
    try:
        yield surrogate
    finally:
        surrogate.num_frames = saved


def not_a_surrogate(node: str, obj) -> ValueError:
    """The error of a node that takes one surrogate and got something else (an ensemble is named as such)."""
    if type(obj).__name__ == "EnsembleSpec":
        return ValueError(f"{node}: 'surrogate' takes one surrogate, not an Ensemble Surrogate: connect one of the "
                          "ensemble's Load I2V Surrogate nodes here")
    return ValueError(f"{node}: 'surrogate' must come from the Load I2V Surrogate node, got {type(obj).__name__}")


@contextlib.contextmanager
def node_errors(node: str) -> Iterator[None]:
    """Re-raise ValueError (and SurrogateError) with the node id in front, unless it is already there."""
    try:
        yield
    except ValueError as exc:
        msg = str(exc)
        if msg.startswith(node):
            raise
        raise ValueError(f"{node}: {msg}") from exc


#: ComfyUI nodes that encode an image for CLIP vision and the name of their image input
_CLIP_VISION_ENCODERS = {"CLIPVisionEncode": "image"}


def _link_sources(node: dict) -> list[tuple[str, str]]:
    """(input name, source node id) of every linked input of an API-format prompt node."""
    out = []
    for name, v in (node.get("inputs") or {}).items():
        if isinstance(v, list) and len(v) == 2 and isinstance(v[0], (str, int)) and isinstance(v[1], int):
            out.append((name, str(v[0])))
    return out


def _upstream(prompt: dict, start: str) -> set[str]:
    """Ids of ``start`` and every node it reads from, directly or through other nodes."""
    seen, todo = set(), [str(start)]
    while todo:
        nid = todo.pop()
        if nid in seen or nid not in prompt:
            continue
        seen.add(nid)
        todo += [src for _, src in _link_sources(prompt[nid])]
    return seen


def clip_vision_warnings(prompt: dict | None, node_id: str | None, *, image_input: str = "image") -> list[str]:
    """Warnings for a graph that feeds CLIP vision the unprotected photo while the video model gets the protected one.

    The trap: ComfyUI's Wan 2.1 I2V template sends its LoadImage to both ``WanImageToVideo.start_image`` and
    ``CLIPVisionEncode.image``; rewiring only the first leaves the image tokens unprotected. Detected in the
    API prompt: a ``CLIPVisionEncode`` whose image comes from the protect node's own photo source but not
    through the protect node, whose output goes into a node that also reads the protect node's output
    (directly or further down). A clean comparison branch (its own WanImageToVideo on the clean photo) is not
    flagged. Returns [] when the prompt is unknown.
    """
    if not isinstance(prompt, dict) or node_id is None or str(node_id) not in prompt:
        return []
    me = str(node_id)
    src = (prompt[me].get("inputs") or {}).get(image_input)
    if not (isinstance(src, list) and len(src) == 2):
        return []
    photo = str(src[0])
    out = []
    for cid, node in prompt.items():
        arg = _CLIP_VISION_ENCODERS.get(node.get("class_type"))
        if arg is None or cid == me:
            continue
        cv_src = (node.get("inputs") or {}).get(arg)
        if not (isinstance(cv_src, list) and len(cv_src) == 2):
            continue
        up = _upstream(prompt, str(cv_src[0]))
        if me in up or photo not in up:
            continue  # protected, or another image
        for uid, user in prompt.items():
            if not any(s == cid for _, s in _link_sources(user)):
                continue
            others = [s for n, s in _link_sources(user) if s != cid]
            if any(me in _upstream(prompt, s) for s in others):
                out.append(
                    f"{node['class_type']} (node {cid}) encodes the UNPROTECTED photo (from node {photo}) for "
                    f"{user.get('class_type')} (node {uid}), which uses the protected one: the CLIP-vision image "
                    f"tokens stay unprotected. Connect {node['class_type']}.{arg} to this node's protected output.")
                break
    return out
