"""Every defense of the field in the one protect loop, each as its authors defined it.

One module per method (its paper's defaults and equations in the docstring): :mod:`.antii2v` (the default),
:mod:`.advdm`, :mod:`.mist`, :mod:`.sds`, :mod:`.photoguard`, :mod:`.vgmshield`, :mod:`.i2vguard`; shared parts in
:mod:`.base`. Any method runs in either perturbation space (``space="rgb"``: plain L-inf PGD as the baselines'
papers; ``space="dsp"``: Anti-I2V's Dual-Space Perturbation); each defaults to its paper's.

Example:
    >>> from anti_i2v.methods import run_method
    >>> result = run_method("mist", photo, surrogate, steps=10)       # doctest: +SKIP
    >>> result.settings["method"], result.settings["space"]            # doctest: +SKIP
    ('mist', 'rgb')
"""

from __future__ import annotations

from . import advdm, antii2v, i2vguard, mist, photoguard, sds, vgmshield
from .base import Method, predict_x0, run_method

__all__ = ["METHOD_NAMES", "Method", "get_method", "run_method", "predict_x0", "METHODS", "loss_term"]

METHOD_NAMES: tuple[str, ...] = ("anti-i2v", "advdm", "mist", "sds", "photoguard", "vgmshield", "i2vguard")

METHODS: dict[str, Method] = {m.METHOD.name: m.METHOD for m in (antii2v, advdm, mist, sds, photoguard, vgmshield,
                                                                 i2vguard)}
assert tuple(METHODS) == METHOD_NAMES


def get_method(name: str) -> Method:
    """The :class:`Method` record of ``name``; ValueError naming the allowed names otherwise."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}: choose one of {', '.join(METHOD_NAMES)}")
    return METHODS[name]


#: single loss terms a graph can chain (the Baseline Loss node's choices), beside IRA and IRC
TERM_NAMES: tuple[str, ...] = (
    "advdm", "photoguard", "mist_textural", "sds-", "sds+", "vgmshield_undirected", "vgmshield_directed",
    "i2vguard_spatial", "i2vguard_temporal", "i2vguard_diffusion", "image_distance",
)


def loss_term(name: str, weight: float = 1.0):
    """One loss term by name (``TERM_NAMES``) with a weight, for composing objectives by hand (the nodes)."""
    from ..losses import DiffusionLoss, EncoderLoss

    makers = {
        "advdm": lambda: DiffusionLoss(weight=weight),
        "photoguard": lambda: EncoderLoss(weight=weight),
        "mist_textural": lambda: mist.MistTexturalLoss(weight=weight),
        "sds-": lambda: sds.SDSLoss(mode="-", weight=weight),
        "sds+": lambda: sds.SDSLoss(mode="+", weight=weight),
        "vgmshield_undirected": lambda: vgmshield.VGMShieldLoss(mode="undirected", weight=weight),
        "vgmshield_directed": lambda: vgmshield.VGMShieldLoss(mode="directed", weight=weight),
        "i2vguard_spatial": lambda: i2vguard.I2VGuardSpatialLoss(weight=weight),
        "i2vguard_temporal": lambda: i2vguard.I2VGuardTemporalLoss(weight=weight),
        "i2vguard_diffusion": lambda: i2vguard.I2VGuardDiffusionLoss(weight=weight),
        "image_distance": lambda: i2vguard.ImageDistanceLoss(weight=weight),
    }
    if name not in makers:
        raise ValueError(f"unknown loss term {name!r}: choose one of {', '.join(TERM_NAMES)}")
    return makers[name]()
