"""New-knowledge injection: teach made-up facts through neurons in some languages, recall them in all,
check that real facts keep their answers."""

from __future__ import annotations

import inspect
from collections import Counter
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from .._io import jsonable
from .._progress import progress as _progress
from ..editing import activation_neurons, inject_fact
from ..facts import Fact, FactsError, load_facts
from ..hooks import Neuron
from ..probability import batch_answer_probability, top1_margins, top1_tokens
from ..results import ResultTable
from ..selection import random_control
from ..splits import evaluation_queries
from ..tokens import encode_query

__all__ = ["InjectionResult", "injection_experiment", "INJECTION_SETS"]

INJECTION_SETS = ("activation", "random", "layer")


@dataclass
class InjectionResult(ResultTable):
    """New-knowledge injection, one row per (method, neuron set, fictional fact, query; plus locality rows).

    ``recall`` rows: ``top1`` = the answer's first token is the top prediction after the
    injection (``top1_before`` before it), ``trained`` = the query's language was trained on.
    ``locality`` rows: ``success`` = an unrelated (real) query keeps its top-1 token; ``margin_before``
    = that token's lead over the runner-up before the injection, in nats (near-ties flip first).
    """

    def _summarize(self, df):
        keys = [k for k in ("method", "neurons") if k in df.columns]
        rec = df[df["metric"] == "recall"]
        a = rec.groupby(keys + ["language"]).agg(
            trained=("trained", "max"), p_before=("p_before", "mean"), p_after=("p_after", "mean"),
            top1=("top1", "mean"), rank_after=("rank_after", "median"), n_queries=("top1", "size"),
            n_facts=("fact_id", "nunique"))
        loc = df[df["metric"] == "locality"]
        if loc.empty:  # no real facts to measure locality on (e.g. no run folder)
            return a
        return a.join(loc.groupby(keys).agg(locality=("success", "mean")), on=keys)

    def wide(self):
        """One line per (method, neuron set): recall (top-1) in the trained languages and in the
        others, locality (top-1 retention of real facts), facts and queries behind them."""
        import pandas as pd

        df = self.to_dataframe()
        if df.empty:
            return df
        keys = [k for k in ("method", "neurons") if k in df.columns]
        rec = df[df["metric"] == "recall"]
        out = pd.DataFrame(index=pd.MultiIndex.from_frame(df[keys].drop_duplicates()).sort_values())
        trained = rec["trained"].astype(bool)
        for name, frame in (("recall_trained", rec[trained]), ("recall_other", rec[~trained])):
            if len(frame):
                out[name] = frame.groupby(keys)["top1"].mean()
                out[f"n_{name.split('_')[1]}"] = frame.groupby(keys)["top1"].size()
        loc = df[df["metric"] == "locality"]
        if len(loc):
            out["locality"] = loc.groupby(keys)["success"].mean()
            out["n_locality"] = loc.groupby(keys)["success"].size()
        out["facts"] = rec.groupby(keys)["fact_id"].nunique()
        out["n_neurons"] = df.groupby(keys)["n_neurons"].mean()
        return out


def _train(model, fact: Fact, neurons: list[Neuron], *, method: str, languages: Sequence[str],
           options: Mapping[str, Any]):
    """Inject ``fact`` trained on its ``languages`` queries with ``method``: through
    :func:`lakn.inject_fact` (``languages=`` and ``method=`` when lakn has them; before, Adam on
    the concatenated queries of every training language)."""
    params = inspect.signature(inject_fact).parameters
    if "method" in params:
        return inject_fact(model, fact, languages=tuple(languages), neurons=neurons, method=method, **options)
    if method != "gradient":
        raise ValueError(f"injection method {method!r} is not offered by this lakn.editing (only 'gradient')")
    if len(languages) == 1:
        return inject_fact(model, fact, language=languages[0], neurons=neurons, **options)
    from ..editing import _train_rows  # older lakn: train on every language's queries at once
    from ..models import is_masked_lm

    causal = not is_masked_lm(model)
    encoded = [encode_query(model, q) for lang in languages for q in fact.queries(lang, causal=causal)]
    opts = dict(options)
    prompts = [encode_query(model, p).prompt if hasattr(p, "template") else p for p in opts.pop("preserve", ())]
    return _train_rows(model, encoded, neurons, steps=opts.pop("steps", 20), lr=opts.pop("lr", 0.5),
                       weight_decay=opts.pop("weight_decay", 1e-3), preserve=prompts, **opts)


def _kept(model, layers: list[int], preserve: Sequence[Fact], languages, cache: dict):
    """The closed form's preserved keys with the ``preserve`` facts' query prompts (2 per language)
    added to the default ones, once per set of layers."""
    from ..closed_form import preservation_for

    key = tuple(layers)
    if key not in cache:
        cache[key] = preservation_for(model, list(preserve), layers, languages=languages)
    return cache[key]


def injection_experiment(
    model,
    fictional: Sequence[Fact] | None = None,
    *,
    language: str = "en",
    languages: Sequence[str] | None = None,
    train_languages: Sequence[str] | None = None,
    unrelated: Sequence[Fact] = (),
    k: int = 20,
    steps: int = 20,
    lr: float = 0.5,
    preserve: Sequence[Fact] = (),
    locality_weight: float = 1.0,
    target_prob: float | None = None,
    methods: Sequence[str] | Mapping[str, Mapping[str, Any]] = ("gradient",),
    neuron_sets: Sequence[str] = ("activation", "random"),
    layers: Sequence[int] | None = None,
    options: Mapping[str, Any] | None = None,
    seed: int = 0,
    batch_size: int = 16,
    progress: bool = True,
) -> InjectionResult:
    """Teach each fictional fact (default: ``load_facts("fictional")``, facts no model can know)
    through each neuron set with each method, trained on the ``train_languages`` queries (default:
    ``language`` alone), then query it in every language of ``languages`` (recall: the answer's
    first token top-1) and check ``unrelated`` facts keep their top-1 token (locality).

    Neuron sets: ``activation`` (:func:`lakn.editing.activation_neurons` over ``languages``, ``k``
    neurons: active on the subject in every language; the LAKN-style choice for an unknown fact),
    ``random`` (as many, matched per layer) and ``layer`` (every neuron of ``layers``; default the
    layer holding most activation neurons).

    ``methods``: names (``gradient``, and ``closed_form`` / ``kn_embedding`` where lakn.editing has
    them) or ``{label: {"method": name, **options}}``. The gradient edit gets ``steps``, ``lr``,
    ``target_prob`` and the KL term on ``preserve`` facts (one ``language`` query each, kept apart
    from ``unrelated``, ``locality_weight``); the closed form gets the ``preserve`` facts' prompts
    (2 per language of ``languages``) in its preserved keys, unless its spec names ``preserve``;
    ``options`` go to every method. Every edit is undone.
    """
    from ..models import is_masked_lm

    fictional = load_facts("fictional") if fictional is None else fictional
    train_languages = list(train_languages or [language])
    causal = not is_masked_lm(model)
    d_mlp = int(model.cfg.d_mlp)
    unknown = set(neuron_sets) - set(INJECTION_SETS)
    if unknown:
        raise ValueError(f"unknown neuron sets {sorted(unknown)}; choose from {INJECTION_SETS}")
    other_q = evaluation_queries(model, unrelated, languages=languages, max_queries=1, causal=causal) if unrelated else []
    other_enc = [q.encoded for q in other_q]
    top0, margins = top1_margins(model, other_enc, batch_size) if other_q else ([], [])
    overlap = {f.fact_id for f in preserve} & {f.fact_id for f in unrelated}
    if overlap:
        raise ValueError(f"preserve and unrelated facts must differ (locality is measured on unseen facts): {sorted(overlap)}")
    keep = [q for f in preserve for q in f.queries(language, causal=causal)[:1]]
    if isinstance(methods, str):
        methods = (methods,)
    table = ({str(k_): dict(v) for k_, v in methods.items()} if isinstance(methods, Mapping)
             else {str(m): {"method": m} for m in methods})
    rows = []
    kept: dict = {}
    for i, fact in enumerate(_progress(list(fictional), progress, "lakn inject")):
        langs = [l for l in (languages or fact.languages) if l in fact.templates]
        qs = evaluation_queries(model, [fact], languages=langs, max_queries=None, causal=causal)
        if not qs:
            raise FactsError(f"fictional fact {fact.fact_id!r} has no usable queries in {langs}")
        enc = [q.encoded for q in qs]
        p0, r0 = batch_answer_probability(model, enc, batch_size=batch_size, first_token_only=True)
        chosen = activation_neurons(model, fact, langs, k)
        sets: dict[str, list[Neuron]] = {}
        for name in neuron_sets:
            if name == "activation":
                sets[name] = chosen
            elif name == "random":
                sets[name] = random_control(chosen, d_mlp, seed, i)
            else:
                chosen_layers = list(layers) if layers else [Counter(l for l, _ in chosen).most_common(1)[0][0]]
                sets[name] = [(l, j) for l in chosen_layers for j in range(d_mlp)]
        for label, spec in table.items():
            spec = dict(spec)
            method = spec.pop("method", label)
            opts = dict(options or {})
            if method == "gradient":
                opts.update(steps=steps, lr=lr, target_prob=target_prob)
                if keep:
                    opts.update(preserve=keep, locality_weight=locality_weight)
            opts.update(spec)
            for name, neurons in sets.items():
                if method == "closed_form" and preserve and "preserve" not in spec:
                    opts["preserve"] = _kept(model, sorted({l for l, _ in neurons}), preserve, languages, kept)
                edit = _train(model, fact, neurons, method=method, languages=train_languages, options=opts)
                try:
                    p1, r1 = batch_answer_probability(model, enc, batch_size=batch_size, first_token_only=True)
                    top1 = top1_tokens(model, other_enc, batch_size) if other_q else []
                finally:
                    edit.undo()
                history = getattr(edit, "history", [])
                for j, q in enumerate(qs):
                    rows.append(dict(method=label, edit_method=method, neurons=name, fact_id=fact.fact_id,
                                     metric="recall", language=q.language, trained=q.language in train_languages,
                                     prompt=q.prompt, p_before=float(p0[j]), p_after=float(p1[j]),
                                     rank_before=int(r0[j]), rank_after=int(r1[j]), top1_before=float(r0[j] == 0),
                                     top1=float(r1[j] == 0), n_neurons=len(neurons), steps_run=len(history)))
                for j, q in enumerate(other_q):
                    rows.append(dict(method=label, edit_method=method, neurons=name, fact_id=fact.fact_id,
                                     metric="locality", language=q.language, prompt=q.prompt, other_fact=q.fact_id,
                                     success=float(top0[j] == top1[j]), margin_before=margins[j],
                                     n_neurons=len(neurons)))
    return InjectionResult(rows, jsonable(dict(language=language, train_languages=train_languages,
                                      languages=list(languages or []), k=k, steps=steps, lr=lr,
                                      methods={k_: dict(v) for k_, v in table.items()}, neuron_sets=list(neuron_sets),
                                      layers=list(layers or []), options=dict(options or {}),
                                      preserve=[f.fact_id for f in preserve], locality_weight=locality_weight,
                                      target_prob=target_prob, seed=seed, first_token_only=True,
                                      selection="activation_neurons: min over languages of layer-normalised |act|",
                                      fictional=[f.fact_id for f in fictional])))
