"""New-knowledge injection: teach made-up facts through neurons in one language, recall them in others."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from .._progress import progress as _progress
from ..editing import activation_neurons, edit_fact
from ..facts import Fact, load_facts
from ..probability import batch_answer_probability, top1_tokens
from ..results import ResultTable
from ..selection import random_control
from ..splits import evaluation_queries

__all__ = ["InjectionResult", "injection_experiment"]


@dataclass
class InjectionResult(ResultTable):
    """New-knowledge injection, one row per (neuron set, fictional fact, query; plus locality rows)."""

    def _summarize(self, df):
        rec = df[df["metric"] == "recall"]
        a = rec.groupby(["neurons", "language"]).agg(p_before=("p_before", "mean"), p_after=("p_after", "mean"),
                                                      top1=("top1", "mean"), rank_after=("rank_after", "median"))
        loc = df[df["metric"] == "locality"].groupby("neurons").agg(locality=("success", "mean"))
        return a.join(loc, on="neurons")


def injection_experiment(
    model,
    fictional: Sequence[Fact] | None = None,
    *,
    language: str = "en",
    languages: Sequence[str] | None = None,
    unrelated: Sequence[Fact] = (),
    k: int = 20,
    steps: int = 20,
    lr: float = 0.5,
    preserve: Sequence[Fact] = (),
    locality_weight: float = 1.0,
    target_prob: float | None = None,
    seed: int = 0,
    batch_size: int = 16,
    progress: bool = True,
) -> InjectionResult:
    """Teach each fictional fact (default: ``load_facts("fictional")``, facts no model can know) through ``k`` neurons with ``language`` queries only, then query
    it in every language (recall) and check ``unrelated`` facts keep their top-1 (locality).
    ``preserve`` facts (keep them apart from ``unrelated``) give the KL locality term of
    :func:`lakn.edit_fact`, one ``language`` query each; ``target_prob`` stops training early.

    Neuron sets: ``activation`` (:func:`lakn.editing.activation_neurons` over ``languages``:
    active on the subject in every language; the LAKN-style choice for an unknown fact) and
    ``random`` (matched per layer). Every edit is undone.
    """
    from ..models import is_masked_lm

    fictional = load_facts("fictional") if fictional is None else fictional
    causal = not is_masked_lm(model)
    d_mlp = int(model.cfg.d_mlp)
    other_q = evaluation_queries(model, unrelated, languages=languages, max_queries=1, causal=causal) if unrelated else []
    other_enc = [q.encoded for q in other_q]
    top0 = top1_tokens(model, other_enc, batch_size) if other_q else []
    overlap = {f.fact_id for f in preserve} & {f.fact_id for f in unrelated}
    if overlap:
        raise ValueError(f"preserve and unrelated facts must differ (locality is measured on unseen facts): {sorted(overlap)}")
    keep = [q for f in preserve for q in f.queries(language, causal=causal)[:1]]
    rows = []
    for i, fact in enumerate(_progress(list(fictional), progress, "lakn inject")):
        langs = [l for l in (languages or fact.languages) if l in fact.templates]
        qs = evaluation_queries(model, [fact], languages=langs, max_queries=None, causal=causal)
        enc = [q.encoded for q in qs]
        p0, r0 = batch_answer_probability(model, enc, batch_size=batch_size)
        chosen = activation_neurons(model, fact, langs, k)
        for name, neurons in (("activation", chosen), ("random", random_control(chosen, d_mlp, seed, i))):
            with edit_fact(model, fact, {language: fact.answers[language]}, neurons, language=language, steps=steps,
                           lr=lr, preserve=keep, locality_weight=locality_weight, target_prob=target_prob) as edit:
                p1, r1 = batch_answer_probability(model, enc, batch_size=batch_size)
                top1 = top1_tokens(model, other_enc, batch_size) if other_q else []
            for j, q in enumerate(qs):
                rows.append(dict(neurons=name, fact_id=fact.fact_id, metric="recall", language=q.language,
                                 trained=q.language == language, prompt=q.prompt, p_before=float(p0[j]),
                                 p_after=float(p1[j]), rank_before=int(r0[j]), rank_after=int(r1[j]),
                                 top1=float(r1[j] == 0), n_neurons=len(neurons), steps_run=len(edit.history)))
            for j, q in enumerate(other_q):
                rows.append(dict(neurons=name, fact_id=fact.fact_id, metric="locality", language=q.language,
                                 prompt=q.prompt, other_fact=q.fact_id, success=float(top0[j] == top1[j]),
                                 n_neurons=len(neurons)))
    return InjectionResult(rows, dict(language=language, languages=list(languages or []), k=k, steps=steps, lr=lr,
                                      preserve=[f.fact_id for f in preserve], locality_weight=locality_weight,
                                      target_prob=target_prob, seed=seed,
                                      selection="activation_neurons: min over languages of layer-normalised |act|",
                                      fictional=[f.fact_id for f in fictional]))
