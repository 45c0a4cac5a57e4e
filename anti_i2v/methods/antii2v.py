"""Anti-I2V (Vu, Nguyen, Tran, Tran, CVPR 2026): the pack's own defense, the default.

Objective (paper Sec. 3.2-3.3): IRA (features of the protected photo pulled to an unrelated target's, on denoiser
blocks and VAE-encoder layers, one shared z_t) plus IRC (a deep block pulled to a shallow one), over the Dual-Space
Perturbation (Sec. 3.1). Defaults: the pack's: ``dsp`` space, eps 8/255 of the [0, 1] range (the authors' code
budgets "16/255" on [-1, 1] images, the same change; the paper's 16/255 of [0, 1] is the ``high`` preset),
200 iterations (paper Alg. 1), step 1/255 with the gradient scaled to its peak (``normalized``; see
:func:`anti_i2v.dsp.step_params`). Layer choices: :meth:`Surrogate.default_objective` (CogVideoX-5B: IRC 3 -> 27,
IRA on block 27 and the last two VAE-encoder layers).

Options: ``ira_blocks``, ``vae_layers``, ``irc_pairs`` (text as the CLI takes them, or sequences).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..losses import IRALoss, IRCLoss, Objective, parse_indices, parse_pairs
from .base import Method, _unknown

__all__ = ["AntiI2V", "METHOD"]


@dataclass(frozen=True)
class AntiI2V(Method):
    def build(self, surrogate, **options) -> Objective:
        _unknown(self.name, options, ("ira_blocks", "vae_layers", "irc_pairs"))
        default = surrogate.default_objective()
        if not any(options.get(k) is not None for k in ("ira_blocks", "vae_layers", "irc_pairs")):
            return default
        d_ira = next((t for t in default.terms if isinstance(t, IRALoss)), None)
        blocks = (parse_indices(options["ira_blocks"], name="ira_blocks") if options.get("ira_blocks") is not None
                  else (d_ira.blocks if d_ira else ()))
        vae = (parse_indices(options["vae_layers"], name="vae_layers") if options.get("vae_layers") is not None
               else (d_ira.vae_layers if d_ira else ()))
        terms = [IRALoss(blocks=blocks, vae_layers=vae)] if (blocks or vae) else []
        if options.get("irc_pairs") is not None:
            terms.append(IRCLoss(pairs=parse_pairs(options["irc_pairs"], name="irc_pairs")))
        else:
            terms += [t for t in default.terms if isinstance(t, IRCLoss)]
        if not terms:
            raise ValueError("anti-i2v: the objective is empty: give ira_blocks, vae_layers or irc_pairs")
        return Objective(tuple(terms))


METHOD = AntiI2V(
    name="anti-i2v", title="Anti-I2V", paper="Vu, Nguyen, Tran, Tran. Anti-I2V: Safeguarding your photos from "
    "malicious image-to-video generation. CVPR 2026", space="dsp", eps=8.0, steps=200, step_size=1.0,
    optimizer="normalized",
    defaults="the pack's default preset: eps 8/255 of [0,1] (= the authors' '16/255' on [-1,1] images), 200 "
             "iterations (Alg. 1), normalized step 1/255",
)
