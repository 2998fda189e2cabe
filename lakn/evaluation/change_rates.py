"""The probability change rate: scale each fact's neurons and measure (P_after - P_before) / P_before.

Only queries the model answers before any intervention (first answer token within the top
``top_k_answer``) are scored, and how many were kept is reported; queries are labelled by their
split (:mod:`lakn.splits`)::

    split = lakn.split_facts(facts, holdout_share=0.5, holdout_languages=["de"], seed=0)
    result = lakn.localize(model, split.localization, languages=["en", "fr", "es"])
    rates = lakn.change_rates(model, lakn.selection.neuron_sets({"matrice": result}), facts, result=result)
    rates.table()
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch

from .._progress import progress as _progress
from ..facts import Fact
from ..hooks import Neuron
from ..interventions import intervene
from ..probability import batch_answer_probability, change_rate
from ..results import LocalizationResult, ResultTable
from ..selection import seeded_generator
from ..splits import SPLITS, EvalQuery, evaluation_queries

__all__ = ["ChangeRateResult", "change_rates", "INTERVENTIONS"]


@dataclass
class ChangeRateResult(ResultTable):
    """Probability change rates, one row per (method, intervention, target fact, query).

    Columns: method, intervention, target (the fact whose neurons were changed), fact_id
    (the query's fact), kind (related / same_relation / other_relation), language, split,
    p_before, p_after, change = (p_after - p_before) / p_before, n_neurons (:data:`COLUMNS`). This is
    the schema of ``DIR/eval.json``; :mod:`lakn.plotting` reads it by these names.
    """

    COLUMNS = ("method", "intervention", "target", "fact_id", "kind", "language", "split", "p_before", "p_after",
               "change", "n_neurons")

    def per_fact(self):
        """Mean change per (method, intervention, target, kind, language, split): facts weigh equally."""
        df = self.to_dataframe()
        if df.empty:
            return df
        keys = ["method", "intervention", "target", "kind", "language", "split"]
        return df.groupby(keys, as_index=False).agg(change=("change", "mean"), n_queries=("change", "size"))

    def summary(self, split: str | Sequence[str] | None = None):
        """Mean and spread (std over target facts) of the change per method, intervention, kind and
        language; ``split`` restricts to some splits (default: all)."""
        df = self.per_fact()
        if df.empty:
            return df
        if split is not None:
            df = df[df["split"].isin([split] if isinstance(split, str) else list(split))]
        return (df.groupby(["method", "intervention", "kind", "language"], as_index=False)
                  .agg(mean=("change", "mean"), std=("change", "std"), n_facts=("target", "nunique")))

    def table(self, split: str | Sequence[str] | None = None):
        """Rows method x language; columns: related / same-relation / other-relation change for
        suppress and enhance (mean over facts), and the number of facts kept."""
        s = self.summary(split)
        if s.empty:
            return s
        wide = s.pivot_table(index=["method", "language"], columns=["intervention", "kind"], values="mean")
        wide.columns = [f"{a}:{b}" for a, b in wide.columns]
        kept = s[s["kind"] == "related"].groupby(["method", "language"])["n_facts"].max()
        wide["facts_kept"] = kept
        wide["facts_kept"] = wide["facts_kept"].fillna(0).astype(int)
        return wide


INTERVENTIONS = {"suppress": 0.0, "enhance": 2.0}


def change_rates(
    model,
    sets: Mapping[str, Mapping[str, Sequence[Neuron]]],
    facts: Sequence[Fact],
    *,
    result: LocalizationResult | None = None,
    queries: Sequence[EvalQuery] | None = None,
    languages: Sequence[str] | None = None,
    interventions: Mapping[str, float] = INTERVENTIONS,
    top_k_answer: int = 10,
    max_queries: int | None = 3,
    position: str = "all",
    max_unrelated: int | None = None,
    seed: int = 0,
    first_token_only: bool = False,
    batch_size: int = 16,
    progress: bool = True,
) -> ChangeRateResult:
    """Scale each fact's neurons (per method and intervention factor) and measure the change rate
    (P_after - P_before) / P_before on every kept query: the fact's own (related), other facts of
    the same relation, other relations.

    Queries come from :func:`evaluation_queries` (split-labelled by ``result``) unless given.
    A query is kept when its first answer token ranks below ``top_k_answer`` before intervention.
    ``max_unrelated`` caps the other-relation queries measured per target fact (a sample fixed by
    ``seed``, the same for every method and intervention); related and same-relation queries are
    always all measured. Without the cap the cost grows as facts x queries.
    ``first_token_only``: measure P of the answer's first token (match a first-token localisation).
    """
    if position != "all":
        # batches are right-padded, so "last" or fixed indices would hit padding in shorter rows
        raise ValueError("change_rates intervenes at all positions only (position='all')")
    from ..models import is_masked_lm

    causal = not is_masked_lm(model)
    if queries is None:
        queries = evaluation_queries(model, facts, result=result, languages=languages, max_queries=max_queries,
                                     causal=causal)
    relation = {f.fact_id: f.relation for f in facts}
    p0, r0 = batch_answer_probability(model, [q.encoded for q in queries], batch_size=batch_size,
                                 first_token_only=first_token_only)
    kept = [i for i in range(len(queries)) if int(r0[i]) < top_k_answer]
    kept_q = [queries[i] for i in kept]
    # a method that selected no neuron for a fact has nothing to measure: it is listed, not averaged as 0
    empty = {m: sorted(fid for fid, n in per.items() if fid in relation and not n) for m, per in sets.items()}
    jobs = [(m, fid, name, factor) for m, per_fact in sets.items() for fid in per_fact
            if fid in relation and per_fact[fid] for name, factor in interventions.items()]
    if max_unrelated is not None and max_unrelated < 0:
        raise ValueError(f"max_unrelated must be >= 0 or None, got {max_unrelated}")
    measured: dict[str, list[int]] = {}  # target fact -> indices into `queries` it is measured on
    for k, target in enumerate(sorted({fid for _, fid, _, _ in jobs})):
        near = [i for i in kept if relation.get(queries[i].fact_id) == relation[target]]
        far = [i for i in kept if relation.get(queries[i].fact_id) != relation[target]]
        if max_unrelated is not None and len(far) > max_unrelated:
            g = seeded_generator(seed, k)
            far = sorted(far[int(j)] for j in torch.randperm(len(far), generator=g)[:max_unrelated])
        measured[target] = sorted(near + far)
    rows = []
    for method, target, name, factor in _progress(jobs, progress, "lakn evaluate"):
        neurons = list(sets[method][target])
        idx = measured[target]
        if not idx:
            continue
        with intervene(model, neurons, factor=factor, position=position):
            p1, _ = batch_answer_probability(model, [queries[i].encoded for i in idx], batch_size=batch_size,
                                        first_token_only=first_token_only)
        for j, i in enumerate(idx):
            q = queries[i]
            kind = ("related" if q.fact_id == target else
                    "same_relation" if relation.get(q.fact_id) == relation[target] else "other_relation")
            before, after = float(p0[i]), float(p1[j])
            rows.append(dict(method=method, intervention=name, target=target, fact_id=q.fact_id, kind=kind,
                             language=q.language, split=q.split, p_before=before, p_after=after,
                             change=change_rate(before, after), n_neurons=len(neurons)))
    config = dict(
        interventions=dict(interventions), top_k_answer=top_k_answer, max_queries=max_queries, position=position,
        max_unrelated=max_unrelated, seed=seed, first_token_only=first_token_only, n_queries=len(queries),
        n_kept=len(kept),
        kept_by_split={s: sum(1 for q in kept_q if q.split == s) for s in SPLITS},
        queries_by_split={s: sum(1 for q in queries if q.split == s) for s in SPLITS},
        facts_kept=sorted({q.fact_id for q in kept_q}),
        n_neurons={m: {fid: len(n) for fid, n in per.items()} for m, per in sets.items()},
        no_neurons=empty,
        localization=(result.config if result is not None else None),
    )
    return ChangeRateResult(rows, config)
