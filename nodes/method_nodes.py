"""AntiI2V_DefenseMethod: a whole defense (Anti-I2V or a baseline of the field) with its paper's defaults.

Outputs the perturbation settings (the paper's space and budget) and the loss chain (the paper's objective, built
for the connected surrogate by :meth:`anti_i2v.methods.Method.objective`); the chain also carries the paper's loop
settings, which Protect Image uses when its ``loop_from_method`` is on.
"""

from __future__ import annotations

import json

from anti_i2v.dsp import SPACES
from anti_i2v.methods import METHOD_NAMES, get_method
from anti_i2v.surrogates.base import Surrogate

from . import runtime
from .comfy import CATEGORY, DSPType, LossType, SurrogateType, io
from .types import LossChain

__all__ = ["DefenseMethod"]

NODE_ID = "AntiI2V_DefenseMethod"


class DefenseMethod(io.ComfyNode):
    """A defense as its authors defined it: perturbation + objective + loop settings of its paper."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=NODE_ID,
            display_name="Defense Method (Anti-I2V)",
            category=CATEGORY,
            description=(
                "A whole defense with its paper's defaults, to compare defenses on one surrogate: Anti-I2V (the "
                "default), AdvDM, Mist, SDS, PhotoGuard, VGMShield or I2VGuard. Outputs the perturbation (the "
                "paper's space and budget: the DSP for Anti-I2V, plain RGB PGD for the baselines, or the one you "
                "pick) and the loss chain; turn on Protect Image's 'loop_from_method' to use the paper's steps, "
                "step size, step rule and random start. 'defaults' shows the record (paper, budget, conversions)."
            ),
            inputs=[
                SurrogateType.Input("surrogate", tooltip="The I2V surrogate (the objective is built for it)."),
                io.Combo.Input("method", options=list(METHOD_NAMES), default="anti-i2v",
                               tooltip="The defense: anti-i2v (IRA + IRC over the DSP), advdm, mist, sds (SDS(-)), "
                                       "photoguard (encoder attack), vgmshield (undirected), i2vguard."),
                io.Combo.Input("space", options=["paper", *SPACES], default="paper",
                               tooltip="Perturbation space: 'paper' (the method's own: dsp for Anti-I2V, rgb for "
                                       "the baselines), or any space to run the method there."),
                io.Float.Input("eps", default=0.0, min=0.0, max=64.0, step=0.25,
                               tooltip="L-inf budget in 1/255 of the pixel range; 0 uses the paper's (e.g. 16 for "
                                       "Mist and SDS, 7.65 for PhotoGuard's 0.06 on [-1, 1] images)."),
                io.Image.Input("target_image", optional=True,
                               tooltip="Optional target image (PhotoGuard, Mist, I2VGuard, Anti-I2V's IRA); a fixed "
                                       "stripe pattern when empty."),
                LossType.Input("losses", optional=True,
                               tooltip="Optional loss chain to add this defense's terms to (the report then says "
                                       "'custom')."),
            ],
            outputs=[
                DSPType.Output(display_name="perturbation", tooltip="The paper's perturbation settings."),
                LossType.Output(display_name="losses", tooltip="The paper's objective as a loss chain."),
                io.String.Output(display_name="defaults", tooltip="JSON: the method's record (paper, defaults)."),
            ],
        )

    @classmethod
    def execute(cls, surrogate, method: str, space: str, eps: float, target_image=None,
                losses=None) -> io.NodeOutput:
        if not isinstance(surrogate, Surrogate):
            raise ValueError(f"{NODE_ID}: 'surrogate' must come from the Load I2V Surrogate node, "
                             f"got {type(surrogate).__name__}")
        if losses is not None and not isinstance(losses, LossChain):
            raise ValueError(f"{NODE_ID}: 'losses' must come from another Anti-I2V loss node, "
                             f"got {type(losses).__name__}")
        with runtime.node_errors(NODE_ID):
            m = get_method(method)
            if float(eps) < 0:
                raise ValueError(f"eps must be >= 0 (0 uses the paper's), got {eps}")
            objective = m.objective(surrogate)
            pert = m.perturbation(space=None if space == "paper" else space, eps=float(eps) or None)
            loop = {"steps": m.steps, "step_size": m.step_size, "optimizer": m.optimizer, "schedule": m.schedule,
                    "random_start": m.random_start}
            target = target_image.detach().clone() if target_image is not None else None
            chain = (LossChain.start(objective, target, loop) if losses is None
                     else losses.extend(objective, target, loop))
        return io.NodeOutput(pert, chain, json.dumps(m.describe(), indent=2))
