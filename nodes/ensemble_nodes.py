"""AntiI2V_EnsembleSurrogate: protect against several I2V models at once (an ensemble surrogate).

The node only collects its members (2-4 surrogates, a weight each, optional per-member loss chains) into a
:class:`nodes.types.EnsembleSpec`, which travels in the ``ANTI_I2V_SURROGATE`` socket to the protect node. There,
:func:`library_ensemble` builds the library's :class:`anti_i2v.surrogates.ensemble.Ensemble` with an ``activate``
hook (:func:`nodes.runtime.member_loaded`) that asks ComfyUI's model management to load a member's models right
before that member runs in each iteration and, with ``offload_between_members`` (default), to unload them after its
turn, so the loop needs the memory of the largest member, not of all of them. Off, ComfyUI keeps members loaded
while their weights fit (faster; its room check does not count the loop's activations).
"""

from __future__ import annotations

import functools

from anti_i2v.surrogates.base import Surrogate
from anti_i2v.surrogates.ensemble import Ensemble, Member

from . import runtime
from .comfy import CATEGORY, LossType, SurrogateType, io
from .types import EnsembleSpec, LossChain

__all__ = ["EnsembleSurrogate", "library_ensemble"]

NODE_ID = "AntiI2V_EnsembleSurrogate"
MAX_MEMBERS = 4


def _member_inputs(k: int, optional: bool) -> list:
    return [
        SurrogateType.Input(f"surrogate_{k}", optional=optional,
                            tooltip=f"Member {k}: an I2V surrogate from Load I2V Surrogate"
                                    + (" (optional)." if optional else ".")),
        io.Float.Input(f"weight_{k}", default=1.0, min=0.0, max=1000.0, step=0.05, optional=optional,
                       tooltip=f"Weight of member {k}'s objective in the sum (0 leaves the member out)."),
        LossType.Input(f"losses_{k}", optional=True,
                       tooltip=f"Optional loss chain for member {k} (its own layers and target image); when empty "
                               "the member uses the protect node's losses."),
    ]


class EnsembleSurrogate(io.ComfyNode):
    """Combine 2-4 surrogates into one ensemble surrogate for the protect node."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        inputs = []
        for k in range(1, MAX_MEMBERS + 1):
            inputs += _member_inputs(k, optional=k > 2)
        inputs.append(io.Boolean.Input(
            "balance", default=False, optional=True,
            tooltip="Scale each member's gradient to a peak of 1 before the weighted sum, so each weight is that "
                    "member's share of the step whatever the scale of its loss (off: the plain weighted sum)."))
        inputs.append(io.Boolean.Input(
            "offload_between_members", default=True, optional=True,
            tooltip="Unload each member's models after its turn, so the GPU holds one member's weights at a time "
                    "next to the loop's activations (slower: weights move every iteration). Off: ComfyUI keeps "
                    "members loaded while their weights fit, which can run out of memory in the backward pass."))
        return io.Schema(
            node_id=NODE_ID,
            display_name="Ensemble Surrogate (Anti-I2V)",
            category=CATEGORY,
            description=(
                "Protects against several image-to-video models at once: the protect node minimises the weighted "
                "sum of each member's objective, every member at its own working size. Members run one after "
                "another in each iteration and ComfyUI loads each member's models only for its turn (offloading "
                "the others when memory is short), so memory stays that of the largest member."
            ),
            inputs=inputs,
            outputs=[SurrogateType.Output(display_name="surrogate",
                                          tooltip="The ensemble, for the protect node's surrogate input.")],
        )

    @classmethod
    def execute(cls, surrogate_1, weight_1: float, surrogate_2, weight_2: float, surrogate_3=None,
                weight_3: float = 1.0, surrogate_4=None, weight_4: float = 1.0, losses_1=None, losses_2=None,
                losses_3=None, losses_4=None, balance: bool = False,
                offload_between_members: bool = True) -> io.NodeOutput:
        given = [(1, surrogate_1, weight_1, losses_1), (2, surrogate_2, weight_2, losses_2),
                 (3, surrogate_3, weight_3, losses_3), (4, surrogate_4, weight_4, losses_4)]
        members = []
        for k, s, w, chain in given:
            if s is None:
                if chain is not None:
                    raise ValueError(f"{NODE_ID}: losses_{k} is connected but surrogate_{k} is not")
                continue
            if isinstance(s, EnsembleSpec):
                raise ValueError(f"{NODE_ID}: surrogate_{k} is already an ensemble; connect the single surrogates "
                                 "of both ensembles to one Ensemble Surrogate node instead")
            if not isinstance(s, Surrogate):
                raise ValueError(f"{NODE_ID}: surrogate_{k} must come from the Load I2V Surrogate node, "
                                 f"got {type(s).__name__}")
            if chain is not None and not isinstance(chain, LossChain):
                raise ValueError(f"{NODE_ID}: losses_{k} must come from an Anti-I2V loss node, "
                                 f"got {type(chain).__name__}")
            w = float(w)
            if not w >= 0 or w == float("inf"):
                raise ValueError(f"{NODE_ID}: weight_{k} must be a finite number >= 0, got {w}")
            members.append((s, w, chain))
        if all(w == 0 for _, w, _ in members):
            raise ValueError(f"{NODE_ID}: every weight is 0; give at least one member a weight > 0")
        return io.NodeOutput(EnsembleSpec(tuple(members), balance=bool(balance),
                                          offload=bool(offload_between_members)))


def library_ensemble(spec: EnsembleSpec, losses: LossChain, *, node: str) -> Ensemble:
    """The library ensemble of ``spec`` for one protect run (call inside :func:`runtime.grad_enabled`).

    A member without its own loss chain takes ``losses``' objective; a member chain's target image (if any)
    replaces the protect node's target for that member. ``activate`` loads each member's models through ComfyUI
    for its turn and checks ComfyUI's interrupt flag between members.
    """
    import comfy.model_management as mm

    members = []
    for k, (s, w, chain) in enumerate(spec.members, start=1):
        own = chain if chain is not None else losses
        target = None
        if chain is not None and chain.target is not None:
            target = runtime.to_library_image(chain.target, node=node, arg=f"the target image of member {k}")
        members.append(Member(s, own.objective, w, target=target))
    activate = functools.partial(runtime.member_loaded, offload=spec.offload)
    return Ensemble(members, activate=activate, device=mm.get_torch_device(), balance=spec.balance)
