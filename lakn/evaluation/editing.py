"""Cross-lingual knowledge editing: edit a fact in one language through a neuron set's W_out rows,
measure reliability (that language), generality (the others) and locality (other facts)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch

from .._progress import progress as _progress
from ..editing import edit_fact
from ..facts import Fact, FactsError
from ..hooks import Neuron
from ..probability import batch_answer_probability, change_rate, top1_tokens
from ..results import ResultTable
from ..selection import seeded_generator
from ..splits import evaluation_queries
from ..tokens import encode_query

__all__ = ["EditingResult", "counterfactuals", "editing_experiment"]


@dataclass
class EditingResult(ResultTable):
    """Cross-lingual editing, one row per (neuron set, edited fact, query).

    ``metric``: reliability (edit language), generality (other languages) or locality (other
    facts). For reliability / generality ``success`` = P(new) > P(old) after the edit and
    ``top1`` = the new answer's first token is the top prediction; for locality ``success`` =
    the query's top-1 first token is unchanged and ``change`` its probability change rate.
    """

    def _summarize(self, df):
        eff = df[df["metric"] != "locality"]
        a = eff.groupby(["neurons", "metric", "language"])[["success", "top1"]].mean()
        loc = df[df["metric"] == "locality"].groupby(["neurons", "metric"])[["success"]].mean()
        loc["language"] = "*"
        loc = loc.set_index("language", append=True)
        import pandas as pd

        out = pd.concat([a, loc]).sort_index()
        out["n_neurons"] = df.groupby("neurons")["n_neurons"].mean().reindex(out.index.get_level_values(0)).values
        return out


def counterfactuals(facts: Sequence[Fact]) -> dict[str, dict[str, str]]:
    """A new answer for each fact: the answers of the next fact of the same relation with a
    different answer in every language (facts with no such partner get none)."""
    out = {}
    for f in facts:
        partners = [g for g in facts if g.relation == f.relation and g.fact_id != f.fact_id
                    and all(g.answers.get(l) and g.answers[l] != f.answers.get(l) for l in f.languages)]
        if partners:
            out[f.fact_id] = dict(partners[0].answers)
    return out



def editing_experiment(
    model,
    facts: Sequence[Fact],
    sets: Mapping[str, Mapping[str, Sequence[Neuron]]],
    *,
    new_answers: Mapping[str, Mapping[str, str]] | None = None,
    edit_language: str = "en",
    languages: Sequence[str] | None = None,
    steps: int = 10,
    lr: float = 0.5,
    max_queries: int | None = 3,
    n_preserve: int = 0,
    locality_weight: float = 1.0,
    target_prob: float | None = None,
    seed: int = 0,
    batch_size: int = 16,
    progress: bool = True,
) -> EditingResult:
    """Edit each fact to a new answer through each neuron set's W_out rows (Adam steps on those
    rows only, see :func:`lakn.edit_fact`) using ``edit_language`` queries; measure reliability,
    generality and locality; undo every edit. ``new_answers`` default: :func:`counterfactuals`.

    With ``n_preserve`` > 0 the edit also keeps the next-token distribution of that many other
    facts (one ``edit_language`` query each, a seeded sample) close to the original (KL term,
    ``locality_weight``); those facts are then left out of the locality measurement, so locality
    is always measured on facts the edit never saw. ``target_prob`` stops training early.

    Compare sets of the same size (e.g. LAKNs, language-specific neurons, random neurons matched
    per layer): build them with :func:`editing_sets`.
    """
    from ..models import is_masked_lm

    causal = not is_masked_lm(model)
    new_answers = dict(new_answers or counterfactuals(facts))
    by_id = {f.fact_id: f for f in facts}
    jobs = [(name, fid) for name, per in sets.items() for fid in per if fid in new_answers and per[fid]]
    rows = []
    contexts: dict[str, tuple] = {}

    def context(fid: str) -> tuple:
        """The fact's queries, preserve prompts, locality queries and their pre-edit numbers: the
        same for every neuron set, so computed once per fact."""
        if fid in contexts:
            return contexts[fid]
        fact = by_id[fid]
        langs = [l for l in (languages or fact.languages) if l in fact.templates and l in new_answers[fid]]
        own_old, own_new, meta = [], [], []
        for lang in langs:
            for q in fact.queries(lang, causal=causal)[:max_queries]:
                new_fact = Fact(fid, fact.relation, {lang: new_answers[fid][lang]}, {lang: (q.template,)})
                try:
                    old_enc = encode_query(model, q)
                    new_enc = encode_query(model, new_fact.queries(lang, causal=causal)[0])
                except (FactsError, IndexError):
                    continue
                own_old.append(old_enc)
                own_new.append(new_enc)
                meta.append((lang, q.prompt))
        rest = [f for f in facts if f.fact_id != fid]
        picked: list[Fact] = []
        if n_preserve > 0:  # the same sample for every neuron set of this fact
            g = seeded_generator(seed, list(by_id).index(fid))
            order = torch.randperm(len(rest), generator=g).tolist()
            picked = [rest[i] for i in order if rest[i].queries(edit_language, causal=causal)][:n_preserve]
        preserve = [f.queries(edit_language, causal=causal)[0] for f in picked]
        preserve_facts = {f.fact_id for f in picked}
        others = [q for q in evaluation_queries(model, [f for f in rest if f.fact_id not in preserve_facts],
                                                languages=languages, max_queries=1, causal=causal)]
        other_enc = [q.encoded for q in others]
        p_other0, _ = batch_answer_probability(model, other_enc, batch_size=batch_size) if others else (torch.zeros(0), None)
        top_other0 = top1_tokens(model, other_enc, batch_size) if others else []
        p_new0, _ = batch_answer_probability(model, own_new, batch_size=batch_size)
        p_old0, _ = batch_answer_probability(model, own_old, batch_size=batch_size)
        contexts[fid] = (meta, own_old, own_new, preserve, others, other_enc, p_other0, top_other0, p_new0, p_old0)
        return contexts[fid]

    for name, fid in _progress(jobs, progress, "lakn edit"):
        fact = by_id[fid]
        meta, own_old, own_new, preserve, others, other_enc, p_other0, top_other0, p_new0, p_old0 = context(fid)
        with edit_fact(model, fact, new_answers[fid], sets[name][fid], language=edit_language, steps=steps, lr=lr,
                       max_queries=max_queries, preserve=preserve, locality_weight=locality_weight,
                       target_prob=target_prob) as edit:
            p_new1, r_new1 = batch_answer_probability(model, own_new, batch_size=batch_size)
            p_old1, _ = batch_answer_probability(model, own_old, batch_size=batch_size)
            p_other1, _ = batch_answer_probability(model, other_enc, batch_size=batch_size) if others else (torch.zeros(0), None)
            top_other1 = top1_tokens(model, other_enc, batch_size) if others else []
            final_loss = edit.history[-1] if edit.history else float("nan")
            n_steps = len(edit.history)
        n = len(sets[name][fid])
        for i, (lang, prompt) in enumerate(meta):
            rows.append(dict(neurons=name, fact_id=fid, metric="reliability" if lang == edit_language else "generality",
                             language=lang, prompt=prompt, p_new_before=float(p_new0[i]), p_new_after=float(p_new1[i]),
                             p_old_before=float(p_old0[i]), p_old_after=float(p_old1[i]),
                             success=float(p_new1[i] > p_old1[i]), top1=float(r_new1[i] == 0), n_neurons=n,
                             final_loss=final_loss, steps_run=n_steps))
        for i, q in enumerate(others):
            before, after = float(p_other0[i]), float(p_other1[i])
            rows.append(dict(neurons=name, fact_id=fid, metric="locality", language=q.language, prompt=q.prompt,
                             other_fact=q.fact_id, p_before=before, p_after=after,
                             change=change_rate(before, after),
                             success=float(top_other0[i] == top_other1[i]), top1=float("nan"), n_neurons=n))
    config = dict(edit_language=edit_language, steps=steps, lr=lr, optimiser="adam on W_out rows", max_queries=max_queries,
                  n_preserve=n_preserve, locality_weight=locality_weight, target_prob=target_prob, seed=seed,
                  new_answers=new_answers, n_neurons={k: {f: len(v) for f, v in per.items()} for k, per in sets.items()})
    return EditingResult(rows, config)
