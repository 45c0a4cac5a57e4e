"""Shared machinery of the native surrogates (built from the user's own ComfyUI models): shadows, binding, base class.

The families live beside this module (``wan21.py``, ``svd.py``); ``nodes/native/__init__.py`` re-exports the
public names and holds :func:`native_surrogate`.

:func:`native_surrogate` turns what a ComfyUI graph already holds (``MODEL`` = ``ModelPatcher``, ``VAE`` =
``comfy.sd.VAE``, ``CLIP_VISION`` = ``comfy.clip_vision.ClipVisionModel``, ``CONDITIONING``) into an
:class:`anti_i2v.surrogates.base.Surrogate`, so the protect loop attacks exactly the model the user samples with
(LoRAs and object patches applied by ComfyUI's model management included).

How the image enters (the same steps as ComfyUI's own nodes, written with differentiable ops):

* Wan 2.1 / 2.2-14B I2V (``comfy.model_base.WAN21``, 36 input channels), as ``WanImageToVideo``
  (``comfy_extras/nodes_wan.py``): the photo is the first frame of a ``frames``-long video of 0.5 grey, the
  whole video is VAE-encoded, a mask zeroes the first latent frame, both go to the model as
  ``concat_latent_image`` / ``concat_mask`` beside the text conditioning (and the CLIP-vision penultimate
  hidden states when a ``CLIP_VISION`` is connected); ``BaseModel.extra_conds`` turns them into ``c_concat``.
  The photo reaches CLIP vision as the user's ``CLIPVisionEncode`` fits it: ``clip_vision_crop="none"`` (the
  default: the whole photo squashed to 224 x 224, as in ComfyUI's official Wan 2.1 I2V template) or
  ``"center"`` (centre crop). On a non-square photo the two see different pixels, so a mismatch would optimise
  image tokens the sampler never sees. The attack encodes the photo at the working size (the loop resizes it
  there first); a photo already at that size is encoded exactly as ``CLIPVisionEncode`` encodes it.
* SVD (``comfy.model_base.SVD_img2vid``), as ``SVD_img2vid_Conditioning`` (``comfy_extras/nodes_video_model.py``):
  the CLIP-vision image embedding is the cross-attention context, the unscaled VAE latent of the photo is
  concatenated to every noisy frame, fps 6 / motion bucket 127 / augmentation 0 go to the ``y`` embedding.

Then ``BaseModel.apply_model`` runs with block hooks (Wan: ``diffusion_model.blocks``; SVD: ``input_blocks``,
``middle_block``, ``output_blocks``).

In the surrogate protocol (:class:`anti_i2v.surrogates.base.Surrogate`): :meth:`~NativeSurrogate.encode` builds the
image conditioning above (the VAE runs there, on the photo, so VAE-layer hooks see the photo's own features);
:meth:`~NativeSurrogate.clean_latent` is the **still video** of the photo, the same definition as the diffusers
adapters: the photo's latent (``process_latent_in`` of the VAE latent of the photo alone; for Wan the first latent
frame of the conditioning video, which the causal VAE encodes from the photo alone) repeated over the latent
frames. (Until Nov 2026 native Wan used the whole [photo, grey frames] conditioning video as x0, i.e. a video
that fades to grey, which no sampler ever starts from.) :meth:`~NativeSurrogate.noisy_latent` is the model's own
``model_sampling.noise_scaling`` (EDM ``x0 + sigma * eps`` for SVD, flow ``(1 - sigma) x0 + sigma * eps`` for Wan),
:meth:`~NativeSurrogate.denoise` is ``apply_model``, which returns ComfyUI's *denoised* x0 estimate, so
:meth:`~NativeSurrogate.prediction_target` is x0. Differences from the nodes, all on purpose: ``VAE.encode`` is replaced by
``vae.first_stage_model.encode(vae.process_input(x))`` (``VAE.encode`` writes into a preallocated buffer and
may fall back to tiling, which cuts the graph); the ``round()`` in CLIP preprocessing keeps its forward value but
passes the gradient straight through (``round`` has zero gradient); the shadow's CLIP-vision layers add their
residuals out of place (``comfy.clip_model.CLIPLayer`` adds in place, which autograd refuses); fp8 ``Linear``
layers always take ComfyUI's upcast path (its fp8 matrix multiplication, chosen on GPUs with fp8 compute,
quantises the input with an ``out=`` op autograd refuses; see :func:`_cast_linear_forward`).

**The user's models are never modified** (design choice, proved by ``tests/test_native.py``): ComfyUI loads
weights as inference tensors, which autograd cannot save for backward. Instead of replacing them, every
:meth:`NativeSurrogate.features` call runs on a *private shadow* of each module tree: a structural copy of the
modules (own parameter, buffer, child and hook dictionaries) whose parameters are zero-copy, non-inference
aliases of the user's current storage (``Tensor.set_`` on the same storage; no weight is copied, so a 14B model
costs no extra memory). The aliases are bound after ``comfy.model_management.load_models_gpu`` at the start of
the call and dropped at its end, so the surrogate never pins weights that ComfyUI later offloads, and it always
sees the weights ComfyUI currently has on the device. Weights loaded in fp8 (UNETLoader ``weight_dtype``
``fp8_e4m3fn``, ``*_fp8_scaled`` files) are aliased as the fp8 tensors they are, with their ``scale_weight``, and
ComfyUI's ops upcast them per layer as in sampling: the attack holds no full-precision copy of the model. Hooks, ``requires_grad`` and training flags that the
protect loop sets land on the shadow only. The latent format's mean/std tensors are aliased the same way.

Working size: the photo's own size rounded down to the family's multiple (16 for Wan, 64 for SVD), scaled down
to the model's native pixel area when larger (Wan 480p: 480 x 832; SVD: 576 x 1024), i.e. what a user would
set on ``WanImageToVideo`` / ``SVD_img2vid_Conditioning`` for that photo. ``size=`` fixes it instead.

Noise: :meth:`NativeSurrogate.sample_noise` draws the timestep (a sigma from the model's own
``model_sampling``) and a noise *seed* (``draw.extra["noise_seed"]``); the Gaussian noise itself is drawn from that
seed in :meth:`NativeSurrogate.noisy_latent` at the shape of x0 (so ``sample_noise``'s ``size=`` is accepted and not
needed). Two passes with the same draw and the same ``clean=`` x0 therefore see one bit-identical ``z_t``.

Binding: every entry point that runs a model (:meth:`~NativeSurrogate.features`,
:meth:`~NativeSurrogate.encode_image`, ``encode``, ``denoise``, :meth:`~NativeSurrogate.noisy_latent`, which reads
the model's ``model_sampling``) runs inside :meth:`NativeSurrogate.bound`; nested calls reuse the outer binding.
``clean_latent`` and ``prediction_target`` are tensor arithmetic on their inputs and touch no model.

This module imports ComfyUI lazily (inside functions) and uses only absolute imports, so it can be imported,
documented and unit-tested without ComfyUI on the path.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
from collections import OrderedDict
from typing import Any, Iterator, Sequence

import torch
from torch import Tensor, nn

from anti_i2v.surrogates.base import Conditioning, FeatureRequest, Features, NoiseDraw, Surrogate, SurrogateError

__all__ = [
    "NATIVE_FAMILIES",
    "CLIP_VISION_CROPS",
    "NativeSurrogate",
    "detect_native_family",
]

log = logging.getLogger("anti_i2v.native")

#: families a native surrogate can be built for
NATIVE_FAMILIES = ("wan21", "wan22", "wan22_ti2v", "svd", "ltxv", "hunyuan_i2v")
#: CLIPVisionEncode's crop choices: "none" squashes the whole photo to the CLIP size, "center" crops its centre
CLIP_VISION_CROPS = ("none", "center")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# ---------------------------------------------------------------------------------------------- shadows
def _alias(t: Tensor) -> Tensor:
    """A normal (non-inference) tensor viewing ``t``'s storage: no copy, no autograd history.

    Falls back to a copy for tensor subclasses whose storage cannot be shared this way.
    """
    with torch.inference_mode(False):
        if not t.is_inference():
            return t.detach()
        try:
            out = torch.empty(0, dtype=t.dtype, device=t.device)
            out.set_(t.untyped_storage(), t.storage_offset(), t.size(), t.stride())
            return out
        except (RuntimeError, TypeError, NotImplementedError):  # quantised / subclassed tensors
            return t.clone()


def _copy_latent_format(fmt: Any) -> Any:
    """A shallow copy of a ``comfy.latent_formats`` object whose tensor attributes are normal aliases."""
    out = copy.copy(fmt)
    for k, v in list(vars(fmt).items()):
        if isinstance(v, Tensor):
            setattr(out, k, _alias(v))
    return out


def _clip_layer_forward(self: nn.Module, x: Tensor, mask: Tensor | None = None, optimized_attention=None) -> Tensor:
    """``comfy.clip_model.CLIPLayer.forward`` without its in-place adds (they break autograd)."""
    x = x + self.self_attn(self.layer_norm1(x), mask, optimized_attention)
    return x + self.mlp(self.layer_norm2(x))


#: out-of-place forwards for ComfyUI modules whose forward writes in place, by (module, class name); family
#: modules add theirs at import (e.g. LTX-Video's transformer block)
OUT_OF_PLACE: dict[tuple[str, str], Any] = {("comfy.clip_model", "CLIPLayer"): _clip_layer_forward}


def _cross_attention_forward(self: nn.Module, x: Tensor, context: Tensor | None = None, value: Tensor | None = None,
                             mask: Tensor | None = None, transformer_options: dict | None = None) -> Tensor:
    """``comfy.ldm.modules.attention.CrossAttention.forward`` with an attention slot (``attention_fn``).

    With the slot empty it is ComfyUI's own forward. Filled (:func:`anti_i2v.surrogates.attention.capture_attention`,
    I2VGuard's temporal maps), the same projections run and the slot computes ``softmax(q k^T / sqrt(d)) v`` on
    the per-head tensors, keeping the probabilities.
    """
    fn = self.__dict__.get("attention_fn")
    if fn is None:
        return type(self).forward(self, x, context=context, value=value, mask=mask,
                                  transformer_options={} if transformer_options is None else transformer_options)
    if mask is not None:
        raise ValueError("reading attention maps: a masked ComfyUI attention is not supported")
    ctx = x if context is None else context
    q, k, v = self.to_q(x), self.to_k(ctx), self.to_v(ctx if value is None else value)
    b, n, _ = q.shape
    q, k, v = (t.reshape(b, t.shape[1], self.heads, -1).transpose(1, 2) for t in (q, k, v))
    out = fn(q, k, v).transpose(1, 2).reshape(b, n, -1)
    return self.to_out(out)


#: shadow modules that get an attention slot (``attention_fn``, empty) and the forward that honours it
ATTENTION_SLOT: dict[tuple[str, str], Any] = {("comfy.ldm.modules.attention", "CrossAttention"): _cross_attention_forward}


def _cast_linear_forward(self: nn.Module, input: Tensor) -> Tensor:
    """``comfy.ops``' fp8 ``Linear`` computed as ComfyUI computes it on a GPU without fp8 matrix multiplication.

    ComfyUI's fp8 matmul path (``comfy.ops.fp8_linear``: ``fp8_e4m3fn_fast`` on GPUs with fp8 compute, and
    ``*_fp8_scaled`` files whose marker turns on fp8 optimisations there) quantises the *input* with
    ``torch.clamp(..., out=...)``, which autograd refuses ("functions with out=... arguments don't support automatic
    differentiation"); ComfyUI's ``fp8_ops`` catches that and falls back per call, ``scaled_fp8_ops`` does not. The
    shadow therefore always takes the differentiable path: the fp8 weight upcast to the input's dtype by ComfyUI's
    own ``cast_bias_weight``, times ``scale_weight`` where the layer has one (the same branch as
    ``scaled_fp8_ops``' fallback), in every pass, so the target and the adversarial passes compute alike.
    """
    import comfy.ops

    uncast = getattr(comfy.ops, "uncast_bias_weight", None)  # ComfyUI 0.3.75; older releases had no offloading
    if uncast is not None:
        weight, bias, stream = comfy.ops.cast_bias_weight(self, input, offloadable=True)
    else:  # pragma: no cover - older ComfyUI
        (weight, bias), stream = comfy.ops.cast_bias_weight(self, input), None
    scale = getattr(self, "scale_weight", None)
    if scale is None:
        x = torch.nn.functional.linear(input, weight, bias)
    else:
        s = scale.to(device=weight.device, dtype=weight.dtype)
        x = (torch.nn.functional.linear(input, weight * s, bias) if weight.numel() < input.numel()
             else torch.nn.functional.linear(input * s, weight, bias))
    if uncast is not None:
        uncast(self, weight, bias, stream)
    return x


def _uses_fp8_matmul(cls: type) -> bool:
    """Whether ``cls.forward_comfy_cast_weights`` may route through ``comfy.ops.fp8_linear``."""
    fn = getattr(cls, "forward_comfy_cast_weights", None)
    return "fp8_linear" in getattr(getattr(fn, "__code__", None), "co_names", ())


def _patch_in_place(shadow: nn.Module) -> None:
    """Give shadow modules whose ComfyUI forward writes in place an out-of-place forward (same values), fp8
    ``Linear`` layers a differentiable cast path (:func:`_cast_linear_forward`), and ComfyUI's ``CrossAttention``
    an attention slot (:data:`ATTENTION_SLOT`). Only the private shadows change: the user's modules are never
    touched."""
    cls = type(shadow)
    key = (cls.__module__, cls.__name__)
    fn = OUT_OF_PLACE.get(key)
    if fn is not None:
        shadow.__dict__["forward"] = fn.__get__(shadow, cls)
    slot = ATTENTION_SLOT.get(key)
    if slot is not None:
        shadow.__dict__["forward"] = slot.__get__(shadow, cls)
        shadow.__dict__["attention_fn"] = None
    if _uses_fp8_matmul(cls):
        shadow.__dict__["forward_comfy_cast_weights"] = _cast_linear_forward.__get__(shadow, cls)


class _Shadow:
    """A private structural copy of a module tree, bound to the user's tensors only during one call.

    Every module is re-created with ``__new__`` and its own ``_parameters``, ``_buffers``, ``_modules`` and
    hook dictionaries; plain attributes (config values, ComfyUI cast flags, ``weight_function`` lists) are
    shared by reference and re-synchronised at each :meth:`bind`, so ComfyUI's state changes (partial loading,
    object patches) are followed. The user's modules are only read.
    """

    def __init__(self, root: nn.Module) -> None:
        self.root_user = root
        self._signature: tuple = ()
        self.pairs: list[tuple[nn.Module, nn.Module]] = []
        self.root: nn.Module = self._build()

    def _current_signature(self) -> tuple:
        return tuple(id(m) for m in self.root_user.modules())

    def _build(self) -> nn.Module:
        memo: dict[int, nn.Module] = {}
        pairs: list[tuple[nn.Module, nn.Module]] = []

        def rec(m: nn.Module) -> nn.Module:
            if id(m) in memo:
                return memo[id(m)]
            s = m.__class__.__new__(m.__class__)
            memo[id(m)] = s
            d = {}
            for k, v in m.__dict__.items():
                if k.startswith("_") and isinstance(v, (dict, set)):
                    d[k] = type(v)(v) if not isinstance(v, OrderedDict) else OrderedDict(v)
                else:
                    d[k] = v
            d["_parameters"] = OrderedDict((k, None) for k in m._parameters)
            d["_buffers"] = OrderedDict((k, None) for k in m._buffers)
            d["_modules"] = OrderedDict()
            object.__setattr__(s, "__dict__", d)
            _patch_in_place(s)
            for k, c in m._modules.items():
                d["_modules"][k] = None if c is None else rec(c)
            pairs.append((m, s))
            return s

        root = rec(self.root_user)
        self.pairs = pairs
        self._signature = self._current_signature()
        return root

    def refresh(self) -> None:
        """Rebuild the structure if ComfyUI swapped modules (object patches) since the last build."""
        if self._current_signature() != self._signature:
            self.root = self._build()

    def bind(self) -> None:
        """Point the shadow at the user's current tensors (zero-copy aliases) and plain attributes."""
        for m, s in self.pairs:
            sd = s.__dict__
            for k, v in m.__dict__.items():
                if k == "training" or (k.startswith("_") and isinstance(v, (dict, set))):
                    continue
                if isinstance(v, Tensor):
                    sd[k] = _alias(v)
                elif k == "latent_format" and v is not None:
                    sd[k] = _copy_latent_format(v)
                else:
                    sd[k] = v
            for k, p in m._parameters.items():
                s._parameters[k] = None if p is None else nn.Parameter(_alias(p), requires_grad=False)
            for k, b in m._buffers.items():
                s._buffers[k] = None if b is None else _alias(b)

    def unbind(self) -> None:
        """Drop every alias so that no storage of the user's model stays referenced between calls."""
        for m, s in self.pairs:
            for k in s._parameters:
                s._parameters[k] = None
            for k in s._buffers:
                s._buffers[k] = None
            for k, v in list(s.__dict__.items()):
                if isinstance(v, Tensor):
                    s.__dict__[k] = None


# ---------------------------------------------------------------------------------------------- helpers
def comfy_encoder_layers(enc: nn.Module) -> list[tuple[str, nn.Module]]:
    """The layers of a ``comfy.ldm.modules.diffusionmodules.model.Encoder`` (SVD's and HunyuanVideo's VAE), in
    forward order: ``conv_in``; per level each ResNet block (and its attention, where the level has any) and the
    downsample (not after the last level); the mid block's ResNet / attention / ResNet; ``conv_out``."""
    out = [("encoder.conv_in", enc.conv_in)]
    for i, level in enumerate(enc.down):
        attn = getattr(level, "attn", ())
        for j, blk in enumerate(level.block):
            out.append((f"encoder.down.{i}.block.{j}", blk))
            if len(attn) > 0:
                out.append((f"encoder.down.{i}.attn.{j}", attn[j]))
        if i != len(enc.down) - 1:
            out.append((f"encoder.down.{i}.downsample", level.downsample))
    out += [("encoder.mid.block_1", enc.mid.block_1), ("encoder.mid.attn_1", enc.mid.attn_1),
            ("encoder.mid.block_2", enc.mid.block_2), ("encoder.conv_out", enc.conv_out)]
    return out


def _comfy():
    """Import the ComfyUI modules used here (only available inside ComfyUI or with its folder on the path)."""
    try:
        import comfy.model_base
        import comfy.model_management
        import comfy.utils
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise SurrogateError(
            "native surrogates need ComfyUI (the 'comfy' package); connect the models inside ComfyUI"
        ) from e
    return comfy


def _describe_model(model: Any) -> str:
    inner = getattr(model, "model", None)
    if inner is None:
        return type(model).__name__
    name = type(inner).__name__
    dm = getattr(inner, "diffusion_model", None)
    emb = getattr(dm, "patch_embedding", None)
    if name == "WAN21" and emb is not None:
        return f"{name} ({emb.weight.shape[1]} input channels)"
    img_in = getattr(getattr(dm, "img_in", None), "proj", None)
    if name.startswith("HunyuanVideo") and img_in is not None:
        return f"{name} ({img_in.weight.shape[1]} input channels)"
    return name


def detect_native_family(model: Any) -> str:
    """The family (``"wan21"``, ``"wan22_ti2v"``, ``"svd"``, ``"ltxv"`` or ``"hunyuan_i2v"``) of a ComfyUI ``MODEL``,
    or ValueError.

    Wan: ``comfy.model_base.WAN21`` itself (not its VACE/camera/S2V/2.2-5B subclasses) whose patch embedding
    takes 36 channels (16 noise + 4 mask + 16 image latent), i.e. Wan 2.1 I2V (with CLIP image tokens) and
    Wan 2.2 14B I2V. Wan 2.2 TI2V-5B: ``comfy.model_base.WAN22``. SVD: ``comfy.model_base.SVD_img2vid``.
    LTX-Video: ``comfy.model_base.LTXV`` (every LTXV model takes an image through ``LTXVImgToVideo``).
    HunyuanVideo I2V: ``comfy.model_base.HunyuanVideoI2V`` (``img_in`` takes 33 channels: 16 noise + 16 image
    latent + 1 mask); HunyuanVideo text-to-video and SkyReels I2V (32 channels) are refused by name.
    """
    comfy = _comfy()
    inner = getattr(model, "model", None)
    mb = comfy.model_base
    supported = ("Wan 2.1 I2V / Wan 2.2 14B I2V (WAN21 with 36 input channels, from UNETLoader), Wan 2.2 "
                 "TI2V-5B (WAN22, from UNETLoader), SVD (SVD_img2vid, from ImageOnlyCheckpointLoader) or LTX-Video "
                 "(LTXV, from CheckpointLoaderSimple) or HunyuanVideo I2V (HunyuanVideoI2V, 33 input channels, "
                 "from UNETLoader)")
    if inner is None:
        raise ValueError(f"model: expected a ComfyUI MODEL, got {type(model).__name__}; supported: {supported}")
    if type(inner) is mb.WAN21:
        dm = inner.diffusion_model
        in_ch = dm.patch_embedding.weight.shape[1]
        lat = inner.latent_format.latent_channels
        if in_ch == 2 * lat + 4:
            return "wan21"
        raise ValueError(
            f"model: the connected Wan model takes {in_ch} input channels, which is not image-to-video "
            f"(a text-to-video model?); supported: {supported}"
        )
    if type(inner) is mb.WAN22:
        return "wan22_ti2v"
    if type(inner) is mb.SVD_img2vid:
        return "svd"
    if type(inner) is mb.LTXV:
        return "ltxv"
    if type(inner) is mb.HunyuanVideoI2V:
        return "hunyuan_i2v"
    if isinstance(inner, mb.HunyuanVideo) and type(inner) is not mb.HunyuanVideo15:
        raise ValueError(f"model: the connected model is {_describe_model(model)}: HunyuanVideo text-to-video or "
                         f"SkyReels I2V (32 input channels), not HunyuanVideo I2V (33: image latent + mask, "
                         f"hunyuan_video_image_to_video_720p_bf16.safetensors); supported: {supported}")
    raise ValueError(f"model: the connected model is {_describe_model(model)}, not an image-to-video model "
                     f"this pack supports natively; supported: {supported}")


def _text_conditioning(positive: Any, width: int, model_name: str, encoder: str) -> tuple[Tensor, dict, str]:
    """(embedding, extra keys, source) of a text ``CONDITIONING`` for a model whose context is ``width`` wide.

    None gives one zero token (with identical tokens, cross-attention is the same for any token count) and no
    extra keys. Otherwise the first entry's tensor (cloned out of inference mode) and its dict minus the image
    conditioning keys of ComfyUI's I2V nodes.
    """
    if positive is None:
        return torch.zeros(1, 1, width), {}, "zeros"
    if not isinstance(positive, (list, tuple)) or not positive or not isinstance(positive[0][0], Tensor):
        raise ValueError("positive: expected a ComfyUI CONDITIONING (a list of [tensor, dict])")
    emb = positive[0][0]
    if emb.shape[-1] != width:
        raise ValueError(f"positive: the conditioning has width {emb.shape[-1]} but {model_name} expects {width} "
                         f"({encoder}); connect the CLIPTextEncode output of that text encoder")
    if len(positive) > 1:
        log.warning("positive has %d entries; the surrogate uses the first", len(positive))
    with torch.inference_mode(False):
        cond = emb.detach().clone()
    skip = ("concat_latent_image", "concat_mask", "clip_vision_output", "noise_mask", "guiding_frame_index",
            "ref_latent")
    return cond, {k: v for k, v in positive[0][1].items() if k not in skip}, "conditioning"


def _ste_round(x: Tensor) -> Tensor:
    """``round(x)`` in the forward pass, identity in the backward pass (straight-through estimator)."""
    return x + (torch.round(x) - x).detach()


def _clip_vision_encode(cv_model: nn.Module, clip_vision: Any, image: Tensor, *, crop: bool = True) -> Any:
    """Differentiable ``ClipVisionModel.encode_image`` (comfy/clip_vision.py) on the shadow ``cv_model``.

    Args:
        cv_model: the shadow of ``clip_vision.model``.
        clip_vision: the user's ClipVisionModel (image size, mean, std, output mode).
        image: (B, H, W, 3) ComfyUI IMAGE in [0, 1].
        crop: True: scale the short side to the CLIP size and centre-crop (``CLIPVisionEncode`` crop
            ``center``, ``SVD_img2vid_Conditioning``); False: squash the whole image to the CLIP size
            (``CLIPVisionEncode`` crop ``none``, what ComfyUI's Wan 2.1 I2V template uses).
    """
    import comfy.clip_vision

    size = clip_vision.image_size
    mean = torch.tensor(clip_vision.image_mean, device=image.device, dtype=image.dtype).view(3, 1, 1)
    std = torch.tensor(clip_vision.image_std, device=image.device, dtype=image.dtype).view(3, 1, 1)
    x = image[..., :3].movedim(-1, 1)
    if not (x.shape[2] == size and x.shape[3] == size):
        if crop:
            scale = size / min(x.shape[2], x.shape[3])
            scale_size = (round(scale * x.shape[2]), round(scale * x.shape[3]))
        else:
            scale_size = (size, size)
        x = torch.nn.functional.interpolate(x, size=scale_size, mode="bicubic", antialias=True)
        h = (x.shape[2] - size) // 2
        w = (x.shape[3] - size) // 2
        x = x[:, :, h:h + size, w:w + size]
    x = _ste_round(torch.clip(255.0 * x, 0, 255)) / 255.0
    pixel_values = ((x - mean) / std).float()
    all_hs = getattr(clip_vision, "return_all_hidden_states", False)
    out = cv_model(pixel_values=pixel_values, intermediate_output="all" if all_hs else -2)
    res = comfy.clip_vision.Output()
    res["last_hidden_state"] = out[0]
    res["image_embeds"] = out[2]
    if all_hs:
        res["penultimate_hidden_states"] = out[1][:, -2]
        res["all_hidden_states"] = out[1]
    else:
        res["penultimate_hidden_states"] = out[1]
    res["mm_projected"] = out[3]
    return res


# ---------------------------------------------------------------------------------------------- base
class NativeSurrogate(Surrogate):
    """Common part of the native (ComfyUI-model) surrogates; see the module docstring for the design.

    Args:
        model: the ComfyUI ``MODEL`` (``ModelPatcher``).
        vae: the ComfyUI ``VAE``.
        clip_vision: the ComfyUI ``CLIP_VISION`` (required for SVD, optional for Wan).
        positive: the ComfyUI ``CONDITIONING`` for text (Wan); zeros of the model's text width when None.
        num_frames: pixel frames of the video (Wan: ``length`` of WanImageToVideo; SVD: ``video_frames``).
        dtype: accepted for the node contract; the denoiser computes in the dtype ComfyUI loaded it with
            (the weights are the user's, never converted or copied) and the VAE in ``vae.vae_dtype``.
        size: fixed (height, width) working size; by default derived from the photo (module docstring).
    """

    family = "native"
    native_area: int = 480 * 832
    size_multiple = 16
    default_size = (480, 832)

    def __init__(self, *, model: Any, vae: Any, clip_vision: Any = None, positive: Any = None,
                 num_frames: int = 9, dtype: torch.dtype = torch.bfloat16,
                 size: tuple[int, int] | None = None) -> None:
        super().__init__(num_frames=num_frames, dtype=dtype, working_size=None)
        if vae is None or getattr(vae, "first_stage_model", None) is None:
            raise ValueError("vae: connect the VAE that belongs to the model (a VAELoader or checkpoint output)")
        if size is not None:
            h, w = (int(size[0]), int(size[1]))
            m = self.size_multiple
            if h < m or w < m or h % m or w % m:
                raise SurrogateError(f"size must be two multiples of {m} >= {m}, got {size}")
            self._working_size = (h, w)
        self.model = model
        self.vae = vae
        self.clip_vision = clip_vision
        self.requested_dtype = dtype
        self._model_shadow = _Shadow(model.model)
        self._vae_shadow = _Shadow(vae.first_stage_model)
        self._cv_shadow = _Shadow(clip_vision.model) if clip_vision is not None else None
        self._bound = False

    # ------------------------------------------------------------- shadows and devices
    def _shadows(self) -> list[_Shadow]:
        return [s for s in (self._model_shadow, self._vae_shadow, self._cv_shadow) if s is not None]

    def _patchers(self) -> list[Any]:
        out = [self.model, self.vae.patcher]
        if self.clip_vision is not None:
            out.append(self.clip_vision.patcher)
        return out

    @contextlib.contextmanager
    def bound(self) -> Iterator[None]:
        """Load the user's models through ComfyUI and bind the shadows to them for the block (re-entrant)."""
        if self._bound:
            yield
            return
        comfy = _comfy()
        with torch.inference_mode():  # the same mode ComfyUI loads and patches weights in
            comfy.model_management.load_models_gpu(self._patchers())
        try:
            for s in self._shadows():
                s.refresh()
                s.bind()
            self._bound = True
            yield
        finally:
            self._bound = False
            for s in self._shadows():
                s.unbind()

    @property
    def base_model(self) -> nn.Module:
        """The shadow of ``model.model`` (a ``comfy.model_base.BaseModel``)."""
        return self._model_shadow.root

    @property
    def device(self) -> torch.device:
        return torch.device(self.model.load_device)

    def denoiser(self) -> nn.Module:
        return self._model_shadow.root.diffusion_model

    def modules(self) -> list[nn.Module]:
        return [s.root for s in self._shadows()]

    def to(self, device: str | torch.device) -> "NativeSurrogate":
        """No-op: ComfyUI's model management decides where the user's models live (``model.load_device``)."""
        return self

    def working_size(self, height: int, width: int) -> tuple[int, int]:
        if self._working_size is not None:
            return self._working_size
        m = self.size_multiple
        scale = min(1.0, math.sqrt(self.native_area / float(height * width)))
        h = max(m, int(height * scale) // m * m)
        w = max(m, int(width * scale) // m * m)
        return (h, w)

    def describe(self) -> dict:
        d = super().describe()
        d.update({
            "source": "comfyui-native",
            "model_class": _describe_model(self.model),
            "dtype": str(self.model.model.get_dtype()).replace("torch.", ""),
            "requested_dtype": str(self.requested_dtype).replace("torch.", ""),
            "vae_dtype": str(self.vae.vae_dtype).replace("torch.", ""),
            "clip_vision": self.clip_vision is not None,
            "clip_vision_crop": self.clip_vision_crop if self.clip_vision is not None else None,
        })
        return d

    # ------------------------------------------------------------- protocol
    def sample_noise(self, batch: int, generator: torch.Generator, *,
                     size: Sequence[int] | None = None) -> NoiseDraw:
        """A sigma per image from the model's own ``model_sampling`` and a seed for the latent noise.

        The sigma is ``model_sampling.percent_to_sigma(u)`` with ``u ~ U(0.02, 0.98)`` (the sampler's own
        schedule mapping, shift included); the noise tensor is drawn from the seed in :meth:`noisy_latent` at the
        shape of x0. ``size`` (the images' (height, width)) is accepted for the loop's contract and not needed.
        """
        if batch < 1:
            raise SurrogateError(f"batch must be >= 1, got {batch}")
        u = 0.02 + 0.96 * torch.rand(batch, generator=generator)
        ms = self.model.model.model_sampling
        sig = torch.tensor([float(ms.percent_to_sigma(float(p))) for p in u], dtype=torch.float32)
        seed = torch.randint(0, 2**62, (1,), generator=generator)
        return NoiseDraw(timestep=sig, noise=torch.empty(0), extra={"noise_seed": seed})

    def features(self, image: Tensor | None, draw: NoiseDraw, request: FeatureRequest, *,
                 clean: Tensor | None = None, cond: Conditioning | None = None) -> Features:
        """:meth:`Surrogate.features` on the shadows, bound to the user's weights for this call only."""
        with self.bound():
            return super().features(image, draw, request, clean=clean, cond=cond)

    def encode_image(self, image: Tensor, vae_layers: frozenset[int] | set[int] = frozenset()) -> Conditioning:
        """:meth:`Surrogate.encode_image` on the bound shadows (the loop caches the clean photo's and the target's)."""
        with self.bound():
            return super().encode_image(image, vae_layers)

    def noisy_latent(self, x0: Tensor, draw: NoiseDraw) -> Tensor:
        """``model_sampling.noise_scaling(sigma, eps, x0)`` with eps drawn from the draw's seed at x0's shape."""
        with self.bound():
            if draw.timestep.shape[0] != x0.shape[0]:
                raise SurrogateError(f"draw: {draw.timestep.shape[0]} timestep(s) for a latent batch of {x0.shape[0]}")
            noise = self._noise(draw, x0.shape)
            sigma = draw.timestep.to(self.device, torch.float32)
            return self.base_model.model_sampling.noise_scaling(sigma, noise, x0.to(self.device).float()).float()

    def prediction_target(self, x0: Tensor, draw: NoiseDraw) -> Tensor:
        """x0: ``apply_model`` returns ComfyUI's denoised estimate (not eps, v or the flow)."""
        return x0.float()

    @staticmethod
    def _seed(draw: NoiseDraw) -> int:
        """The draw's noise seed (0 for a draw without one)."""
        return int(draw.extra["noise_seed"].reshape(-1)[0]) if "noise_seed" in draw.extra else 0

    def _noise(self, draw: NoiseDraw, shape: Sequence[int]) -> Tensor:
        g = torch.Generator(device="cpu").manual_seed(self._seed(draw))
        return torch.randn(tuple(shape), generator=g).to(self.device)

    def _encode_latent(self, video: Tensor) -> Tensor:
        """``vae.first_stage_model.encode(vae.process_input(x))`` on the shadow (VAE.encode is not differentiable).

        Args:
            video: (B, 3, H, W) or (B, 3, T, H, W) in [0, 1].
        """
        x = self.vae.process_input(video).to(device=self.device, dtype=self.vae.vae_dtype)
        return self._vae_shadow.root.encode(x).float()

    def _transformer_options(self, sigma: Tensor) -> dict:
        to = dict(self.model.model_options.get("transformer_options", {}))
        to["cond_or_uncond"] = [0]
        to["sigmas"] = sigma
        return to

    def _model_conds(self, cond: dict, noise: Tensor, batch: int, *, denoise_mask: Tensor | None = None) -> dict:
        """``BaseModel.extra_conds`` + ``process_cond`` + concat, as comfy/samplers.py does for one cond.

        ``denoise_mask``: the sampler's prepared noise mask (families whose model reads it, e.g. LTX-Video).
        """
        params = dict(cond)
        params.update({"device": self.device, "noise": noise, "prompt_type": "positive", "seed": None,
                       "denoise_mask": denoise_mask, "latent_image": torch.zeros_like(noise)})
        if noise.ndim >= 4:
            params.setdefault("width", noise.shape[-1] * 8)
            params.setdefault("height", noise.shape[-2] * 8)
        conds = self.base_model.extra_conds(**params)
        return {k: v.process_cond(batch_size=batch, area=None).concat([]) for k, v in conds.items()}

    #: how the photo is fitted to CLIP vision's square input: "center" (crop) or "none" (squash); per family
    clip_vision_crop: str = "center"

    def _cv_parts(self, image_bhwc: Tensor) -> dict:
        """The tensors of the differentiable CLIP-vision output, as ``Conditioning.parts`` entries."""
        out = _clip_vision_encode(self._cv_shadow.root, self.clip_vision, image_bhwc,
                                  crop=self.clip_vision_crop == "center")
        keys = ("last_hidden_state", "image_embeds", "penultimate_hidden_states", "all_hidden_states", "mm_projected")
        return {f"clip_vision.{k}": getattr(out, k) for k in keys if isinstance(getattr(out, k, None), Tensor)}

    @staticmethod
    def _cv_output(parts: dict) -> Any:
        """A ``comfy.clip_vision.Output`` rebuilt from :meth:`_cv_parts` entries."""
        import comfy.clip_vision

        res = comfy.clip_vision.Output()
        for k, v in parts.items():
            if k.startswith("clip_vision."):
                res[k[len("clip_vision."):]] = v
        return res

    def _run(self, x: Tensor, sigma: Tensor, conds: dict) -> Tensor:
        return self.base_model.apply_model(x, sigma, transformer_options=self._transformer_options(sigma), **conds)

    def generate(self, image: Tensor, *, num_inference_steps: int = 4, seed: int = 0,
                 size: tuple[int, int] | None = None) -> Tensor:
        """A short video from ``image`` with ComfyUI's own conditioning, ``comfy.sample.sample`` and VAE decode.

        Uses the user's models as ComfyUI would (KSampler ``euler``, cfg 1, the family's scheduler) under
        ``torch.inference_mode``; the shadows are not involved.

        Args:
            image: (3, H, W) or (1, 3, H, W) in [0, 1].
            num_inference_steps: sampler steps.
            seed: noise seed (ComfyUI's ``prepare_noise``).
            size: (height, width); :meth:`working_size` of the photo by default.

        Returns:
            (F, 3, H, W) frames in [0, 1] on CPU.
        """
        with torch.inference_mode():
            samples = self._sample(image, num_inference_steps, seed, size)
            frames = self.vae.decode(samples)
            frames = frames.reshape(-1, *frames.shape[-3:])
        return frames.movedim(-1, 1).float().cpu().clone()

    #: the native adapters sample with ComfyUI's own sampler (:meth:`_sample`), so they can give the latent too
    generates_latents = True

    def generate_latent(self, image: Tensor, *, num_inference_steps: int = 3, seed: int = 0) -> Tensor:
        """The latent video :meth:`generate` samples (before VAE decode), ``process_latent_in`` of it, in the layout
        of :meth:`clean_latent` (I2VGuard's clean generation), on the surrogate's device, a normal tensor."""
        with torch.inference_mode():
            samples = self._sample(image, num_inference_steps, seed, None)
        samples = samples.clone().to(self.device, torch.float32)  # outside inference mode: a normal tensor
        with self.bound():
            return self._latent_video(self.base_model.process_latent_in(samples)).float()

    def _latent_video(self, latent: Tensor) -> Tensor:
        """The sampler's latent in :meth:`clean_latent`'s layout: (1, C, T, h, w) already for the DiT families."""
        return latent

    def _sample(self, image: Tensor, num_inference_steps: int, seed: int, size: tuple[int, int] | None) -> Tensor:
        """``comfy.sample.sample`` of one photo (the sampler's latent, VAE space); call under inference mode."""
        import comfy.sample

        image = self._generate_image(image, num_inference_steps)
        h, w = size or self.working_size(image.shape[-2], image.shape[-1])
        pixels = image.detach().float().cpu().movedim(1, -1)
        positive, negative, latent, scheduler, *mask = self._sampling_inputs(pixels, h, w)
        noise = comfy.sample.prepare_noise(latent, int(seed))
        return comfy.sample.sample(self.model, noise, int(num_inference_steps), 1.0, "euler", scheduler,
                                   positive, negative, latent, noise_mask=mask[0] if mask else None,
                                   seed=int(seed), disable_pbar=True)

    def _sampling_inputs(self, pixels: Tensor, h: int, w: int):  # pragma: no cover - per family
        raise NotImplementedError
