"""The probability change rate under the fair specificity protocol: scale each fact's neurons and
measure (P_after - P_before) / P_before and top-1 retention on the fact's own queries and on other facts'.

The other facts are never the localisation's own (they were each other's reference): a seeded sample
of the remaining facts, capped per relation, recorded in the result (:mod:`lakn.evaluation.specificity`
has the groups). Only queries the model answers before any intervention (first answer token within the
top ``top_k_answer``) are scored, and how many were kept is reported::

    split = lakn.split_facts(facts, holdout_share=0.5, holdout_languages=["de"], seed=0)
    result = lakn.localize(model, split.localization[:50], languages=["en", "fr", "es"])
    rates = lakn.change_rates(model, lakn.selection.neuron_sets({"matrice": result}), facts, result=result)
    rates.specificity_table()      # method x group: mean ± s.e. over facts (n facts / n queries)
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Mapping, Sequence

from ..facts import Fact
from ..hooks import Neuron
from ..probability import change_rate
from ..results import LocalizationResult, ResultTable
from ..selection import seeded_generator
from ..splits import SPLITS, EvalQuery, evaluation_queries
from .specificity import GROUPS, KIND_OF_GROUP, assign_groups, format_groups, masked_answer_pass, summarize_groups
from .specificity import unrelated_facts as _unrelated_facts

__all__ = ["ChangeRateResult", "change_rates", "INTERVENTIONS"]


@dataclass
class ChangeRateResult(ResultTable):
    """Probability change rates, one row per (method, intervention, target fact, query).

    Columns (:data:`COLUMNS`): method, intervention, target (the fact whose neurons were changed),
    fact_id (the query's fact), kind (related / same_relation / same_answer / other_relation),
    group (:data:`~lakn.evaluation.specificity.GROUPS`), language, split, p_before, p_after,
    change = (p_after - p_before) / p_before, top1_kept (1 when the top-1 token is unchanged),
    n_neurons. This is the schema of ``DIR/eval.json``; :mod:`lakn.plotting` reads it by these names
    (files written before the protocol have no group / top1_kept and still load).
    """

    COLUMNS = ("method", "intervention", "target", "fact_id", "kind", "group", "language", "split", "p_before",
               "p_after", "change", "top1_kept", "n_neurons")

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

    def specificity(self, *, by_language: bool = False, intervention: str | None = None):
        """The protocol's summary: per method, intervention, group (and language), mean ± standard error
        over target facts of the change rate and of top-1 retention, with the facts and queries behind
        each cell (:func:`~lakn.evaluation.specificity.summarize_groups`)."""
        df = self.to_dataframe()
        if intervention is not None and not df.empty:
            df = df[df["intervention"] == intervention]
        return summarize_groups(df, by_language=by_language)

    def specificity_table(self, value: str = "change", *, intervention: str = "suppress", by_language: bool = False,
                          counts: bool = True):
        """Printable: rows method (x language), one column per group, cells ``mean ± se (nf/nq)``."""
        s = self.specificity(by_language=by_language, intervention=intervention)
        return format_groups(s, value=value, index=["method", "language"] if by_language else ["method"],
                             counts=counts)

    def table(self, split: str | Sequence[str] | None = None):
        """Rows method x language; columns: change per intervention and kind (related / same-relation
        different answer / same answer / other-relation; mean over facts), and the number of facts kept."""
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
    unrelated: Sequence[Fact] | None = None,
    languages: Sequence[str] | None = None,
    interventions: Mapping[str, float] = INTERVENTIONS,
    top_k_answer: int = 10,
    max_queries: int | None = 3,
    position: str = "all",
    max_unrelated: int | None = 16,
    max_same_relation: int | None = None,
    unrelated_per_relation: int | None = 8,
    probe_queries: int = 1,
    seed: int = 0,
    first_token_only: bool = False,
    batch_size: int = 16,
    progress: bool = True,
) -> ChangeRateResult:
    """Scale each fact's neurons (per method and intervention factor) and measure the change rate
    (P_after - P_before) / P_before and whether the top-1 token stays, per group of queries
    (:data:`~lakn.evaluation.specificity.GROUPS`): the fact's own (seen / held-out paraphrase /
    held-out language), other facts of its relation (different / same first answer token), other relations.

    The run's facts (``result``'s, and every fact ``sets`` names) are the targets. The other facts are
    ``unrelated`` when given (none may be a run fact), else :func:`~lakn.evaluation.specificity.unrelated_facts`
    of the remaining ``facts``: at most ``unrelated_per_relation`` per relation, sampled with ``seed``;
    their ids are in ``config["unrelated"]``. Each other fact gives ``probe_queries`` queries per
    language. Own queries come from :func:`evaluation_queries` (split-labelled by ``result``) unless
    ``queries`` are given. A query is kept when its first answer token ranks below ``top_k_answer``
    before intervention. ``max_unrelated`` caps the other-relation queries per target, ``max_same_relation``
    the same-relation different-answer ones (one seeded sample per target, the same for every method
    and intervention); ``None``: all. All neuron sets run in shared batches, one set per row.
    ``first_token_only``: measure P of the answer's first token (match a first-token localisation).
    """
    if position != "all":
        # batches are right-padded, so "last" or fixed indices would hit padding in shorter rows
        raise ValueError("change_rates intervenes at all positions only (position='all')")
    for name, cap in (("max_unrelated", max_unrelated), ("max_same_relation", max_same_relation)):
        if cap is not None and cap < 0:
            raise ValueError(f"{name} must be >= 0 or None, got {cap}")
    from ..models import is_masked_lm

    causal = not is_masked_lm(model)
    run_ids = set(result.fact_ids) if result is not None else set()
    run_ids |= {fid for per in sets.values() for fid in per}
    targets = [f for f in facts if f.fact_id in run_ids]
    relation = {f.fact_id: f.relation for f in targets}
    if unrelated is None:
        pool = [f for f in facts if f.fact_id not in run_ids]
        others = _unrelated_facts(pool, exclude=run_ids, per_relation=unrelated_per_relation, seed=seed)
        if not pool:
            warnings.warn("change_rates: every fact given is the localisation's own, so the same- and other-relation "
                          "groups are empty; pass all facts of the data file (or unrelated=)", stacklevel=2)
    else:
        clash = sorted({f.fact_id for f in unrelated} & run_ids)
        if clash:
            raise ValueError(f"{len(clash)} unrelated fact(s) are facts of the localisation (its reference; they "
                             f"cannot be unrelated): {', '.join(clash[:5])}")
        pool, others = list(unrelated), list(unrelated)
    if queries is None:
        own_q = evaluation_queries(model, targets, result=result, languages=languages, max_queries=max_queries,
                                   causal=causal)
    else:
        own_q = [q for q in queries if q.fact_id in relation]
    probe_q = evaluation_queries(model, others, result=result, languages=languages, max_queries=probe_queries,
                                 causal=causal)
    all_q = own_q + probe_q
    p0, r0, t0 = masked_answer_pass(model, [q.encoded for q in all_q], batch_size=batch_size,
                                    first_token_only=first_token_only)
    kept = [i for i in range(len(all_q)) if int(r0[i]) < top_k_answer]
    kept_set = set(kept)
    tokens: dict[str, dict[str, set[int]]] = {}
    for q in own_q:
        tokens.setdefault(q.fact_id, {}).setdefault(q.language, set()).add(int(q.encoded.answer[0]))
    n_own = len(own_q)
    probes = [(i, all_q[i].relation, all_q[i].language, int(all_q[i].encoded.answer[0]))
              for i in range(n_own, len(all_q)) if i in kept_set]
    own_by_fact: dict[str, list[tuple[int, str]]] = {}
    for i in range(n_own):
        if i in kept_set:
            own_by_fact.setdefault(all_q[i].fact_id, []).append((i, all_q[i].split))
    # a method that selected no neuron for a fact has nothing to measure: it is listed, not averaged as 0
    empty = {m: sorted(fid for fid, n in per.items() if fid in relation and not n) for m, per in sets.items()}
    jobs = [(m, fid, name, factor) for m, per_fact in sets.items() for fid in per_fact
            if fid in relation and per_fact[fid] for name, factor in interventions.items()]
    order = sorted(run_ids)
    measured = {fid: assign_groups(relation[fid], tokens.get(fid, {}), own_by_fact.get(fid, []), probes,
                                   max_other=max_unrelated, max_same=max_same_relation,
                                   generator=seeded_generator(seed, order.index(fid)))
                for fid in sorted({fid for _, fid, _, _ in jobs})}
    cells = [(job, i, group) for job in jobs for i, group in measured[job[1]]]
    rows_sets = [(list(sets[m][fid]), factor) for (m, fid, _, factor), _, _ in cells]
    p1, _, t1 = masked_answer_pass(model, [all_q[i].encoded for _, i, _ in cells], rows_sets, batch_size=batch_size,
                                   first_token_only=first_token_only, progress=progress and "lakn evaluate")
    rows = []
    for j, ((method, target, name, _), i, group) in enumerate(cells):
        q = all_q[i]
        before, after = float(p0[i]), float(p1[j])
        rows.append(dict(method=method, intervention=name, target=target, fact_id=q.fact_id,
                         kind=KIND_OF_GROUP[group], group=group, language=q.language, split=q.split,
                         p_before=before, p_after=after, change=change_rate(before, after),
                         top1_kept=int(int(t1[j]) == int(t0[i])), n_neurons=len(sets[method][target])))
    kept_q = [all_q[i] for i in kept if i < n_own]
    config = dict(
        interventions=dict(interventions), top_k_answer=top_k_answer, max_queries=max_queries, position=position,
        max_unrelated=max_unrelated, max_same_relation=max_same_relation, probe_queries=probe_queries, seed=seed,
        first_token_only=first_token_only, n_queries=n_own, n_kept=len(kept_q),  # the targets' own queries
        kept_by_split={s: sum(1 for q in kept_q if q.split == s) for s in SPLITS},
        queries_by_split={s: sum(1 for q in own_q if q.split == s) for s in SPLITS},
        facts_kept=sorted(own_by_fact),
        n_neurons={m: {fid: len(n) for fid, n in per.items()} for m, per in sets.items()},
        no_neurons=empty,
        groups=list(GROUPS),
        unrelated=dict(fact_ids=[f.fact_id for f in others], seed=seed, per_relation=unrelated_per_relation,
                       sampled=unrelated is None, pool=len(pool), n_probe_queries=len(probe_q),
                       n_probe_kept=len(probes)),
        localization=(result.config if result is not None else None),
    )
    return ChangeRateResult(rows, config)
