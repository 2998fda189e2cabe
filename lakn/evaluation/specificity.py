"""The fair specificity protocol's parts: which queries a fact's neurons are measured on, one batched
pass with a different neuron set per row, and the summary over facts (docs/method.md §7.4).

For a target fact and a neuron set, the queries fall into :data:`GROUPS`:

- the fact's own queries, by split: ``seen`` (the localisation attributed them), ``heldout_paraphrase``,
  ``heldout_language`` (:mod:`lakn.splits`);
- ``same_relation_different_answer``: queries of other facts of the fact's relation whose first answer
  token differs from the fact's in that language; ``same_relation_same_answer``: those where it is the
  same (reported apart: zeroing a fact's neurons should lower them);
- ``other_relations``: queries of facts of other relations, without those whose first answer token is
  the fact's in that language.

The other facts are never the localisation's own facts (they were its reference): :func:`unrelated_facts`
draws a seeded sample of the remaining facts, capped per relation. Only queries the model answers before
the intervention are measured (first answer token in the top ``top_k_answer``), as everywhere in lakn.
"""

from __future__ import annotations

import math
import zlib
from typing import Iterable, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from .._progress import progress as _progress
from ..facts import Fact
from ..hooks import Neuron, hook_name
from ..tokens import EncodedQuery, logits_at, model_device

__all__ = ["GROUPS", "OWN_GROUPS", "KIND_OF_GROUP", "unrelated_facts", "masked_answer_pass", "assign_groups",
           "summarize_groups", "format_groups", "locality_by_margin"]

OWN_GROUPS = ("seen", "heldout_paraphrase", "heldout_language")
GROUPS = OWN_GROUPS + ("same_relation_different_answer", "same_relation_same_answer", "other_relations")
KIND_OF_GROUP = {**{g: "related" for g in OWN_GROUPS}, "same_relation_different_answer": "same_relation",
                 "same_relation_same_answer": "same_answer", "other_relations": "other_relation"}
"""The ``kind`` column (read by older figures and reports) of each group."""


def unrelated_facts(
    pool: Sequence[Fact], *, exclude: Iterable[str] = (), per_relation: int | None = 8, seed: int = 0
) -> list[Fact]:
    """A seeded sample of ``pool`` without the ``exclude`` facts (a localisation's own): at most
    ``per_relation`` facts of each relation, shuffled per relation by ``seed`` (the same ids for the
    same pool and seed, whatever order the pool comes in). Returned in relation order, then sample order.

    >>> others = unrelated_facts(all_facts, exclude=result.fact_ids, per_relation=8, seed=0)
    """
    if per_relation is not None and per_relation < 0:
        raise ValueError(f"per_relation must be >= 0 or None, got {per_relation}")
    skip = set(exclude)
    by_relation: dict[str, list[Fact]] = {}
    for fact in sorted(pool, key=lambda f: f.fact_id):
        if fact.fact_id not in skip:
            by_relation.setdefault(fact.relation, []).append(fact)
    out: list[Fact] = []
    for relation in sorted(by_relation):
        group = by_relation[relation]
        g = torch.Generator().manual_seed(zlib.crc32(f"{seed}|unrelated|{relation}".encode()))
        order = torch.randperm(len(group), generator=g).tolist()
        out += [group[i] for i in order[:per_relation]]
    return out


def _row_masks(rows: Sequence[tuple[Sequence[Neuron], float]], d_mlp: int) -> dict[int, Tensor]:
    """{layer: [row, d_mlp] multiplicative mask}: 1 everywhere but each row's neurons (its factor there)."""
    layers = sorted({int(layer) for neurons, _ in rows for layer, _ in neurons})
    masks = {layer: torch.ones(len(rows), d_mlp) for layer in layers}
    for r, (neurons, factor) in enumerate(rows):
        for layer, idx in neurons:
            masks[int(layer)][r, int(idx)] = float(factor)
    return masks


def _mask_hook(mask: Float[Tensor, "batch d_mlp"]):
    def hook(activation: Float[Tensor, "batch pos d_mlp"], hook=None) -> Tensor:
        return activation * mask[:, None, :].to(device=activation.device, dtype=activation.dtype)

    return hook


def masked_answer_pass(
    model,
    encoded: Sequence[EncodedQuery],
    rows: Sequence[tuple[Sequence[Neuron], float]] | None = None,
    *,
    batch_size: int = 16,
    first_token_only: bool = False,
    progress: str | bool = False,
) -> tuple[Float[Tensor, "query"], Int[Tensor, "query"], Int[Tensor, "query"]]:
    """P(answer), rank of the first answer token and the top-1 token at the first answer position, for
    many causal-LM queries in right-padded batches; row ``i`` runs with ``rows[i] = (neurons, factor)``
    scaled at all positions (``factor`` 0 zeroes them), so one batch can hold many neuron sets.

    P is the geometric mean over answer tokens (teacher forced), or the first token's with
    ``first_token_only``, as :func:`lakn.probability.batch_answer_probability` computes it. The hooks
    live only inside each forward pass (``model.hooks``), so none stays behind, also on error.
    ``progress``: a label (or True) shows a progress bar over the batches.
    """
    if rows is not None and len(rows) != len(encoded):
        raise ValueError(f"rows has {len(rows)} entries for {len(encoded)} queries: give one (neurons, factor) per query")
    if any(e.masked for e in encoded):
        raise ValueError("masked_answer_pass measures causal LMs only (a masked-LM query was given)")
    answers = [e.answer[:1] if first_token_only else e.answer for e in encoded]
    seqs = [torch.cat([e.prompt, a[:-1]]) for e, a in zip(encoded, answers)]
    device = model_device(model)
    pad = model.tokenizer.pad_token_id if getattr(model.tokenizer, "pad_token_id", None) is not None else 0
    d_mlp = int(model.cfg.d_mlp)
    probs = torch.zeros(len(encoded))
    ranks = torch.zeros(len(encoded), dtype=torch.long)
    top1 = torch.zeros(len(encoded), dtype=torch.long)
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    starts = range(0, len(order), batch_size)
    for start in _progress(starts, bool(progress), progress if isinstance(progress, str) else "forward passes"):
        chunk = order[start: start + batch_size]
        tokens = torch.full((len(chunk), max(len(seqs[i]) for i in chunk)), pad, dtype=torch.long)
        for r, i in enumerate(chunk):
            tokens[r, : len(seqs[i])] = seqs[i]
        spans = {i: range(len(encoded[i].prompt) - 1, len(encoded[i].prompt) - 1 + len(answers[i])) for i in chunk}
        positions = sorted({p for i in chunk for p in spans[i]})
        column = {p: j for j, p in enumerate(positions)}
        masks = _row_masks([rows[i] for i in chunk], d_mlp) if rows is not None else {}
        hooks = [(hook_name(layer), _mask_hook(mask)) for layer, mask in masks.items()]
        with torch.no_grad(), model.hooks(fwd_hooks=hooks):
            logits = logits_at(model, tokens.to(device), torch.tensor(positions, dtype=torch.long, device=device))
        for r, i in enumerate(chunk):
            log_probs = logits[r, [column[p] for p in spans[i]]].float().log_softmax(-1)
            answer = answers[i].to(log_probs.device)
            probs[i] = float(log_probs.gather(-1, answer[:, None])[:, 0].mean().exp())
            ranks[i] = int((log_probs[0] > log_probs[0, answer[0]]).sum())
            top1[i] = int(log_probs[0].argmax())
    return probs, ranks, top1


def assign_groups(
    target_relation: str,
    target_tokens: dict[str, set[int]],
    own: Sequence[tuple[int, str]],
    probes: Sequence[tuple[int, str, str, int]],
    *,
    max_other: int | None = 16,
    max_same: int | None = None,
    generator: torch.Generator | None = None,
) -> list[tuple[int, str]]:
    """The (query index, group) pairs one target is measured on.

    ``own``: (index, split) of the target's answered queries; ``probes``: (index, relation, language,
    first answer token) of the other facts' answered queries; ``target_tokens``: the target's first
    answer token(s) per language. ``max_other`` / ``max_same`` cap the other-relation and the
    same-relation different-answer queries with one sample drawn from ``generator`` (the same for
    every neuron set of the target); same-answer queries are all kept.
    """
    out = [(i, split) for i, split in own]
    diff: list[int] = []
    same: list[int] = []
    other: list[int] = []
    for i, relation, language, token in probes:
        shares = token in target_tokens.get(language, set())
        if relation == target_relation:
            (same if shares else diff).append(i)
        elif not shares:
            other.append(i)
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    for group, idx, cap in (("same_relation_different_answer", diff, max_same), ("same_relation_same_answer", same, None),
                            ("other_relations", other, max_other)):
        if cap is not None and len(idx) > cap:
            idx = sorted(idx[j] for j in torch.randperm(len(idx), generator=g)[:cap].tolist())
        out += [(i, group) for i in idx]
    return out


def _legacy_groups(df):
    """Rows written before the protocol (no ``group``): own queries by split, other kinds as they were."""
    df = df.copy()
    legacy = {"same_relation": "same_relation", "other_relation": "other_relations"}
    df["group"] = [split if kind == "related" else legacy.get(kind, kind)
                   for kind, split in zip(df["kind"], df.get("split", ["seen"] * len(df)))]
    return df


def _mean_se(values) -> tuple[float, float]:
    vals = [float(v) for v in values if v == v]
    if not vals:
        return float("nan"), float("nan")
    mu = sum(vals) / len(vals)
    if len(vals) < 2:
        return mu, float("nan")
    var = sum((v - mu) ** 2 for v in vals) / (len(vals) - 1)
    return mu, math.sqrt(var / len(vals))


def summarize_groups(df, *, by_language: bool = False, keys: Sequence[str] = ("method", "intervention")):
    """Mean ± standard error over target facts of the change rate and of top-1 retention, per ``keys``,
    group (and language with ``by_language``), with the number of facts and queries behind each cell.

    A fact's value is the mean over languages of the mean over its queries in that language (each fact
    and language weighs the same); per language, the mean over the fact's queries there. Columns:
    ``*keys, group, [language], change, change_se, retention, retention_se, n_facts, n_queries``.
    """
    import pandas as pd

    if df.empty:
        return pd.DataFrame(columns=[*keys, "group", *(["language"] if by_language else []), "change", "change_se",
                                     "retention", "retention_se", "n_facts", "n_queries"])
    if "group" not in df.columns:
        df = _legacy_groups(df)
    if "top1_kept" not in df.columns:
        df = df.assign(top1_kept=float("nan"))
    keys = list(keys)
    per_lang = (df.groupby([*keys, "group", "target", "language"], as_index=False, sort=False)
                  .agg(change=("change", "mean"), retention=("top1_kept", "mean"), n=("change", "size")))
    cell_keys = [*keys, "group", *(["language"] if by_language else [])]
    if by_language:
        per_fact = per_lang
    else:
        per_fact = (per_lang.groupby([*keys, "group", "target"], as_index=False, sort=False)
                            .agg(change=("change", "mean"), retention=("retention", "mean"), n=("n", "sum")))
    rows = []
    for cell, part in per_fact.groupby(cell_keys, sort=False):
        cell = cell if isinstance(cell, tuple) else (cell,)
        mu, se = _mean_se(part["change"])
        rmu, rse = _mean_se(part["retention"])
        rows.append(dict(zip(cell_keys, cell), change=mu, change_se=se, retention=rmu, retention_se=rse,
                         n_facts=int(part["target"].nunique()), n_queries=int(part["n"].sum())))
    out = pd.DataFrame(rows)
    order = {g: i for i, g in enumerate(GROUPS)}
    out["_g"] = out["group"].map(lambda g: order.get(g, len(order)))
    return out.sort_values([*keys, "_g"], kind="stable").drop(columns="_g").reset_index(drop=True)


def format_groups(summary, *, value: str = "change", index: Sequence[str] = ("method",), counts: bool = True):
    """A printable frame of :func:`summarize_groups`: rows ``index``, one column per group, cells
    ``mean ± se`` (``value`` "change" or "retention") and, with ``counts``, ``(facts f / queries q)``."""
    import pandas as pd

    if summary.empty:
        return pd.DataFrame()
    index = list(index)

    def cell(r) -> str:
        mu, se = r[value], r[f"{value}_se"]
        sign = "+" if value == "change" else ""
        text = "n/a" if mu != mu else f"{mu:{sign}.3f}" + ("" if se != se else f" ± {se:.3f}")
        return text + (f" ({r['n_facts']}f/{r['n_queries']}q)" if counts else "")

    s = summary.assign(cell=[cell(r) for _, r in summary.iterrows()])
    wide = s.pivot_table(index=index, columns="group", values="cell", aggfunc="first", sort=False)
    cols = [g for g in GROUPS if g in wide.columns] + [g for g in wide.columns if g not in GROUPS]
    return wide[cols].fillna("")


def locality_by_margin(result, edges: Sequence[float] = (0.25, 1.0)):
    """Top-1 retention of an edit's or injection's locality rows, split by how far each unrelated
    query's top-1 token led the runner-up before the change (``margin_before``, nats).

    Top-1 retention counts a near-tie that flips as much as a confident answer that moved; the
    split says which an edit costs (results.md run 14: most of an injection's lost answers led by
    under 0.25 nat). ``result``: an :class:`~lakn.evaluation.EditingResult` /
    :class:`~lakn.evaluation.InjectionResult` or its ``to_dataframe()``. Bins are ``[0, e1)``,
    ``[e1, e2)``, ..., ``[e_last, inf]``. Returns one row per method, neuron set, batch size and
    locality group (where the rows have them) and non-empty margin bin: ``locality`` (share kept)
    and ``n`` (queries). Rows without a margin (saved before lakn recorded it) are left out."""
    import pandas as pd

    df = result.to_dataframe() if hasattr(result, "to_dataframe") else result
    bounds = sorted({float(e) for e in edges})
    if not bounds or bounds[0] <= 0 or not math.isfinite(bounds[-1]):
        raise ValueError(f"margin edges must be positive, finite nats, got {list(edges)}")
    if "metric" not in df.columns or "margin_before" not in df.columns:
        raise ValueError("no locality rows with margin_before (results saved before lakn recorded margins lack it)")
    loc = df[(df["metric"] == "locality") & df["margin_before"].notna()]
    lead = loc["margin_before"].astype(float).clip(lower=0.0, upper=math.nextafter(math.inf, 0))  # inf: the last bin
    bins = pd.cut(lead, [0.0, *bounds, math.inf], right=False)
    keys = _row_keys(loc, ("method", "neurons", "batch", "group"))
    out = loc.assign(margin=bins).groupby(keys + ["margin"], observed=True, dropna=False)["success"].agg(["mean", "size"])
    return out.rename(columns={"mean": "locality", "size": "n"}).reset_index()


def generality_by_prior(result, edges: Sequence[float] = (0.01, 0.05, 0.2)):
    """Generality of an edit split by language and by how likely the model found the *old* answer
    on each generality query before the edit (``p_old_before``: the prior; first answer token).

    An edit at the subject replaces what the model recalls about it; a language where the model
    scarcely recalled the fact gives it little to replace (results.md run 20: on Gemma 3 270M the
    median prior is .21 in fr, .002 in zh, and generality follows it). ``result``: an
    :class:`~lakn.evaluation.EditingResult` or its ``to_dataframe()``. Bins are ``[0, e1)``, ...,
    ``[e_last, inf)`` (priors up to 1). Returns one row per method, neuron set, batch size, language and non-empty bin:
    ``generality`` (new answer top-1), ``p_new_gt_old`` (P(new) > P(old) after) and ``n``."""
    import pandas as pd

    df = result.to_dataframe() if hasattr(result, "to_dataframe") else result
    bounds = sorted({float(e) for e in edges})
    if not bounds or bounds[0] <= 0 or bounds[-1] >= 1:
        raise ValueError(f"prior edges must be probabilities strictly between 0 and 1, got {list(edges)}")
    if "metric" not in df.columns or "p_old_before" not in df.columns:
        raise ValueError("no generality rows with p_old_before (not an editing result's rows)")
    gen = df[(df["metric"] == "generality") & df["p_old_before"].notna()]
    bins = pd.cut(gen["p_old_before"].astype(float).clip(0.0, 1.0), [0.0, *bounds, math.inf], right=False)
    keys = _row_keys(gen, ("method", "neurons", "batch"))
    out = gen.assign(prior=bins).groupby(keys + ["language", "prior"], observed=True)[["top1", "success"]]
    out = out.agg(generality=("top1", "mean"), p_new_gt_old=("success", "mean"), n=("top1", "size"))
    return out.reset_index()


def _row_keys(frame, names: Sequence[str]) -> list[str]:
    """The columns of ``names`` that ``frame`` has and fills somewhere: what a split groups its rows by."""
    return [k for k in names if k in frame.columns and frame[k].astype(str).ne("").any()]
