"""fp8 weights through the native surrogates, in-process with the real ComfyUI (CPU).

A user who loads Wan 2.1 I2V in fp8 (UNETLoader ``weight_dtype`` ``fp8_e4m3fn`` / ``fp8_e5m2``, or a
``*_fp8_scaled`` file) hands the pack a MODEL whose ``nn.Linear`` weights are fp8 tensors upcast per layer by
ComfyUI's own ``comfy.ops`` (``manual_cast`` / ``scaled_fp8_ops``). The native surrogate's shadow aliases those
very fp8 tensors (no copy, no conversion) and runs the same ops, so the attack differentiates through exactly what
the sampler computes. Proved here: the user's weights are fp8, the gradient w.r.t. the photo is finite, non-zero
and points where the full-precision model's does, and the user's MODEL (bytes, dtypes, storage, flags, hooks) is
unchanged afterwards (protect() through the node and sampling before/after: tests/test_native_server.py). ComfyUI's fp8
*matrix multiplication* path (GPUs with fp8 compute) is not differentiable; the shadow replaces it with ComfyUI's
cast path, tested by turning that path on.

The files are the tiny ones of tests/comfy_models.py, loaded with ``comfy.sd.load_diffusion_model`` exactly as
UNETLoader does (``model_options={"dtype": torch.float8_e4m3fn}`` for ``fp8_e4m3fn``).
"""

from __future__ import annotations

import pytest
import torch

from anti_i2v.surrogates.base import FeatureRequest
from tests import comfy_models as cm

pytestmark = pytest.mark.skipif(not (cm.COMFY_DIR / "comfy").is_dir(), reason="ComfyUI not unpacked (scripts/setup.sh)")

SIZE = 32  # 4 x 4 latent: the VAE encoder's forward and backward dominate the time


@pytest.fixture(scope="module")
def native():
    return cm.load_native()


@pytest.fixture(scope="module")
def files(native, tmp_path_factory):
    root = tmp_path_factory.mktemp("comfy_fp8")
    return {"i2v": cm.write_tiny_wan21_i2v(root / "diffusion_models"),
            "scaled": cm.write_tiny_wan21_i2v_fp8_scaled(root / "diffusion_models"),
            "vae": cm.write_tiny_wan_vae(root / "vae")}


def _load(path, dtype=None):
    import comfy.sd

    opts = {} if dtype is None else {"dtype": dtype}
    with torch.inference_mode():
        return comfy.sd.load_diffusion_model(str(path), model_options=opts)


@pytest.fixture(scope="module")
def vae(files):
    import comfy.sd
    import comfy.utils

    with torch.inference_mode():
        return comfy.sd.VAE(sd=comfy.utils.load_torch_file(str(files["vae"])))


def _photo(seed=3):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.interpolate(torch.rand(1, 3, 8, 8, generator=g), size=(SIZE, SIZE), mode="bilinear")


def _raw(modules):
    """Every parameter and buffer of the user's modules: name, dtype, device, storage, flags and exact bytes."""
    out = []
    with torch.inference_mode():
        for root in modules:
            for name, m in root.named_modules():
                hooks = tuple(len(getattr(m, a)) for a in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks"))
                out.append((name, type(m).__qualname__, m.training, hooks, sorted(k for k in m.__dict__
                                                                                 if "forward" in k)))
            for name, t in list(root.named_parameters()) + list(root.named_buffers()):
                out.append((name, t.dtype, t.device, t.data_ptr(), t.requires_grad, t.is_inference(),
                            t.detach().reshape(-1).view(torch.uint8).clone()))
    return out


def _same(a, b) -> bool:
    return len(a) == len(b) and all(
        len(x) == len(y) and all(torch.equal(u, v) if isinstance(u, torch.Tensor) else u == v for u, v in zip(x, y))
        for x, y in zip(a, b))


def _grad(native, model, vae):
    s = native.native_surrogate(model=model, vae=vae, frames=1)
    draw = s.sample_noise(1, torch.Generator().manual_seed(0))
    x = _photo().requires_grad_(True)
    f = s.features(x, draw, FeatureRequest(blocks=frozenset({1}), need_output=True))
    loss = f.blocks[1].float().pow(2).mean() + f.output.float().pow(2).mean()
    (g,) = torch.autograd.grad(loss, x)
    return g


@pytest.fixture(scope="module")
def ref_grad(native, files, vae):
    """The gradient with the same file loaded at full precision (float32 on the CPU)."""
    return _grad(native, _load(files["i2v"]), vae)


def _run(native, model, vae) -> dict:
    user = [model.model, vae.first_stage_model]
    before = _raw(user)
    return {"model": model, "user": user, "before": before, "grad": _grad(native, model, vae)}


@pytest.fixture(scope="module")
def scaled_run(native, files, vae):
    """The ``*_fp8_scaled`` file as ComfyUI loads it on a CPU (no fp8 matmul): shared with the fp8-matmul test."""
    return _run(native, _load(files["scaled"]), vae)


#: UNETLoader's fp8 weight_dtype choices (and the fp8_scaled file) -> the dtype of the loaded linear weights
_LOADS = {"fp8_e4m3fn": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2, "fp8_scaled": torch.float8_e4m3fn}


@pytest.mark.parametrize("weights", list(_LOADS))
def test_fp8_model_gradient_and_model_unchanged(native, files, vae, ref_grad, scaled_run, weights):
    run = scaled_run if weights == "fp8_scaled" else _run(native, _load(files["i2v"], _LOADS[weights]), vae)
    layer = run["model"].model.diffusion_model.blocks[1].ffn[0]
    assert layer.weight.dtype == _LOADS[weights]  # as the user loaded it
    assert (getattr(layer, "scale_weight", None) is not None) == (weights == "fp8_scaled")
    s = native.native_surrogate(model=run["model"], vae=vae, frames=1)
    with s.bound():  # the shadow computes with the user's fp8 storage itself: no full-precision copy
        shadow = s.denoiser().blocks[1].ffn[0]
        assert shadow.weight.dtype == _LOADS[weights] and shadow.weight.data_ptr() == layer.weight.data_ptr()
    g = run["grad"]
    assert torch.isfinite(g).all() and g.abs().sum() > 0
    # fp8 rounding (3 mantissa bits for e4m3, 2 for e5m2; random sign per weight) changes the gradient a little:
    # measured cosine against the full-precision load 0.9994 (e4m3fn, fp8_scaled) and 0.9970 (e5m2) at this size;
    # 0.99 holds on any CPU, while a missing scale, a wrong layout or a cut graph gives ~0
    cos = torch.nn.functional.cosine_similarity(g.flatten(), ref_grad.flatten(), dim=0)
    assert cos > 0.99, float(cos)
    # the library's own fp8 option stays off for a native MODEL (ComfyUI's loading decides), and says why
    from anti_i2v import lowvram

    fp8 = lowvram.plan(s, s.default_objective(), lowvram.LowVram(fp8=True)).fp8
    assert fp8["applied"] is False and "UNETLoader" in fp8["reason"]
    # the user's MODEL and VAE: the same fp8 bytes, dtypes, storage, flags and hooks (protect() and sampling
    # before/after with an fp8 MODEL are proved over HTTP in tests/test_native_server.py)
    assert _same(_raw(run["user"]), run["before"])


def test_fp8_matmul_path_is_replaced_by_the_cast_path_in_the_shadow(native, files, vae, scaled_run,
                                                                     monkeypatch):
    """On a GPU with fp8 compute, a ``*_fp8_scaled`` file loads with ``scaled_fp8_ops(fp8_matrix_mult=True)``; its
    ``fp8_linear`` quantises the input with an ``out=`` clamp that autograd refuses. Turned on here by reporting fp8
    compute while loading: the user's layer fails with a grad-requiring input, the shadow never calls it and
    gives the gradient of the plain scaled load (same ComfyUI cast maths)."""
    import comfy.model_management
    import comfy.ops

    monkeypatch.setattr(comfy.model_management, "supports_fp8_compute", lambda device=None: True)
    fast = _load(files["scaled"])
    monkeypatch.undo()
    layer = fast.model.diffusion_model.blocks[0].self_attn.q
    assert native.base._uses_fp8_matmul(type(layer))
    with pytest.raises(RuntimeError, match="out=... arguments don't support automatic differentiation"):
        comfy.ops.fp8_linear(layer, torch.randn(1, 4, layer.in_features, requires_grad=True))

    calls = []
    real = comfy.ops.fp8_linear
    monkeypatch.setattr(comfy.ops, "fp8_linear", lambda *a, **k: calls.append(1) or real(*a, **k))
    g_fast = _grad(native, fast, vae)
    assert calls == []
    g_plain = scaled_run["grad"]
    assert torch.isfinite(g_fast).all() and g_fast.abs().sum() > 0
    torch.testing.assert_close(g_fast, g_plain, atol=1e-5 * float(g_plain.abs().max()), rtol=1e-5)
