"""The run configuration: one typed record of how a localisation is made.

:class:`RunConfig` is the single source of the defaults and choice lists that :func:`lakn.localize`,
the ``lakn localize`` options and a run folder's ``config.json`` share. It validates itself (errors
name the field), converts to and from the JSON dict of ``config.json`` (keys it does not know are
kept in ``extra``, so folders of other versions still load) and lists the arguments in which two
runs differ (:meth:`RunConfig.diff`, used to refuse a resume with other arguments)::

    cfg = RunConfig(method="kn", steps=10)
    cfg.save("runs/x/config.json"); RunConfig.load("runs/x/config.json") == cfg
    cfg.diff(RunConfig(method="kn", steps=20))     # {"steps": (10, 20)}

``data_sha256`` (the SHA-256 of the facts file) is recorded but is not one of the differences that
refuse a resume: when the data file was edited, the facts whose records changed are recomputed
(each per-fact file carries its fact's hash and :meth:`RunConfig.record_sha256`).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

from ._io import write_json_atomic
from ._version import __version__

__all__ = [
    "RunConfig",
    "RunConfigError",
    "CHOICES",
    "METHOD_NAMES",
    "ATTRIBUTIONS",
    "IG_ATTRIBUTIONS",
    "EXACT_ATTRIBUTIONS",
    "VOLATILE",
    "RECOMPUTED",
    "positive_int",
]

CHOICES: dict[str, tuple[str, ...]] = {
    "method": ("matrice", "kn", "amig", "mean", "random"),
    "attribution": ("auto", "fast", "reference", "approx", "coarse-to-fine"),
    "specificity": ("auto", "raw", "specific", "causal"),
    "reference": ("others", "other_relations", "same_relation"),
    "query_weighting": ("uniform", "confidence", "entropy"),
    "language_weighting": ("uniform", "confidence"),
    "grid": ("right", "linspace"),
}
"""The allowed values of every choice, by argument name (the CLI's ``choices`` come from here)."""

METHOD_NAMES = CHOICES["method"]
ATTRIBUTIONS = CHOICES["attribution"]
IG_ATTRIBUTIONS = tuple(a for a in ATTRIBUTIONS if a != "coarse-to-fine")
"""What :func:`lakn.integrated_gradients` takes as ``attribution=`` (coarse-to-fine is its own function)."""
EXACT_ATTRIBUTIONS = ("auto", "fast", "reference")
"""Attributions that give the same numbers (up to float rounding): a resume may switch between them."""
VOLATILE = frozenset({"batch_size", "progress", "created", "device", "versions", "lakn_version"})
"""Keys that do not change results: a resumed run may differ in them."""
RECOMPUTED = frozenset({"data_sha256"})
"""Keys a resumed run may differ in because what depends on them is checked per fact and recomputed:
the data file's hash (each per-fact file carries the hash of its fact's record)."""
_NOT_PER_FACT = frozenset({"data", "data_sha256", "known", "fact_ids"})
"""Keys a per-fact file does not depend on (its own fact's record is hashed on its own)."""


class RunConfigError(ValueError):
    """A run folder holds a run made with other arguments; the message lists the differences."""


def _whole_number(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
    return value


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1."""
    return _whole_number(text, 1)


def non_negative_int(text: str) -> int:
    """argparse type: a whole number >= 0."""
    return _whole_number(text, 0)


def check_number(name: str, value: Any, low: float = 0.0, *, strict: bool = False) -> None:
    """A ValueError naming ``name`` unless ``value`` is a finite number (not a bool) >= ``low``
    (> with ``strict``): the one check of lakn's numeric settings."""
    try:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    except OverflowError:  # an int too large for a float
        ok = False
    if not (ok and (value > low if strict else value >= low)):
        raise ValueError(f"{name} must be a finite number {'>' if strict else '>='} {low:g}, got {value!r}")


def _number(text: str, low: float, strict: bool) -> float:
    """argparse type body: ``text`` as a finite float >= ``low`` (> with ``strict``)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(value) and (value > low if strict else value >= low)):
        raise argparse.ArgumentTypeError(f"must be a finite number {'>' if strict else '>='} {low:g}, got {text!r}")
    return value


def non_negative_float(text: str) -> float:
    """argparse type: a finite number >= 0."""
    return _number(text, 0.0, strict=False)


def above_one_float(text: str) -> float:
    """argparse type: a finite number > 1."""
    return _number(text, 1.0, strict=True)


def _option(default: Any, help: str, parse: Callable[[str], Any] | None = None) -> Any:
    """A field that is also a ``lakn localize`` option (``--field-name``) with this help."""
    return field(default=default, metadata={"help": help, "parse": parse})


@dataclass
class RunConfig:
    """Every argument of a localisation run, as written to ``DIR/config.json``.

    The first block is filled in by :func:`lakn.localize` from the model and the data; the fields
    with a help text are the user's choices (and ``lakn localize`` options of the same name).
    """

    lakn_version: str = __version__
    model: str = ""
    n_layers: int = 0
    d_mlp: int = 0
    data: str = ""
    data_sha256: str = ""
    known: str = ""
    fact_ids: list[str] = field(default_factory=list)
    languages: list[str] = field(default_factory=list)
    method: str = _option("matrice", "scoring method: MATRICE or a baseline")
    method_kwargs: dict[str, Any] = field(default_factory=dict)
    steps: int = _option(20, "integrated-gradient steps m", positive_int)
    max_queries: int | None = _option(None, "paraphrases per language (default all)", positive_int)
    first_token_only: bool = _option(False, "attribute the first answer token only")
    threshold: float = _option(0.2, "selection threshold t (share of the max)", float)
    top_k: int | None = _option(None, "cap LAKNs per fact", positive_int)
    specificity: str = _option("auto", "auto: fact-specific score when each fact has at least --min-reference "
                                       "reference facts; raw: plain LAA; specific: always; causal: first-order "
                                       "zeroing effects on the fact's queries against the damage to the reference "
                                       "facts' queries (docs/method.md 4.5)")
    reference: str = _option("others", "reference facts of the fact-specific score")
    min_reference: int = _option(5, "reference facts needed for specificity=auto to use the specific score", int)
    common_fraction: float | None = _option(None, "drop neurons selected for more than this share of the facts",
                                            float)
    causal_same_weight: float = _option(4.0, "specificity=causal: weight of the damage to reference facts of the "
                                              "same relation (lambda_same)", float)
    causal_other_weight: float = _option(1.0, "specificity=causal: weight of the damage to reference facts of "
                                              "other relations (lambda_other)", float)
    causal_top_k: int = _option(80, "specificity=causal: LAKNs per fact (at most; positive scores only)", positive_int)
    causal_competitors: int = _option(20, "specificity=causal: clean top tokens other than the answer that the "
                                          "contrast effect compares against", positive_int)
    seed: int = _option(0, "seed of the random control", int)
    attribution: str = _option("auto", "exact IG: fast single-position path where verified (auto, fast), or the "
                                       "reference loop; approx / coarse-to-fine: approximate screening")
    baseline: str = "zero"
    hook_point: str = "mlp.hook_post"
    batch_size: int | None = _option(None, "rows per forward/backward pass (chunk size; results do not depend on "
                                           "it; default: as many as fit about 1 GiB)", positive_int)
    versions: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    """Keys of a ``config.json`` this version does not know, kept so that nothing is lost."""

    def __post_init__(self) -> None:
        for name, allowed in CHOICES.items():
            if hasattr(self, name) and getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {getattr(self, name)!r}")
        for name in ("steps", "max_queries", "top_k", "batch_size", "causal_top_k", "causal_competitors"):
            value = getattr(self, name)
            if value is None and name not in ("steps", "causal_top_k", "causal_competitors"):
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be at least 1, got {value!r}")
        if not (isinstance(self.threshold, (int, float)) and 0.0 < float(self.threshold) <= 1.0):
            raise ValueError(f"threshold must be in (0, 1], got {self.threshold!r}")
        if isinstance(self.min_reference, bool) or not isinstance(self.min_reference, int) or self.min_reference < 0:
            raise ValueError(f"min_reference must be a whole number >= 0, got {self.min_reference!r}")
        cf = self.common_fraction
        if cf is not None and not (isinstance(cf, (int, float)) and math.isfinite(cf) and 0.0 <= cf <= 1.0):
            raise ValueError(f"common_fraction must be in [0, 1] or None, got {cf!r}")
        for name in ("causal_same_weight", "causal_other_weight"):
            check_number(name, getattr(self, name))
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be a whole number, got {self.seed!r}")
        if not isinstance(self.first_token_only, bool):
            raise ValueError(f"first_token_only must be True or False, got {self.first_token_only!r}")
        if not isinstance(self.method_kwargs, dict):
            raise ValueError(f"method_kwargs must be a dict, got {type(self.method_kwargs).__name__}")

    # --------------------------------------------------------------------- dict and file forms

    def to_dict(self) -> dict[str, Any]:
        """The JSON form of ``config.json`` (the keys in field order, then ``extra``)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        out["method_kwargs"] = dict(sorted(self.method_kwargs.items()))
        out.update(self.extra)
        return json.loads(json.dumps(out))  # plain JSON values: lists, not tuples

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunConfig":
        """Read a ``config.json`` dict (written by this or an earlier version); missing keys take the
        defaults, unknown keys go to ``extra``."""
        names = {f.name for f in fields(cls)} - {"extra"}
        known = {k: v for k, v in data.items() if k in names}
        for key in ("fact_ids", "languages"):
            if key in known:
                known[key] = list(known[key])
        return cls(**known, extra={k: v for k, v in data.items() if k not in names})

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, self.to_dict())
        return path

    @classmethod
    def load(cls, path: str | Path) -> "RunConfig":
        """Read a ``config.json``; a file that is not one is a :class:`RunConfigError` naming it."""
        path = Path(path)
        try:
            data = json.loads(path.read_bytes().decode("utf-8"))
        except (OSError, UnicodeDecodeError, ValueError, RecursionError) as err:
            reason = getattr(err, "strerror", None) or str(err).splitlines()[0][:200]
            raise RunConfigError(f"{path}: not a readable run configuration (JSON): {reason}") from None
        if not isinstance(data, dict):
            raise RunConfigError(f"{path}: not a run configuration: expected a JSON object, got {type(data).__name__}")
        try:
            return cls.from_dict(data)
        except (TypeError, ValueError) as err:
            raise RunConfigError(f"{path}: not a valid run configuration: {str(err)[:200]}") from None

    def replace(self, **changes: Any) -> "RunConfig":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    # --------------------------------------------------------------------- resume

    def diff(self, other: "RunConfig") -> dict[str, tuple[Any, Any]]:
        """``{key: (self's value, other's value)}`` for every key that changes results: keys of
        :data:`VOLATILE` are left out, and exact attributions count as equal (same numbers)."""
        a, b = self.to_dict(), other.to_dict()
        skip = VOLATILE | RECOMPUTED
        out = {k: (a.get(k), b.get(k)) for k in sorted((set(a) | set(b)) - skip) if a.get(k) != b.get(k)}
        if "attribution" in out and set(out["attribution"]) <= set(EXACT_ATTRIBUTIONS):
            del out["attribution"]
        return out

    def record_sha256(self) -> str:
        """SHA-256 (hex) of the settings one fact's results depend on: the canonical JSON of every key
        except :data:`VOLATILE` ones and the run-level ``data``, ``data_sha256``, ``known`` and ``fact_ids``, with
        exact attributions counted as one and keys at their default left out (so a field added by a
        later version does not change the hash of earlier folders). Stored with each per-fact file: a
        file made under other settings (copied from another run folder) is noticed on resume."""
        defaults = RunConfig().to_dict()
        data = self.to_dict()
        if data.get("attribution") in EXACT_ATTRIBUTIONS:
            data["attribution"] = "exact"
            defaults["attribution"] = "exact"
        kept = {k: v for k, v in data.items()
                if k not in VOLATILE and k not in _NOT_PER_FACT and (k not in defaults or v != defaults[k])}
        text = json.dumps(kept, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()

    @classmethod
    def options(cls) -> list[dataclasses.Field]:
        """The fields that are also command-line options, in order."""
        return [f for f in fields(cls) if "help" in f.metadata]
