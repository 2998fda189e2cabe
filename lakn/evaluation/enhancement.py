"""Knowledge enhancement: build a fact's neurons from the languages the model gets right, enhance
them, and measure the languages it gets wrong."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from .._progress import progress as _progress
from ..facts import Fact
from ..interventions import enhance
from ..probability import batch_answer_probability, change_rate
from ..results import LocalizationResult, ResultTable
from ..selection import random_control, select_neurons
from ..splits import evaluation_queries

__all__ = ["EnhancementResult", "enhancement_experiment"]


@dataclass
class EnhancementResult(ResultTable):
    """Knowledge enhancement, one row per (neuron set, fact, query in a language the model got wrong)."""

    def _summarize(self, df):
        df = df.assign(fixed=(df["rank_after"] == 0).astype(float), rank_drop=df["rank_before"] - df["rank_after"])
        return df.groupby(["neurons", "language"]).agg(change=("change", "mean"), fixed=("fixed", "mean"),
                                                       rank_drop=("rank_drop", "mean"), n=("change", "size"),
                                                       facts=("fact_id", "nunique"))


def enhancement_experiment(
    model,
    result: LocalizationResult,
    facts: Sequence[Fact],
    *,
    factor: float = 2.0,
    languages: Sequence[str] | None = None,
    max_queries: int | None = 3,
    threshold: float | None = None,
    top_k: int | None = None,
    seed: int = 0,
    first_token_only: bool = False,
    right_rank: int = 1,
    batch_size: int = 16,
    progress: bool = True,
) -> EnhancementResult:
    """For each fact, find the languages the model gets right (first answer token within the top
    ``right_rank``, default top-1, on most of the language's queries) and wrong; build the fact's
    neurons from the right languages only (``select_neurons`` on the mean of those languages'
    scores ``s_l`` from the localisation), enhance them by ``factor`` and measure the wrong
    languages' queries. A ``random`` set matched per layer
    is the control. Languages the localisation did not see count as wrong or right like any other.
    """
    from ..models import is_masked_lm

    causal = not is_masked_lm(model)
    threshold = result.config.get("threshold", 0.2) if threshold is None else threshold
    top_k = result.config.get("top_k") if top_k is None else top_k
    by_id = {f.fact_id: f for f in facts}
    if right_rank < 1:
        raise ValueError(f"right_rank must be >= 1, got {right_rank}")
    rows = []
    for i, fid in enumerate(_progress(result.fact_ids, progress, "lakn enhance")):
        if fid not in by_id:
            continue
        qs = evaluation_queries(model, [by_id[fid]], result=result, languages=languages, max_queries=max_queries,
                                causal=causal)
        if not qs:
            continue
        p0, r0 = batch_answer_probability(model, [q.encoded for q in qs], batch_size=batch_size, first_token_only=first_token_only)
        langs = sorted({q.language for q in qs})
        right = [l for l in langs if (r0[[j for j, q in enumerate(qs) if q.language == l]] < right_rank).float().mean() > 0.5]
        wrong_idx = [j for j, q in enumerate(qs) if q.language not in right]
        per_lang = result.records[fid].per_language
        usable = [l for l in right if l in per_lang]
        if not usable or not wrong_idx:
            continue
        score = torch.stack([per_lang[l] for l in usable]).mean(0)
        chosen = select_neurons(score, threshold, top_k)
        if not chosen:
            continue
        sets = {"lakn_from_right": chosen, "random": random_control(chosen, result.d_mlp, seed, i)}
        wrong = [qs[j].encoded for j in wrong_idx]
        for name, neurons in sets.items():
            with enhance(model, neurons, factor=factor):
                p1, r1 = batch_answer_probability(model, wrong, batch_size=batch_size, first_token_only=first_token_only)
            for k, j in enumerate(wrong_idx):
                before = float(p0[j])
                rows.append(dict(neurons=name, fact_id=fid, language=qs[j].language, split=qs[j].split,
                                 right_languages=",".join(usable), p_before=before, p_after=float(p1[k]),
                                 change=change_rate(before, float(p1[k])),
                                 rank_before=int(r0[j]), rank_after=int(r1[k]), n_neurons=len(neurons)))
    return EnhancementResult(rows, dict(factor=factor, threshold=threshold, top_k=top_k, max_queries=max_queries,
                                        right_rank=right_rank,
                                        right=f"first answer token in the top {right_rank} on most queries of the language"))
