"""Loss terms of the protect objective (all minimised), composable by addition.

* :class:`IRALoss` - Internal Representation Attack (Anti-I2V Sec. 3.2): layer-wise squared L2 between the
  features of the perturbed image and of an unrelated target image, on denoiser blocks and VAE-encoder layers.
* :class:`IRCLoss` - Internal Representation Collapse (Sec. 3.3): squared L2 between the output of a deep
  block ``j`` and a shallow block ``i`` for the perturbed image; deep semantics collapse onto shallow structure.
* :class:`DiffusionLoss` - the AdvDM baseline: the negated denoising loss (maximises the model's error).
* :class:`EncoderLoss` - the PhotoGuard encoder baseline: VAE latent of the perturbed image pulled to the
  target's latent.

Every term says which features it needs from the adversarial pass and from the target pass
(:class:`~anti_i2v.surrogates.base.FeatureRequest`); the loop runs each pass once for all terms.

Layers may be left to the model: ``IRALoss(blocks="auto", vae_layers="auto")`` and ``IRCLoss(pairs="auto")``
take the loaded surrogate's recommended layers (its :meth:`~anti_i2v.surrogates.base.Surrogate.default_objective`:
CogVideoX-5B IRA 27 + IRC 3 -> 27, Wan 2.1 14B 26 and 3 -> 26, SVD the middle block and a mirror pair).
:func:`resolve_objective` fills them in; :func:`anti_i2v.protect.protect` calls it, so the CLI, Python code and
the ComfyUI nodes share one resolution, and the report lists the resolved layers.
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import torch
from torch import Tensor

from .surrogates.base import FeatureRequest, Features

__all__ = [
    "LossTerm",
    "IRALoss",
    "IRCLoss",
    "DiffusionLoss",
    "EncoderLoss",
    "Objective",
    "MAX_INDEX",
    "AUTO",
    "parse_indices",
    "parse_pairs",
    "parse_layer_spec",
    "parse_pair_spec",
    "resolve_objective",
]

#: the value of a layer field that takes the surrogate's recommended layers (see :func:`resolve_objective`)
AUTO = "auto"


def _is_auto(value) -> bool:
    return isinstance(value, str) and value.strip().lower() == AUTO


def _unresolved(term: str, what: str) -> ValueError:
    return ValueError(f"{term}: {what} is 'auto'; resolve it against the surrogate first "
                      "(anti_i2v.losses.resolve_objective, which protect() calls)")


def _msq(a: Tensor, b: Tensor) -> Tensor:
    """Mean squared difference in float32 (the per-layer squared L2 normalised by size)."""
    return (a.float() - b.float()).pow(2).mean()


def _check_weight(weight: float) -> float:
    w = float(weight)
    if not math.isfinite(w):
        raise ValueError(f"loss weight must be a finite number, got {weight}")
    return w


class LossTerm(abc.ABC):
    """One weighted term of the objective."""

    name: str = "term"
    weight: float = 1.0

    @abc.abstractmethod
    def request(self) -> FeatureRequest:
        """Features this term reads from the adversarial pass."""

    def target_request(self) -> FeatureRequest:
        """Features this term reads from the target pass (empty: no target pass needed)."""
        return FeatureRequest()

    def clean_request(self) -> FeatureRequest:
        """Features this term reads from the clean photo under the iteration's z_t (no gradient; empty: none).

        Used by terms that push the protected photo away from the clean one (VGMShield undirected, I2VGuard's
        temporal attack)."""
        return FeatureRequest()

    def prepare(self, surrogate, *, photo: Tensor, target: Tensor | None):
        """Per-run state computed once before the first iteration (no gradient), or None.

        ``photo``: the clean photo batch at the working size; ``target``: the target image batch at the working
        size (None when no term reads a target). E.g. I2VGuard's clean generation, made once per photo."""
        return None

    @abc.abstractmethod
    def value(self, adv: Features, target: Features | None) -> Tensor:
        """The unweighted scalar value."""

    def evaluate_term(self, adv: Features, target: Features | None, clean: Features | None, state) -> Tensor:
        """The unweighted value given every pass of the iteration; terms that read the clean pass or per-run state
        override this (the default is :meth:`value`)."""
        return self.value(adv, target)

    def describe(self) -> dict:
        return {"name": self.name, "weight": self.weight}

    def __add__(self, other: "LossTerm | Objective") -> "Objective":
        return Objective((self,)) + other


@dataclass(frozen=True)
class IRALoss(LossTerm):
    """Internal Representation Attack: sum over layers of mean ||f(x_adv) - f(x_target)||^2.

    Args:
        blocks: denoiser block indices, or ``"auto"``: the surrogate's recommended blocks.
        vae_layers: VAE-encoder layer indices, or ``"auto"``: the surrogate's recommended layers.
        weight: multiplier of the term.
        auto: set by :func:`resolve_objective`: which fields were ``"auto"`` (shown in reports).
    """

    blocks: tuple[int, ...] | str = ()
    vae_layers: tuple[int, ...] | str = ()
    weight: float = 1.0
    name: str = "ira"
    auto: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for f in ("blocks", "vae_layers"):
            v = getattr(self, f)
            object.__setattr__(self, f, AUTO if _is_auto(v) else tuple(sorted(set(int(i) for i in v))))
        object.__setattr__(self, "weight", _check_weight(self.weight))
        object.__setattr__(self, "auto", tuple(self.auto))
        if not self.blocks and not self.vae_layers:
            raise ValueError("IRALoss needs at least one denoiser block or VAE-encoder layer")

    @property
    def unresolved(self) -> bool:
        """Whether a layer field is still ``"auto"``."""
        return self.blocks == AUTO or self.vae_layers == AUTO

    def request(self) -> FeatureRequest:
        if self.unresolved:
            raise _unresolved("IRALoss", "blocks" if self.blocks == AUTO else "vae_layers")
        return FeatureRequest(blocks=frozenset(self.blocks), vae_layers=frozenset(self.vae_layers))

    def target_request(self) -> FeatureRequest:
        return self.request()

    def value(self, adv: Features, target: Features | None) -> Tensor:
        if target is None:
            raise ValueError("IRALoss needs the target pass (a target image)")
        parts = [_msq(adv.blocks[i], target.blocks[i]) for i in self.blocks]
        parts += [_msq(adv.vae[i], target.vae[i]) for i in self.vae_layers]
        return torch.stack(parts).sum()

    def describe(self) -> dict:
        d = {"name": self.name, "weight": self.weight,
             "blocks": self.blocks if self.blocks == AUTO else list(self.blocks),
             "vae_layers": self.vae_layers if self.vae_layers == AUTO else list(self.vae_layers)}
        if self.auto:
            d["auto"] = list(self.auto)
        return d


@dataclass(frozen=True)
class IRCLoss(LossTerm):
    """Internal Representation Collapse: sum over pairs (i, j) of mean ||f_j(x_adv) - f_i(x_adv)||^2.

    Args:
        pairs: (shallow i, deep j) block index pairs; the two blocks must output features of one shape. Or
            ``"auto"``: the surrogate's recommended pair.
        weight: multiplier of the term.
        detach_shallow: treat the shallow block as a fixed target (gradient only through block j).
        auto: set by :func:`resolve_objective`: ``("pairs",)`` when the pairs were ``"auto"``.
    """

    pairs: tuple[tuple[int, int], ...] | str = ((3, 27),)
    weight: float = 1.0
    detach_shallow: bool = False
    name: str = "irc"
    auto: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "auto", tuple(self.auto))
        if _is_auto(self.pairs):
            object.__setattr__(self, "pairs", AUTO)
            object.__setattr__(self, "weight", _check_weight(self.weight))
            return
        pairs = tuple((int(i), int(j)) for i, j in self.pairs)
        if not pairs:
            raise ValueError("IRCLoss needs at least one (shallow, deep) block pair")
        for i, j in pairs:
            if i == j:
                raise ValueError(f"IRCLoss pair ({i}, {j}) uses the same block twice")
        object.__setattr__(self, "pairs", pairs)
        object.__setattr__(self, "weight", _check_weight(self.weight))

    @property
    def unresolved(self) -> bool:
        """Whether the pairs are still ``"auto"``."""
        return self.pairs == AUTO

    def request(self) -> FeatureRequest:
        if self.unresolved:
            raise _unresolved("IRCLoss", "pairs")
        return FeatureRequest(blocks=frozenset(b for p in self.pairs for b in p))

    def value(self, adv: Features, target: Features | None) -> Tensor:
        parts = []
        for i, j in self.pairs:
            fi, fj = adv.blocks[i], adv.blocks[j]
            if fi.shape != fj.shape:
                raise ValueError(
                    f"IRCLoss pair ({i}, {j}): block {i} outputs {tuple(fi.shape)} but block {j} outputs "
                    f"{tuple(fj.shape)}; pick two blocks with the same feature shape"
                )
            parts.append(_msq(fj, fi.detach() if self.detach_shallow else fi))
        return torch.stack(parts).sum()

    def describe(self) -> dict:
        d = {"name": self.name, "weight": self.weight,
             "pairs": self.pairs if self.pairs == AUTO else [list(p) for p in self.pairs],
             "detach_shallow": self.detach_shallow}
        if self.auto:
            d["auto"] = list(self.auto)
        return d


@dataclass(frozen=True)
class DiffusionLoss(LossTerm):
    """AdvDM: minus the denoising loss ||model(x_t) - target||^2, so minimising it maximises the error."""

    weight: float = 1.0
    name: str = "advdm"

    def __post_init__(self) -> None:
        object.__setattr__(self, "weight", _check_weight(self.weight))

    def request(self) -> FeatureRequest:
        # AdvDM's own definition: the perturbed image's denoising loss, z_t built from the perturbed image
        return FeatureRequest(need_output=True, own_latent=True)

    def value(self, adv: Features, target: Features | None) -> Tensor:
        assert adv.output is not None and adv.target is not None
        return -_msq(adv.output, adv.target)


@dataclass(frozen=True)
class EncoderLoss(LossTerm):
    """PhotoGuard encoder attack: mean ||E(x_adv) - E(x_target)||^2 on the image latent."""

    weight: float = 1.0
    name: str = "photoguard"

    def __post_init__(self) -> None:
        object.__setattr__(self, "weight", _check_weight(self.weight))

    def request(self) -> FeatureRequest:
        return FeatureRequest(need_latent=True)

    def target_request(self) -> FeatureRequest:
        return FeatureRequest(need_latent=True)

    def value(self, adv: Features, target: Features | None) -> Tensor:
        if target is None or target.latent is None or adv.latent is None:
            raise ValueError(f"{type(self).__name__} needs the target pass (a target image)")
        return _msq(adv.latent, target.latent)


@dataclass(frozen=True)
class Objective:
    """A sum of weighted loss terms; ``a + b`` chains terms (as the ComfyUI loss nodes do).

    ``notes`` are human-readable remarks that travel into every report (e.g. a default term that could not
    apply to this model and was left out): nothing about an objective is dropped silently.
    """

    terms: tuple[LossTerm, ...] = field(default_factory=tuple)
    notes: tuple[str, ...] = field(default_factory=tuple)
    #: the defense this objective implements (``anti_i2v.methods.METHOD_NAMES``), None when composed by hand
    method: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "terms", tuple(self.terms))
        object.__setattr__(self, "notes", tuple(self.notes))

    def __add__(self, other: "LossTerm | Objective") -> "Objective":
        more = other.terms if isinstance(other, Objective) else (other,)
        notes = self.notes + (other.notes if isinstance(other, Objective) else ())
        if not self.terms:
            method = other.method if isinstance(other, Objective) else None
        elif isinstance(other, Objective) and (not other.terms or other.method == self.method):
            method = self.method
        else:
            method = None  # a defense plus other terms is a custom objective
        return Objective(self.terms + tuple(more), notes, method)

    def method_name(self) -> str:
        """The defense this objective is (for reports): :attr:`method`, else read from its terms (IRA/IRC alone:
        ``anti-i2v``; one baseline term alone: its name), else ``custom``."""
        if self.method:
            return self.method
        names = {t.name for t in self.terms}
        if names and names <= {"ira", "irc"}:
            return "anti-i2v"
        if len(names) == 1 and names <= {"advdm", "photoguard", "sds"}:
            return names.pop()
        return "custom"

    def clean_request(self) -> FeatureRequest:
        r = FeatureRequest()
        for t in self.terms:
            r = r.merge(t.clean_request())
        return r

    def __len__(self) -> int:
        return len(self.terms)

    def names(self) -> list[str]:
        """Unique names for the history: repeated names get a suffix (ira, ira_2, ...)."""
        seen: dict[str, int] = {}
        out = []
        for t in self.terms:
            n = seen.get(t.name, 0) + 1
            seen[t.name] = n
            out.append(t.name if n == 1 else f"{t.name}_{n}")
        return out

    def request(self) -> FeatureRequest:
        r = FeatureRequest()
        for t in self.terms:
            r = r.merge(t.request())
        return r

    def target_request(self) -> FeatureRequest:
        r = FeatureRequest()
        for t in self.terms:
            r = r.merge(t.target_request())
        return r

    def evaluate(
        self, adv: Features | None, target: Features | None, *, own: Features | None = None,
        clean: Features | None = None, states: dict | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The weighted sum (float32) and each term's unweighted value, by :meth:`names`.

        ``adv``: the adversarial pass on the shared z_t; ``own``: the pass on the image's own z_t, for terms
        whose request sets ``own_latent`` (AdvDM); ``adv`` is used for them when ``own`` is None. ``clean``: the
        clean photo's pass under the same z_t (:meth:`LossTerm.clean_request`); ``states``: per-run state by term
        name (:meth:`LossTerm.prepare`).
        """
        if not self.terms:
            raise ValueError("the objective has no loss terms")
        values = {}
        for n, t in zip(self.names(), self.terms):
            feats = own if (own is not None and t.request().own_latent) else adv
            if feats is None:
                raise ValueError(f"loss term {n!r} has no features to read")
            values[n] = t.evaluate_term(feats, target, clean, (states or {}).get(n)).float()
        total = sum(t.weight * v for t, v in zip(self.terms, values.values()))
        return total, values

    def describe(self) -> list[dict]:
        return [t.describe() for t in self.terms]


#: the largest layer or block index the parsers accept: no supported model has more blocks or layers than this, and
#: the cap keeps a typo such as ``0-99999999`` from expanding into a huge list before any model check
MAX_INDEX = 4096


def _shown(text: str, limit: int = 80) -> str:
    """``repr(text)``, shortened for error messages."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f"... ({len(text)} characters)"


def _check_index(i: int, *, name: str, text: str, max_index: int) -> int:
    if i < 0 or i > max_index:
        raise ValueError(f"{name}: index {i} in {_shown(text)} is out of range; allowed indices are 0-{max_index}")
    return i


def parse_indices(text: str | int | Iterable[int], *, name: str = "indices",
                  max_index: int = MAX_INDEX) -> tuple[int, ...]:
    """Parse layer indices typed as text: ``"3"``, ``"0-27"``, ``"3,10,27"``, ``"0-3, 8"``.

    Raises ValueError naming ``name`` on malformed text, or on an index (or range end) below 0 or above
    ``max_index`` (checked before a range is expanded, so a huge range costs nothing). Range checks against a
    model happen later.
    """
    if isinstance(text, int):
        return (_check_index(text, name=name, text=str(text), max_index=max_index),)
    if not isinstance(text, str):
        vals = [int(i) for i in text]
        for i in vals:
            _check_index(i, name=name, text=str(vals), max_index=max_index)
        return tuple(vals)
    out: set[int] = set()
    s = text.strip()
    if not s:
        return ()
    for part in s.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if "-" in part[1:]:
                a, b = part.split("-", 1) if not part.startswith("-") else (part, "")
                lo, hi = int(a), int(b)
                if hi < lo:
                    raise ValueError
                is_range = True
            else:
                lo = hi = int(part)
                is_range = False
        except ValueError:
            raise ValueError(
                f"{name}: cannot read {_shown(part)} in {_shown(text)}; write indices like '3', '0-27' or '3,10,27'"
            ) from None
        if lo < 0:
            raise ValueError(f"{name}: indices must be >= 0, got {_shown(text)}")
        _check_index(hi, name=name, text=text, max_index=max_index)
        if is_range:
            out.update(range(lo, hi + 1))
        else:
            out.add(lo)
    return tuple(sorted(out))


def parse_pairs(text: str | Sequence[Sequence[int]], *, name: str = "pairs",
                max_index: int = MAX_INDEX) -> tuple[tuple[int, int], ...]:
    """Parse IRC block pairs typed as text: ``"3:27"`` or ``"3:27, 3:30"`` (shallow:deep).

    Raises ValueError naming ``name`` on malformed text or on a block index below 0 or above ``max_index``.
    """
    if not isinstance(text, str):
        pairs = [(int(a), int(b)) for a, b in text]
        for pair in pairs:
            for i in pair:
                _check_index(i, name=name, text=str(pairs), max_index=max_index)
        return tuple(pairs)
    pairs = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            a, b = part.split(":")
            pair = (int(a), int(b))
        except ValueError:
            raise ValueError(
                f"{name}: cannot read {_shown(part)} in {_shown(text)}; write pairs as 'shallow:deep', "
                "e.g. '3:27' or '3:27,5:30'"
            ) from None
        for i in pair:
            _check_index(i, name=name, text=text, max_index=max_index)
        pairs.append(pair)
    if not pairs:
        raise ValueError(f"{name}: no block pair given; write e.g. '3:27'")
    return tuple(pairs)


def parse_layer_spec(text: str | int | Iterable[int], *, name: str = "indices",
                     max_index: int = MAX_INDEX) -> tuple[int, ...] | str:
    """:func:`parse_indices`, or :data:`AUTO` for ``"auto"`` (the surrogate's recommended layers)."""
    return AUTO if _is_auto(text) else parse_indices(text, name=name, max_index=max_index)


def parse_pair_spec(text: str | Sequence[Sequence[int]], *, name: str = "pairs",
                    max_index: int = MAX_INDEX) -> tuple[tuple[int, int], ...] | str:
    """:func:`parse_pairs`, or :data:`AUTO` for ``"auto"`` (the surrogate's recommended pair)."""
    return AUTO if _is_auto(text) else parse_pairs(text, name=name, max_index=max_index)


def _fmt(v) -> str:
    return ",".join(str(i) for i in v) if v else "none"


def resolve_objective(objective: "Objective | LossTerm | Sequence[LossTerm]", surrogate) -> "Objective":
    """``objective`` with every ``"auto"`` layer field replaced by the surrogate's recommended layers.

    The recommendation is ``surrogate.default_objective()`` (every family has one): IRA's ``blocks`` /
    ``vae_layers`` come from its IRA term, IRC's ``pairs`` from its IRC term. A resolved term records which fields
    were ``"auto"`` (``describe()["auto"]``) and the objective gains a note per term naming the resolved layers,
    so reports show them. An ``"auto"`` field the model has no recommendation for (e.g. no IRC pair of equal shape
    in a U-Net) is left out with the default objective's note; a term left with no layer at all is dropped with a
    note. An objective without ``"auto"`` is returned unchanged.

    Raises:
        ValueError: nothing is left to optimise after resolution.
    """
    if isinstance(objective, LossTerm):
        objective = Objective((objective,))
    elif not isinstance(objective, Objective):
        objective = Objective(tuple(objective))
    if not any(getattr(t, "unresolved", False) for t in objective.terms):
        return objective
    default = surrogate.default_objective()
    d_ira = next((t for t in default.terms if isinstance(t, IRALoss)), None)
    d_irc = next((t for t in default.terms if isinstance(t, IRCLoss)), None)
    family = getattr(surrogate, "family", type(surrogate).__name__)
    terms: list[LossTerm] = []
    notes = list(objective.notes)
    for t in objective.terms:
        if isinstance(t, IRALoss) and t.unresolved:
            auto = tuple(f for f in ("blocks", "vae_layers") if getattr(t, f) == AUTO)
            blocks = (d_ira.blocks if d_ira else ()) if t.blocks == AUTO else t.blocks
            vae = (d_ira.vae_layers if d_ira else ()) if t.vae_layers == AUTO else t.vae_layers
            if not blocks and not vae:
                notes.append(f"IRA left out: {family} recommends no block or VAE-encoder layer for 'auto'")
                continue
            terms.append(IRALoss(blocks=blocks, vae_layers=vae, weight=t.weight, name=t.name, auto=auto))
            notes.append(f"IRA 'auto' on {family}: blocks {_fmt(blocks)}, VAE-encoder layers {_fmt(vae)} "
                         f"(the model's recommended layers)")
        elif isinstance(t, IRCLoss) and t.unresolved:
            if d_irc is None:
                notes += [n for n in default.notes if n not in notes] or [
                    f"IRC left out: {family} recommends no shallow/deep block pair for 'auto'"]
                continue
            terms.append(IRCLoss(pairs=d_irc.pairs, weight=t.weight, detach_shallow=t.detach_shallow, name=t.name,
                                 auto=("pairs",)))
            pairs = ", ".join(f"{i}->{j}" for i, j in d_irc.pairs)
            notes.append(f"IRC 'auto' on {family}: pairs {pairs} (the model's recommended pair)")
        else:
            terms.append(t)
    if not terms:
        raise ValueError(f"the objective is empty after resolving 'auto' layers on {family}: "
                         + "; ".join(notes[len(objective.notes):]))
    return Objective(tuple(terms), tuple(notes), objective.method)
