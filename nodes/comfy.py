"""The one module of the pack that imports ComfyUI's node API (``comfy_api.latest``).

It re-exports ``io``, ``ui`` and ``ComfyExtension`` for the node modules and defines the pack's custom
socket types (the node contract):

* ``ANTI_I2V_SURROGATE`` - an :class:`anti_i2v.surrogates.base.Surrogate`, or a :class:`nodes.types.EnsembleSpec`
  from the Ensemble Surrogate node (accepted by the protect node only);
* ``ANTI_I2V_DSP`` - an :class:`anti_i2v.dsp.DSPConfig`;
* ``ANTI_I2V_LOSS`` - a :class:`nodes.types.LossChain` (objective + optional target image).
"""

from __future__ import annotations

from comfy_api.latest import ComfyExtension, io, ui

__all__ = ["io", "ui", "ComfyExtension", "SurrogateType", "DSPType", "LossType", "CATEGORY"]

#: the "Add Node" menu category of every node of the pack
CATEGORY = "Anti-I2V"

SurrogateType = io.Custom("ANTI_I2V_SURROGATE")
DSPType = io.Custom("ANTI_I2V_DSP")
LossType = io.Custom("ANTI_I2V_LOSS")
