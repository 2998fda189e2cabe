"""The constrained closed-form edit of chosen neurons' W_out rows (docs/method.md §8.3).

Pieces, each usable alone:

- :func:`preservation` / :class:`Preservation`: the second moment ``C_l = K0 K0^T / n`` of layer
  ``l``'s MLP post-activations over preserved tokens (every position of generic text, plus other
  facts' query prompts; ``answer_weight`` counts their last tokens more), cached per model, layer and source under
  ``lakn.models.cache_dir()/covariance/``;
- :func:`~lakn.target.find_target` (:mod:`lakn.target`, re-exported here): the residual ``delta``
  (d_model) that, added to the MLP output (``blocks.{L}.mlp.hook_out``) at the key position, makes
  the new answer likely (:func:`~lakn.target.find_targets`: a batch's targets at once);
- :func:`solve_rows`: the update of the neurons' rows,
  ``dW = (K K^T + lam C_SS + rho I)^{-1} K R``, optionally inside the null space of ``C_SS``.

:func:`lakn.edit_fact` (``method="closed_form"``, the default) puts them together with the keys
of :mod:`lakn.keys` (where activations are read: the subject's last token or the last prompt token).
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
import os
import warnings
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from .facts import Fact, FactsError, Query
from .keys import _by_length, post_activations
from .target import find_target, find_targets
from .tokens import encode_query

__all__ = [
    "Preservation",
    "preservation",
    "generic_texts",
    "find_target",
    "find_targets",
    "solve_rows",
    "GENERIC_TEXT",
]

GENERIC_TEXT = "generic_text.jsonl"
"""The package's generic text (short everyday sentences in en, fr, es, de, ru, zh, ar, ja, written for lakn)."""

_FORMAT = "lakn-preservation-1"


def generic_texts(languages: Iterable[str] | None = None) -> list[str]:
    """The sentences of ``lakn/data/generic_text.jsonl`` (of ``languages`` only, when given)."""
    wanted = None if languages is None else set(languages)
    path = Path(str(files("lakn") / "data" / GENERIC_TEXT))
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            if wanted is None or row["language"] in wanted:
                out.append(str(row["text"]))
    return out


# --------------------------------------------------------------------------- preservation


@dataclass(eq=False)
class Preservation:
    """Second moments of MLP post-activations over preserved tokens, per layer.

    ``moments[l]`` is ``C_l = K0 K0^T / n_tokens`` (``d_mlp x d_mlp``, float64), K0 the layer's
    activations at every preserved token; ``n_tokens`` the token count (the tokens' total weight
    when :func:`preservation`'s ``answer_weight`` counts some tokens more), ``source`` a description
    of the text, ``source_sha256`` the hash of the exact texts, ``model`` the model's name.
    ``save(path)`` writes ``path`` (safetensors) and ``path + ".json"`` (metadata with the
    safetensors file's SHA-256); :meth:`load` checks the hash and the shapes.
    """

    moments: dict[int, Tensor]
    n_tokens: int
    source: str = ""
    source_sha256: str = ""
    model: str = ""
    meta: dict = field(default_factory=dict)

    @property
    def layers(self) -> list[int]:
        return sorted(self.moments)

    def __repr__(self) -> str:  # the moments are megabytes of numbers: name them, not print them
        return (f"Preservation(layers={self.layers}, n_tokens={self.n_tokens}, source={self.source!r}, "
                f"source_sha256={self.source_sha256[:12]!r}, model={self.model!r})")

    def __getitem__(self, layer: int) -> Tensor:
        return self.moments[int(layer)]

    def restricted(self, layer: int, idx: Sequence[int]) -> Float[Tensor, "n n"]:
        """``C_SS``: the layer's second moment on the neurons ``idx`` (float64)."""
        if int(layer) not in self.moments:
            raise ValueError(f"the preservation has no covariance for layer {layer} (it has layers {self.layers})")
        c = self.moments[int(layer)]
        index = torch.as_tensor(list(idx), dtype=torch.long)
        if index.numel() and (index.min() < 0 or index.max() >= c.shape[0]):
            raise ValueError(f"neuron index out of range for the layer-{layer} covariance of size {c.shape[0]}")
        return c.double().index_select(0, index).index_select(1, index)

    def merged(self, other: "Preservation") -> "Preservation":
        """Both token sets together (token-weighted mean of the moments, on their common layers)."""
        common = sorted(set(self.moments) & set(other.moments))
        n = self.n_tokens + other.n_tokens
        moments = {l: (self.moments[l].double() * self.n_tokens + other.moments[l].double() * other.n_tokens) / max(n, 1)
                   for l in common}
        sha = hashlib.sha256((self.source_sha256 + other.source_sha256).encode()).hexdigest()
        return Preservation(moments, n, f"{self.source} + {other.source}", sha, self.model or other.model)

    def save(self, path: str | os.PathLike) -> Path:
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        save_file({f"layer.{l}": self.moments[l].contiguous().cpu() for l in self.layers}, str(tmp))
        digest = _sha256_file(tmp)
        os.replace(tmp, path)
        meta = dict(format=_FORMAT, layers=self.layers, n_tokens=int(self.n_tokens), source=self.source,
                    source_sha256=self.source_sha256, model=self.model, sha256=digest, meta=self.meta)
        side = _meta_path(path)
        side_tmp = side.with_name(side.name + ".tmp")
        side_tmp.write_text(json.dumps(meta, ensure_ascii=False, indent=1), encoding="utf-8")
        os.replace(side_tmp, side)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Preservation":
        """Read a saved preservation; a missing, changed or malformed file raises ``ValueError``
        naming it."""
        from safetensors.torch import load_file

        path = Path(path)
        side = _meta_path(path)
        try:
            meta = json.loads(side.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise ValueError(f"cannot read the preservation metadata {side}: {err}") from err
        if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
            raise ValueError(f"{side} is not a lakn preservation file (format {_FORMAT!r} expected)")
        try:
            digest = _sha256_file(path)
        except OSError as err:
            raise ValueError(f"cannot read the preservation file {path}: {err}") from err
        if digest != meta.get("sha256"):
            raise ValueError(f"preservation file {path} is corrupted or changed: its SHA-256 {digest[:12]}... "
                             f"differs from the one recorded in {side.name}")
        try:
            tensors = load_file(str(path))
        except Exception as err:  # safetensors raises its own error types
            raise ValueError(f"cannot read the preservation file {path}: {err}") from err
        moments = {}
        for layer in meta.get("layers", []):
            t = tensors.get(f"layer.{layer}")
            if t is None or t.ndim != 2 or t.shape[0] != t.shape[1]:
                raise ValueError(f"preservation file {path} has no square matrix for layer {layer}")
            moments[int(layer)] = t.double()
        return cls(moments, int(meta["n_tokens"]), str(meta.get("source", "")), str(meta.get("source_sha256", "")),
                   str(meta.get("model", "")), dict(meta.get("meta") or {}))


def _meta_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fingerprint(model) -> str:
    """A cheap hash of the weights (each parameter's shape, sum and a strided sample), so a
    cached covariance of one model is never used for another of the same name."""
    h = hashlib.sha256()
    with torch.no_grad():
        for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            flat = p.detach().reshape(-1)
            step = max(1, flat.numel() // 64)
            total = float(torch.sum(flat, dtype=torch.float64))  # float32 sums change with the thread count
            h.update(f"{name}{tuple(p.shape)}{p.dtype}{total:.9e}".encode())
            h.update(flat[::step].float().cpu().numpy().tobytes())
    return h.hexdigest()


def _second_moments(model, token_lists: Sequence[Tensor], layers: list[int],
                    last_weights: Sequence[int] | None = None) -> tuple[dict[int, Tensor], int]:
    """Per layer ``sum_t w_t a_t a_t^T / sum_t w_t`` over every token of ``token_lists``; each
    token weighs 1 but a list's last token, which weighs ``last_weights[i]`` (default 1)."""
    d_mlp = int(model.cfg.d_mlp)
    sums = {l: torch.zeros(d_mlp, d_mlp, dtype=torch.float64) for l in layers}
    n = 0
    for length, members in sorted(_by_length(token_lists).items()):
        for start in range(0, len(members), 32):
            chunk = members[start:start + 32]
            acts = post_activations(model, torch.stack([token_lists[i] for i in chunk]), layers)
            w = torch.ones(len(chunk), length, dtype=torch.float64)
            if last_weights is not None:
                w[:, -1] = torch.tensor([float(last_weights[i]) for i in chunk], dtype=torch.float64)
            for layer in layers:
                a = acts[layer].reshape(-1, acts[layer].shape[-1]).double().cpu()
                sums[layer] += (a * w.reshape(-1, 1)).T @ a
            n += int(w.sum())
    return {l: s / max(n, 1) for l, s in sums.items()}, n


def preservation(
    model,
    layers: Iterable[int],
    *,
    texts: Sequence[str] | None = None,
    facts: Sequence[Fact] | None = None,
    languages: Sequence[str] | None = None,
    max_queries: int | None = None,
    answer_weight: int = 1,
    cache: bool = True,
) -> Preservation:
    """The preserved-key second moments of ``layers``: activations at every token position of
    ``texts`` (default: the package's generic text, :func:`generic_texts`, of ``languages`` when
    given) plus, with ``facts``, the prompts of those facts' queries in ``languages`` (default:
    all of each fact's languages; the first ``max_queries`` per language when given). Other facts
    of your data are the preserved keys that buy most locality (docs/results.md run 7): pass
    ``facts=`` the facts you will not edit and measure locality on others.

    ``answer_weight`` (a whole number): each fact prompt's last token, where a causal LM reads its
    answer, counts that many times (the texts' tokens and the prompts' other tokens count once), so
    a solve holds the outputs there more than elsewhere (method.md §8.3). ``n_tokens`` is then the
    tokens' total weight.

    With ``cache`` each layer's matrix is stored under ``cache_dir()/covariance/`` in a file
    named by a hash of (model name, weights fingerprint, layer, exact texts, answer weight), and reused.
    """
    from .models import cache_dir, is_masked_lm, model_name

    wanted = sorted({int(l) for l in layers})
    n_layers = int(model.cfg.n_layers)
    if not wanted:
        raise ValueError("no layers given for the preservation")
    if wanted[0] < 0 or wanted[-1] >= n_layers:
        raise IndexError(f"layers {wanted} out of range for a model with {n_layers} layers")
    if max_queries is not None and max_queries < 1:
        raise ValueError(f"max_queries must be >= 1, got {max_queries}")
    if isinstance(answer_weight, bool) or not isinstance(answer_weight, numbers.Real):
        raise TypeError(f"answer_weight must be a whole number >= 1, not {type(answer_weight).__name__}")
    if not (math.isfinite(answer_weight) and answer_weight >= 1 and float(answer_weight).is_integer()):
        raise ValueError(f"answer_weight must be a whole number >= 1 (a token counted that many times), "
                         f"got {answer_weight!r}")
    answer_weight = int(answer_weight)
    all_texts = list(generic_texts(languages) if texts is None else texts)
    parts = ["generic text" if texts is None else f"{len(all_texts)} texts"]
    last = [1] * len(all_texts)  # each text's last-token weight
    if facts:
        causal = not is_masked_lm(model)
        prompts = [q.prompt for f in facts for lang in (languages or f.languages) if lang in f.templates
                   for q in f.queries(lang, causal=causal)[:max_queries]]
        last += [answer_weight] * len(prompts)
        all_texts += prompts
        parts.append(f"{len(prompts)} query prompts of {len(facts)} facts"
                     + (f", answer positions x{answer_weight}" if answer_weight != 1 else ""))
    kept_texts = [i for i, t in enumerate(all_texts) if t.strip()]
    all_texts, last = [all_texts[i] for i in kept_texts], [last[i] for i in kept_texts]
    if not all_texts:
        raise ValueError("no preserved text: give texts or facts")
    weights = last if any(w != 1 for w in last) else None  # None: the plain moment, the caches of before
    hashed = all_texts if weights is None else [all_texts, last]
    source_sha = hashlib.sha256(json.dumps(hashed, ensure_ascii=False).encode("utf-8", "surrogatepass")).hexdigest()
    source = ", ".join(parts) + f" ({len(all_texts)} texts)"
    name = model_name(model)
    folder = cache_dir() / "covariance"
    moments: dict[int, Tensor] = {}
    n_tokens = None
    paths = {}
    if cache:
        fp = _fingerprint(model)
        for layer in wanted:
            key = json.dumps([_FORMAT, name, fp, layer, source_sha, str(model.cfg.dtype) if hasattr(model.cfg, "dtype") else ""])
            paths[layer] = folder / (hashlib.sha256(key.encode()).hexdigest()[:40] + ".safetensors")
            if paths[layer].exists():
                try:
                    cached = Preservation.load(paths[layer])
                    moments[layer] = cached.moments[layer]
                    n_tokens = cached.n_tokens
                except (ValueError, KeyError) as err:
                    warnings.warn(f"ignoring a bad cached covariance ({err}); recomputing", stacklevel=2)
    todo = [l for l in wanted if l not in moments]
    if todo:
        tokens = [model.to_tokens(t)[0].cpu() for t in all_texts]
        computed, n = _second_moments(model, tokens, todo, weights)
        moments.update(computed)
        n_tokens = n
        if cache:
            for layer in todo:
                Preservation({layer: computed[layer]}, n, source, source_sha, name).save(paths[layer])
    assert n_tokens is not None
    return Preservation({l: moments[l] for l in wanted}, int(n_tokens), source, source_sha, name)


def prompt_preservation(model, prompts: Sequence[Tensor], layers: Iterable[int]) -> Preservation:
    """The second moments of ``prompts`` (token ids, every position), uncached."""
    moments, n = _second_moments(model, list(prompts), sorted({int(l) for l in layers}))
    sha = hashlib.sha256(b"".join(p.numpy().tobytes() for p in prompts)).hexdigest()
    return Preservation(moments, n, f"{len(prompts)} prompts", sha, "")


# --------------------------------------------------------------------------- solve


def solve_rows(
    keys: Float[Tensor, "q n"],
    residuals: Float[Tensor, "q d_model"],
    covariance: Float[Tensor, "n n"] | None = None,
    *,
    lam: float = 1e4,
    null_space: float | None = None,
    ridge: float = 1e-6,
    weights: Float[Tensor, "q"] | None = None,
) -> Float[Tensor, "n d_model"]:
    """The row update ``dW`` (``n x d_model``, float64) minimising
    ``sum_q w_q ||k_q^T dW - r_q^T||^2 + lam tr(dW^T C dW) + rho ||dW||^2``, i.e.
    ``dW = (K W K^T + lam C + rho I)^{-1} K W R`` with ``K = keys^T``, ``R = residuals``, ``W`` the
    keys' ``weights`` (default 1) and the tiny ridge ``rho = ridge * mean diag(K W K^T + lam C)``.

    ``null_space = eps``: ``dW`` is restricted to the null space of ``C`` (AlphaEdit): with
    ``C = U diag(s) U^T`` and ``U0`` the eigenvectors whose eigenvalue is below ``eps * max(s)``,
    ``dW = U0 Y`` and ``Y = (U0^T K K^T U0 + lam diag(s0) + rho I)^{-1} U0^T K R``, so the output on a
    preserved key ``k0`` changes by ``k0^T U0 Y``, whose mean square over the preserved keys is
    at most ``eps max(s) ||Y||^2``.
    """
    if lam < 0:
        raise ValueError(f"lam must be >= 0, got {lam}")
    if keys.ndim != 2 or residuals.ndim != 2 or keys.shape[0] != residuals.shape[0]:
        raise ValueError(f"keys {tuple(keys.shape)} and residuals {tuple(residuals.shape)} must be [q, n] and [q, d]")
    K = keys.double().T
    R = residuals.double()
    n = K.shape[0]
    if weights is None:
        KW = K
    else:
        w = torch.as_tensor(weights, dtype=torch.float64).reshape(-1)
        if w.shape[0] != K.shape[1] or not bool((w >= 0).all()):
            raise ValueError(f"weights must be {K.shape[1]} numbers >= 0 (one per key), got shape {tuple(w.shape)}")
        KW = K * w[None]
    C = torch.zeros(n, n, dtype=torch.float64) if covariance is None else covariance.double()
    if C.shape != (n, n):
        raise ValueError(f"covariance {tuple(C.shape)} does not match {n} neurons")
    A = KW @ K.T + lam * C
    B = KW @ R
    if null_space is not None:
        if not 0 < null_space < 1:
            raise ValueError(f"null_space must be in (0, 1), got {null_space}")
        if covariance is None:
            raise ValueError("null_space needs a covariance")
        s, U = torch.linalg.eigh(C)
        U0 = U[:, s < null_space * s.max().clamp_min(1e-300)]
        if U0.shape[1] == 0:
            raise ValueError(f"the preserved covariance has no eigenvalue below null_space={null_space:g} x its "
                             "largest: no null space to edit in (raise null_space or edit more neurons)")
        A0 = U0.T @ A @ U0
        rho = ridge * float(A0.diagonal().mean().clamp_min(1e-300))
        Y = torch.linalg.solve(A0 + rho * torch.eye(A0.shape[0], dtype=torch.float64), U0.T @ B)
        return U0 @ Y
    rho = ridge * float(A.diagonal().mean().clamp_min(1e-300))
    return torch.linalg.solve(A + rho * torch.eye(n, dtype=torch.float64), B)


def _target_languages(fact: Fact, new_answers: Mapping[str, str], language: str,
                      target_languages: Sequence[str] | None) -> list[str]:
    """The languages an edit's target is found on (the closed form's delta, the gradient edit's
    training queries): the edit language alone (default), or ``target_languages`` too (each needs a
    new answer; the edit language is always one of them; one code as a string is one language)."""
    if target_languages is None:
        return [language]
    langs = _codes([language], target_languages)
    missing = [l for l in langs if l not in new_answers]
    if missing:
        raise FactsError(f"target language(s) {missing} of fact {fact.fact_id!r} have no new answer in new_answers")
    return _known_targets(fact, langs)


def _codes(first: Sequence[str], more: Sequence[str] | str) -> list[str]:
    """``first`` then ``more`` without repeats; one code given as a string is one language."""
    return list(dict.fromkeys([*first, *([more] if isinstance(more, str) else more)]))


def _known_targets(fact: Fact, langs: list[str]) -> list[str]:
    """``langs``, each a language ``fact`` has queries in (else a :class:`FactsError` naming them)."""
    unknown = [l for l in langs if l not in fact.templates]
    if unknown:
        raise FactsError(f"target language(s) {unknown} unknown for fact {fact.fact_id!r}: it has queries in "
                         f"{sorted(fact.templates)}")
    return langs


def _default_preserved_facts(exclude: frozenset[str]) -> list[Fact]:
    """lakn's demo facts (written for lakn; every query prompt in all their languages), without the
    facts being edited: the preserved other-fact keys of the default closed-form edit."""
    from .facts import load_facts

    return [f for f in load_facts("demo") if f.fact_id not in exclude]


def preservation_for(model, preserve, layers: list[int], exclude: frozenset[str] = frozenset(), *,
                     languages: Sequence[str] | None = None, max_queries: int = 2) -> Preservation:
    """The preservation a closed-form edit uses: ``preserve`` itself (a :class:`Preservation`), or the
    default one (:func:`preservation` of the generic text and the demo facts but ``exclude``), plus
    the tokens of ``preserve`` when it is a sequence of prompts, or the first ``max_queries`` query
    prompts per language (of ``languages``, default each fact's own) of each fact when it is a
    sequence of :class:`~lakn.facts.Fact` (other facts of your data: the preserved keys that buy
    most locality, docs/results.md run 7)."""
    if isinstance(preserve, Preservation):
        missing = [l for l in layers if l not in preserve.moments]
        if missing:
            raise ValueError(f"the preservation has no covariance for layer(s) {missing} (it has {preserve.layers}); "
                             f"build it with lakn.preservation(model, {layers})")
        return preserve
    base = preservation(model, layers, facts=_default_preserved_facts(exclude))
    if preserve is None or (isinstance(preserve, Sequence) and len(preserve) == 0):
        return base
    if not isinstance(preserve, Sequence):
        raise TypeError(f"preserve must be a Preservation, a sequence of prompts or facts, or None, not "
                        f"{type(preserve).__name__}")
    if all(isinstance(p, Fact) for p in preserve):  # other facts: their query prompts
        return base.merged(preservation(model, layers, texts=[], facts=list(preserve), languages=languages,
                                        max_queries=max_queries))
    prompts = [p if isinstance(p, Tensor) else (encode_query(model, p) if isinstance(p, Query) else p).prompt
               for p in preserve]
    return base.merged(prompt_preservation(model, prompts, layers))


def _preserve_prompts(model, preserve: Sequence, language: str) -> list[Tensor]:
    """The gradient edit's KL prompts: token ids as given, a query's prompt, a fact's first query in
    ``language`` (facts without one are skipped)."""
    from .models import is_masked_lm

    out = []
    for p in preserve:
        if isinstance(p, Fact):
            queries = p.queries(language, causal=not is_masked_lm(model)) if language in p.templates else []
            if queries:
                out.append(encode_query(model, queries[0]).prompt)
        else:
            out.append(p if isinstance(p, Tensor) else (encode_query(model, p) if isinstance(p, Query) else p).prompt)
    return out
