"""Ensemble surrogates (anti_i2v.surrogates.ensemble + protect()): gradient, equivalence, memory, invariants, cancel,
report, CLI.

Most tests use two toy surrogates of different working sizes (tests/toy_surrogate.py: fast); one runs the real tiny
CogVideoX and SVD adapters, whose working sizes and objectives differ as real members' do.
"""

from __future__ import annotations

import contextlib
import json
import weakref

import pytest
import torch

import anti_i2v.dsp as dsp_mod
from anti_i2v.dsp import DSPConfig
from anti_i2v.losses import DiffusionLoss, IRALoss, IRCLoss
from anti_i2v.protect import Ensemble, Member, ProtectCancelled, ProtectConfig, protect
from anti_i2v.surrogates import tiny_surrogate
from anti_i2v.surrogates.ensemble import parse_weights

from .toy_surrogate import ToySurrogate

CFG = DSPConfig(eps=16, dct_block=8)
OBJ_A = IRALoss(blocks=(3,), vae_layers=(1,)) + IRCLoss(pairs=((1, 4),))
OBJ_B = IRALoss(blocks=(2,)) + DiffusionLoss(weight=0.1)


class SmallToy(ToySurrogate):
    """A second toy family with its own working size (16 x 20 instead of 24 x 32) and other weights."""

    family = "smalltoy"
    default_size = (16, 20)

    def __init__(self, **kw):
        super().__init__(num_blocks=4, **kw)
        with torch.no_grad():
            for p in self.net.parameters():
                p.mul_(1.3)


def _state(s):
    return {
        "weights": [p.detach().clone() for m in s.modules() for p in m.parameters()],
        "flags": [p.requires_grad for m in s.modules() for p in m.parameters()],
        "training": [mm.training for m in s.modules() for mm in m.modules()],
        "hooks": sum(len(mm._forward_hooks) + len(mm._forward_pre_hooks) for m in s.modules() for mm in m.modules()),
    }


def _same_state(a, b):
    return (all(torch.equal(x, y) for x, y in zip(a["weights"], b["weights"])) and a["flags"] == b["flags"]
            and a["training"] == b["training"] and a["hooks"] == b["hooks"])


@pytest.fixture
def photo():
    return torch.rand(1, 3, 30, 42, generator=torch.Generator().manual_seed(3))


def _first_gradient(monkeypatch, *args, **kw):
    """The gradient the loop hands to its first DSP step (the step itself is then taken as usual)."""
    seen = []
    step = dsp_mod.step_params

    def spy(params, grads, lr, cfg, **k):
        seen.append([None if g is None else g.detach().clone() for g in grads])
        return step(params, grads, lr, cfg, **k)

    monkeypatch.setattr(dsp_mod, "step_params", spy)
    result = protect(*args, **kw)
    monkeypatch.setattr(dsp_mod, "step_params", step)
    return seen[0], result


def _close(a, b, rtol):
    """Every tensor of ``a`` within ``rtol`` of ``b``, relative to the largest entry of ``b``."""
    for x, y in zip(a, b):
        assert (x is None) == (y is None)
        if x is not None:
            scale = float(y.abs().max())
            assert scale > 0
            assert float((x - y).abs().max()) <= rtol * scale, float((x - y).abs().max()) / scale


class TestGradient:
    def test_ensemble_gradient_is_the_weighted_sum_of_the_members(self, photo, monkeypatch):
        a, b = ToySurrogate(), SmallToy()
        cfg = ProtectConfig(steps=1, seed=5)
        g_a, _ = _first_gradient(monkeypatch, photo, a, OBJ_A, CFG, cfg)
        g_b, _ = _first_gradient(monkeypatch, photo, b, OBJ_B, CFG, cfg)
        want = [ga + 0.25 * gb for ga, gb in zip(g_a, g_b)]
        members = [Member(a, OBJ_A, 1.0), Member(b, OBJ_B, 0.25)]
        g_seq, r = _first_gradient(monkeypatch, photo, Ensemble(members), None, CFG, cfg)
        # the same float operations as the two single runs plus one multiply-add: equal to float32 rounding
        _close(g_seq, want, 1e-6)
        assert r.settings["working_size"] == {"toy": [24, 32], "smalltoy": [16, 20]}
        # all graphs at once, one backward of the weighted sum: the same gradient up to summation order
        g_all, _ = _first_gradient(monkeypatch, photo, Ensemble(members, sequential=False), None, CFG, cfg)
        _close(g_all, want, 1e-5)
        # balance: each member's gradient scaled to a peak of 1 before the weighted sum
        peak_a, peak_b = (max(float(g.abs().max()) for g in gs) for gs in (g_a, g_b))
        g_bal, r = _first_gradient(monkeypatch, photo, Ensemble(members, balance=True), None, CFG, cfg)
        _close(g_bal, [ga / peak_a + 0.25 * gb / peak_b for ga, gb in zip(g_a, g_b)], 1e-6)
        assert r.settings["surrogate"]["balance"] is True
        with pytest.raises(ValueError, match="sequential"):
            Ensemble(members, sequential=False, balance=True)

    def test_real_families_cogvideox_and_svd(self, photo, monkeypatch):
        cog, svd = tiny_surrogate("cogvideox", seed=0, num_frames=5), tiny_surrogate("svd", seed=0, num_frames=2)
        o_c, o_s = cog.default_objective(), svd.default_objective()
        cfg = ProtectConfig(steps=1, seed=2)
        g_c, _ = _first_gradient(monkeypatch, photo, cog, o_c, CFG, cfg)
        g_s, _ = _first_gradient(monkeypatch, photo, svd, o_s, CFG, cfg)
        g_e, r = _first_gradient(monkeypatch, photo, Ensemble([Member(cog, o_c), Member(svd, o_s, 0.5)]), None, CFG,
                                 cfg)
        _close(g_e, [c + 0.5 * s for c, s in zip(g_c, g_s)], 1e-6)
        ws = r.settings["working_size"]
        assert ws["cogvideox"] == list(cog.working_size(30, 42)) and ws["svd"] == list(svd.working_size(30, 42))
        assert ws["cogvideox"] != ws["svd"]  # each member at its own working size
        (mc, ms) = r.members
        assert mc["objective"] == o_c.describe() and ms["objective"] == o_s.describe() and ms["weight"] == 0.5


class TestEquivalence:
    def test_one_member_ensemble_equals_the_plain_run_bit_for_bit(self, photo):
        """One member of weight 1 runs the plain loop's operations in the same order (the weight multiply is
        skipped at 1): identical bits, not merely close."""
        toy = ToySurrogate()
        for opt in ("normalized", "adam"):
            cfg = ProtectConfig(steps=2, seed=4, optimizer=opt)
            plain = protect(photo, toy, OBJ_A + DiffusionLoss(), CFG, cfg)
            ens = protect(photo, Ensemble([Member(toy, OBJ_A + DiffusionLoss())]), None, CFG, cfg)
            assert torch.equal(plain.protected, ens.protected)
            assert [h["loss"] for h in plain.history] == [h["loss"] for h in ens.history]
            assert ens.members[0]["loss_history"] == plain.history

    def test_same_seed_same_result(self, photo):
        def run(seed):
            ens = Ensemble([Member(ToySurrogate(), OBJ_A), Member(SmallToy(), OBJ_B, 0.5)])
            return protect(photo, ens, None, CFG, ProtectConfig(steps=2, seed=seed))

        a, b, c = run(1), run(1), run(2)
        assert torch.equal(a.protected, b.protected) and a.history == b.history and a.members == b.members
        assert not torch.equal(a.protected, c.protected)


class SavedBytes:
    """Peak bytes of activations saved for backward that are alive at once (a deterministic tensor-size counter).

    Every tensor autograd saves passes ``pack``; its storage is counted once (by address) from the first time it
    is saved until the last graph node holding it is freed (CPython frees graphs by reference counting, at
    deterministic points). Model weights are left out: they are the same in every variant.
    """

    def __init__(self, modules):
        self.skip = {p.untyped_storage().data_ptr() for m in modules for p in m.parameters()}
        self.live: dict[int, list] = {}
        self.now = self.peak = 0

    def _release(self, key):
        entry = self.live[key]
        entry[1] -= 1
        if entry[1] == 0:
            self.now -= entry[0]
            del self.live[key]

    def pack(self, t):
        key = t.untyped_storage().data_ptr()
        if key in self.skip or t.untyped_storage().nbytes() == 0:
            return t
        if key not in self.live:
            self.live[key] = [t.untyped_storage().nbytes(), 0]
            self.now += self.live[key][0]
            self.peak = max(self.peak, self.now)
        self.live[key][1] += 1
        box = _Box(t)
        weakref.finalize(box, self._release, key)
        return box

    @staticmethod
    def unpack(box):
        return box.t if isinstance(box, _Box) else box

    @contextlib.contextmanager
    def measuring(self):
        with torch.autograd.graph.saved_tensors_hooks(self.pack, self.unpack):
            yield self


class _Box:
    __slots__ = ("t", "__weakref__")

    def __init__(self, t):
        self.t = t


def test_sequential_peak_memory_is_the_largest_member_not_the_sum(photo):
    a, b = ToySurrogate(), SmallToy()
    modules = a.modules() + b.modules()
    cfg = ProtectConfig(steps=2, seed=0)

    def peak(target, losses=None):
        meter = SavedBytes(modules)
        with meter.measuring():
            protect(photo, target, losses, CFG, cfg)
        assert meter.now == 0  # every saved tensor was released again
        return meter.peak

    alone = [peak(a, OBJ_A), peak(b, OBJ_B)]
    members = [Member(a, OBJ_A), Member(b, OBJ_B, 0.5)]
    seq = peak(Ensemble(members))
    together = peak(Ensemble(members, sequential=False))
    assert min(alone) > 0
    assert seq == max(alone)  # one member's graph at a time: exactly the larger single run's peak
    # both graphs alive at once: the sum, less the storages both graphs save (the photo, the DSP parameters), which
    # are counted once (measured: 2 % of the sum here)
    assert together >= 0.95 * sum(alone)
    assert seq < together


class TestInvariantsAndCancel:
    def test_models_unchanged_after_success_failure_and_cancel(self, photo):
        a, b = ToySurrogate(), ToySurrogate(fail_at_block=1)
        before = [_state(a), _state(b)]
        protect(photo, Ensemble([Member(a, OBJ_A), Member(ToySurrogate(), OBJ_B)]), None, CFG,
                ProtectConfig(steps=2))
        with pytest.raises(RuntimeError, match="toy failure"):
            protect(photo, Ensemble([Member(a, OBJ_A), Member(b, IRALoss(blocks=(3,)))]), None, CFG,
                    ProtectConfig(steps=2))

        def boom(p):
            raise ProtectCancelled("user cancelled")

        with pytest.raises(ProtectCancelled):
            protect(photo, Ensemble([Member(a, OBJ_A), Member(b, IRALoss(vae_layers=(1,)))]), None, CFG,
                    ProtectConfig(steps=5), callback=boom)
        assert _same_state(before[0], _state(a)) and _same_state(before[1], _state(b))

    def test_cancel_by_return_and_between_members(self, photo):
        a, b = ToySurrogate(), SmallToy()
        seen = []
        ens = Ensemble([Member(a, OBJ_A), Member(b, OBJ_B, 2.0)])
        r = protect(photo, ens, None, CFG, ProtectConfig(steps=10), callback=lambda p: (seen.append(p), p.step < 2)[1])
        assert r.cancelled and len(r.history) == 2 and [p.step for p in seen] == [1, 2]
        assert set(seen[0].terms) == {"toy", "smalltoy"}
        assert seen[0].loss == pytest.approx(seen[0].terms["toy"] + 2.0 * seen[0].terms["smalltoy"], rel=1e-6)
        assert all(len(m["loss_history"]) == 2 for m in r.members)

        # activate() is entered around each member's work: it can stop the loop between two members
        calls = []

        @contextlib.contextmanager
        def activate(s):
            calls.append(s.family)
            if len(calls) == 5:  # prepare toy, prepare smalltoy, iteration 1: toy, smalltoy; iteration 2: toy
                raise ProtectCancelled("interrupted between members")
            yield

        before = [_state(a), _state(b)]
        with pytest.raises(ProtectCancelled, match="between members"):
            protect(photo, Ensemble([Member(a, OBJ_A), Member(b, OBJ_B)], activate=activate, device="cpu"), None, CFG,
                    ProtectConfig(steps=10))
        assert calls == ["toy", "smalltoy", "toy", "smalltoy", "toy"]
        assert _same_state(before[0], _state(a)) and _same_state(before[1], _state(b))


class TestReport:
    def test_report_lists_members_objectives_and_histories(self, photo):
        a, b, c = ToySurrogate(), SmallToy(), ToySurrogate()
        ens = Ensemble([Member(a, None, 1.0), Member(b, OBJ_B, 0.5), Member(c, OBJ_A, 0.0)])
        r = protect(photo, ens, None, CFG, ProtectConfig(steps=2))
        rep = json.loads(json.dumps(r.report()))
        members = rep["ensemble"]["members"]
        assert rep["ensemble"]["sequential"] is True
        assert [m["label"] for m in members] == ["toy", "smalltoy"]  # toy_2 (weight 0) left out, with a note
        assert any("'toy_2' has weight 0" in n for n in rep["settings"]["notes"])
        assert [m["family"] for m in members] == ["toy", "smalltoy"] and [m["weight"] for m in members] == [1.0, 0.5]
        assert members[0]["objective"] == a.default_objective().describe()  # None: the family's default, resolved
        assert members[1]["objective"][0] == {"name": "ira", "weight": 1.0, "blocks": [2], "vae_layers": []}
        for m in members:
            assert [h["step"] for h in m["loss_history"]] == [1, 2] and m["loss_scale"] == 1.0
        assert set(members[1]["loss_history"][0]) == {"step", "loss", "ira", "advdm"}
        for row, h0, h1 in zip(rep["loss_history"], members[0]["loss_history"], members[1]["loss_history"]):
            assert row["toy"] == h0["loss"] and row["smalltoy"] == h1["loss"]
            assert row["loss"] == pytest.approx(h0["loss"] + 0.5 * h1["loss"], rel=1e-6)
        s = rep["settings"]
        assert s["surrogate"]["family"] == "ensemble" and len(s["surrogate"]["members"]) == 3
        assert set(s["losses"]) == {"toy", "smalltoy"} and s["loss_scale"] == {"toy": 1.0, "smalltoy": 1.0}
        assert max(r.linf) <= 16 + 1e-3

    def test_bad_ensembles(self, photo):
        toy = ToySurrogate()
        with pytest.raises(ValueError, match="at least one member"):
            Ensemble([])
        with pytest.raises(ValueError, match=">= 0"):
            Member(toy, OBJ_A, -1.0)
        with pytest.raises(ValueError, match="every ensemble weight is 0"):
            Ensemble([Member(toy, OBJ_A, 0.0)])
        with pytest.raises(ValueError, match="one objective per member"):
            protect(photo, Ensemble([toy]), OBJ_A, CFG, ProtectConfig(steps=1))
        with pytest.raises(ValueError, match="losses: give the objective"):
            protect(photo, toy, None, CFG, ProtectConfig(steps=1))
        with pytest.raises(ValueError, match="valid indices are 0-3"):  # SmallToy has 4 blocks
            protect(photo, Ensemble([Member(toy, OBJ_A), Member(SmallToy(), IRALoss(blocks=(5,)))]), None, CFG,
                    ProtectConfig(steps=1))
        assert parse_weights("1, 0.5", 2) == (1.0, 0.5) and parse_weights("", 3) == (1.0, 1.0, 1.0)
        for text, match in (("1", "1 weight"), ("a,b", "cannot read"), ("1,-2", ">= 0"), ("0,0", "every weight"),
                            ("1,nan", ">= 0")):
            with pytest.raises(ValueError, match=match):
                parse_weights(text, 2, name="--ensemble-weights")


def test_cli_demo_ensemble(tmp_path):
    from PIL import Image

    from anti_i2v.cli import main

    (tmp_path / "in").mkdir()
    Image.new("RGB", (40, 30), (120, 90, 60)).save(tmp_path / "in" / "a.png")
    out = tmp_path / "out"
    code = main(["protect", str(tmp_path / "in"), "--out", str(out), "--demo", "--surrogate", "cogvideox+svd",
                 "--ensemble-weights", "1,0.5", "--ensemble-balance", "--steps", "1", "--quiet"])
    assert code == 0
    rep = json.loads((out / "a.report.json").read_text())
    assert rep["settings"]["surrogate"]["balance"] is True
    assert [(m["family"], m["weight"]) for m in rep["ensemble"]["members"]] == [("cogvideox", 1.0), ("svd", 0.5)]
    assert rep["steps_done"] == 1 and set(rep["loss_history"][0]) == {"step", "loss", "cogvideox", "svd"}
    for argv in (["--surrogate", "cogvideox+nope"], ["--surrogate", "cogvideox+svd", "--ensemble-weights", "1"],
                 ["--surrogate", "cogvideox+svd", "--ira-blocks", "2"]):
        with pytest.raises(SystemExit) if "nope" in argv[1] else contextlib.nullcontext():
            assert main(["protect", str(tmp_path / "in"), "--out", str(out), "--demo", "--steps", "1", "--quiet",
                         "--overwrite", *argv]) == 2


def test_comfy_loads_each_member_for_its_turn_and_cancel_stops_between_members(monkeypatch):
    """nodes/runtime.member_loaded, the node's ``activate``, in-process with the real ComfyUI (``--cpu``): before
    each member's turn ComfyUI's ``load_models_gpu`` gets that member's patchers (prepare, then every iteration, in
    member order), and ComfyUI's interrupt flag stops the loop at the next member's turn, models unchanged."""
    import importlib.util

    from tests import comfy_models as cm

    cm.ensure_comfy_path()
    import comfy.model_management as mm

    spec = importlib.util.spec_from_file_location("anti_i2v_nodes_runtime", cm.REPO_ROOT / "nodes" / "runtime.py")
    runtime = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(runtime)  # by path: ComfyUI's own top-level ``nodes`` module shadows the pack's package

    a, b = runtime.manage_surrogate(ToySurrogate()), runtime.manage_surrogate(SmallToy())
    names = {id(a.comfy_patchers[0]): "toy", id(b.comfy_patchers[0]): "smalltoy"}
    loads = []
    real_load = mm.load_models_gpu

    resident = []  # which members ComfyUI holds loaded when a member's turn starts

    def recording_load(patchers, *args, **kw):
        loads.append([names.get(id(p), "other") for p in patchers])
        resident.append(sorted(names[id(m.model)] for m in mm.current_loaded_models if id(m.model) in names))
        return real_load(patchers, *args, **kw)

    monkeypatch.setattr(mm, "load_models_gpu", recording_load)
    ens = Ensemble([Member(a, OBJ_A), Member(b, OBJ_B)], activate=runtime.member_loaded, device="cpu")
    before = [_state(a), _state(b)]
    photo = torch.rand(1, 3, 20, 28, generator=torch.Generator().manual_seed(0))
    r = protect(photo, ens, None, CFG, ProtectConfig(steps=2))
    assert loads == [["toy"], ["smalltoy"]] * 3 and len(r.history) == 2

    loads.clear()
    try:
        with pytest.raises(mm.InterruptProcessingException):
            # Cancel pressed while iteration 1 runs: the next member's turn raises ComfyUI's interrupt
            protect(photo, ens, None, CFG, ProtectConfig(steps=5),
                    callback=lambda p: mm.interrupt_current_processing(True))
    finally:
        mm.interrupt_current_processing(False)
    assert loads == [["toy"], ["smalltoy"]] * 2  # prepare and iteration 1; nothing after the flag was set
    assert _same_state(before[0], _state(a)) and _same_state(before[1], _state(b))
    # without offload both members stay loaded once loaded; with it (the node's default) a member's models are
    # unloaded after its turn, so no other member is resident when a turn starts
    assert resident[-1] == ["smalltoy", "toy"]
    import functools

    assert runtime.unload_patchers(a.comfy_patchers + b.comfy_patchers) == 2
    resident.clear()
    offloading = Ensemble([Member(a, OBJ_A), Member(b, OBJ_B)], device="cpu",
                          activate=functools.partial(runtime.member_loaded, offload=True))
    protect(photo, offloading, None, CFG, ProtectConfig(steps=2))
    assert resident == [[]] * 6
    assert not any(id(m.model) in names for m in mm.current_loaded_models)
    assert _same_state(before[0], _state(a)) and _same_state(before[1], _state(b))
