"""Measure what LAKNs do: probability change rates, honest splits, editing, enhancement, injection.

Every experiment returns a result dataclass holding one row per measurement plus the settings
that made it, with ``to_dataframe()`` (raw rows, for figures), ``table()`` (the summary the CLI
prints) and ``save(path)`` / ``load(path)`` as JSON.

Honest split: queries the localisation saw are ``seen``; other paraphrases in the localisation
languages are ``heldout_paraphrase``; languages the localisation never saw are
``heldout_language``. Only queries the model answers before any intervention (first answer token
within the top ``top_k_answer``) are scored, and how many were kept is reported.

Example::

    facts = lakn.load_facts("demo")
    split = lakn.split_facts(facts, holdout_share=0.5, holdout_languages=["de"], seed=0)
    result = lakn.localize(model, split.localization, languages=["en", "fr", "es"])
    rates = lakn.change_rates(model, {"matrice": result.lakn}, facts, result=result)
    rates.table()
"""

from __future__ import annotations

import dataclasses
import json
import zlib
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Mapping, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from .facts import Fact, FactsError, load_facts
from .hooks import Neuron
from .interventions import activation_neurons, edit_fact, enhance, intervene
from .results import LocalizationResult, write_json_atomic
from .scoring import random_neurons, select_neurons
from .tokens import EncodedQuery, encode_query, logits_at

__all__ = [
    "Split",
    "split_facts",
    "EvalQuery",
    "evaluation_queries",
    "query_probabilities",
    "neuron_sets",
    "change_rates",
    "ChangeRateResult",
    "editing_experiment",
    "EditingResult",
    "enhancement_experiment",
    "EnhancementResult",
    "injection_experiment",
    "InjectionResult",
    "FICTIONAL_FACTS",
    "localize_methods",
    "load_runs",
]

SPLITS = ("seen", "heldout_paraphrase", "heldout_language")


# --------------------------------------------------------------------------- honest split


@dataclass
class Split:
    """Facts cut into what localisation may see and what evaluation measures on.

    ``localization`` holds new :class:`Fact` objects with only the localisation templates (pass
    them to :func:`lakn.localize`); ``evaluation`` holds the held-out templates (held-out
    paraphrases of every language, and every template of a held-out language).
    """

    localization: list[Fact]
    evaluation: list[Fact]
    holdout_languages: list[str]
    holdout_share: float
    seed: int


def _subset(fact: Fact, keep: dict[str, list[int]]) -> Fact:
    templates = {lang: tuple(fact.templates[lang][i] for i in idx) for lang, idx in keep.items() if idx}
    causal_ok = None
    if fact.causal_ok is not None:  # indices refer to template positions: renumber them
        causal_ok = {lang: tuple(j for j, i in enumerate(idx) if i in fact.causal_ok.get(lang, ()))
                     for lang, idx in keep.items() if idx}
    return Fact(fact.fact_id, fact.relation, dict(fact.answers), templates, dict(fact.subjects),
                fact.relation_label, dict(fact.other_answers), causal_ok)


def split_facts(
    facts: Sequence[Fact],
    *,
    holdout_share: float = 0.5,
    holdout_languages: Sequence[str] = (),
    seed: int = 0,
    causal: bool = True,
) -> Split:
    """Deterministically split each fact's paraphrases into localisation and evaluation queries.

    Per (fact, language) the usable templates are shuffled with a generator seeded by ``seed``,
    the fact id and the language, and ``round(holdout_share * n)`` of them are held out (at least
    one is kept for localisation and, when there are two or more, at least one is held out).
    Every template of a ``holdout_languages`` language goes to evaluation.

    >>> split = split_facts(facts, holdout_share=0.5, holdout_languages=["de"], seed=0)
    """
    if not 0.0 <= holdout_share < 1.0:
        raise ValueError(f"holdout_share must be in [0, 1), got {holdout_share}")
    held_langs = list(holdout_languages)
    loc, ev = [], []
    for fact in facts:
        keep_loc: dict[str, list[int]] = {}
        keep_ev: dict[str, list[int]] = {}
        for lang in fact.languages:
            usable = [i for i, t in enumerate(fact.templates[lang])
                      if any(q.template == t for q in fact.queries(lang, causal=causal))]
            if lang in held_langs:
                keep_ev[lang] = usable
                continue
            g = torch.Generator().manual_seed(zlib.crc32(f"{seed}|{fact.fact_id}|{lang}".encode()))
            order = [usable[i] for i in torch.randperm(len(usable), generator=g).tolist()]
            n_out = round(holdout_share * len(order))
            if len(order) >= 2 and holdout_share > 0:
                n_out = min(max(n_out, 1), len(order) - 1)
            else:
                n_out = 0
            keep_ev[lang] = sorted(order[:n_out])
            keep_loc[lang] = sorted(order[n_out:])
        loc.append(_subset(fact, keep_loc))
        ev.append(_subset(fact, keep_ev))
    return Split(loc, ev, held_langs, holdout_share, seed)


# --------------------------------------------------------------------------- evaluation queries


@dataclass(frozen=True)
class EvalQuery:
    """One query to measure on, with where it stands in the split."""

    fact_id: str
    relation: str
    language: str
    prompt: str
    answer: str
    split: str  # seen / heldout_paraphrase / heldout_language
    encoded: EncodedQuery


def evaluation_queries(
    model,
    facts: Sequence[Fact],
    *,
    result: LocalizationResult | None = None,
    languages: Sequence[str] | None = None,
    max_queries: int | None = 3,
    causal: bool = True,
) -> list[EvalQuery]:
    """The queries to measure: every usable query of ``facts`` in ``languages`` (default: all the
    facts' languages), at most ``max_queries`` per (fact, language, split), labelled by split.

    With a ``result``, a query is ``seen`` when the localisation attributed it (same language and
    prompt), ``heldout_paraphrase`` when its language was localised but not the query, else
    ``heldout_language``. Without one every query counts as ``seen``.
    """
    seen: dict[str, set[tuple[str, str]]] = {}
    loc_langs: set[str] = set()
    if result is not None:
        loc_langs = set(result.languages)
        seen = {fid: {(r["language"], r["prompt"]) for r in rec.queries} for fid, rec in result.records.items()}
    out: list[EvalQuery] = []
    for fact in facts:
        for lang in languages or fact.languages:
            if lang not in fact.templates or not fact.answers.get(lang):
                continue
            counts: dict[str, int] = {}
            for q in fact.queries(lang, causal=causal):
                if result is None:
                    split = "seen"
                elif (lang, q.prompt) in seen.get(fact.fact_id, set()):
                    split = "seen"
                elif lang in loc_langs:
                    split = "heldout_paraphrase"
                else:
                    split = "heldout_language"
                if max_queries is not None and counts.get(split, 0) >= max_queries:
                    continue
                try:
                    enc = encode_query(model, q)
                except FactsError:
                    continue
                counts[split] = counts.get(split, 0) + 1
                out.append(EvalQuery(fact.fact_id, fact.relation, lang, q.prompt, q.answer, split, enc))
    return out


def query_probabilities(
    model, encoded: Sequence[EncodedQuery], *, batch_size: int = 16, first_token_only: bool = False
) -> tuple[Float[Tensor, "query"], Int[Tensor, "query"]]:
    """P(answer) (geometric mean over answer tokens, teacher forced) and the rank of the first
    answer token, for many queries in few forward passes. Runs under whatever hooks are active.

    Sequences are right-padded: in a causal model padding after a sequence cannot change its
    logits, so no attention mask is needed. Only the positions that predict answer tokens are
    unembedded (``logits_to_keep``), which matters with Gemma 3's 262k-token vocabulary. Matches
    :func:`lakn.tokens.answer_probabilities` (a test checks it). ``first_token_only``: P of the
    answer's first token (as localised with ``first_token_only``); runs the prompts alone and
    unembeds far fewer positions.
    """
    if first_token_only:
        encoded = [e if len(e.answer) == 1 or e.masked else dataclasses.replace(e, answer=e.answer[:1]) for e in encoded]
    device = next(model.parameters()).device
    pad = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else 0
    probs = torch.zeros(len(encoded))
    ranks = torch.zeros(len(encoded), dtype=torch.long)
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].prompt) + len(encoded[i].answer))
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        seqs = [torch.cat([encoded[i].prompt, encoded[i].answer[:-1]]) for i in chunk]
        width = max(len(s) for s in seqs)
        tokens = torch.full((len(seqs), width), pad, dtype=torch.long)
        for row, s in enumerate(seqs):
            tokens[row, : len(s)] = s
        positions = sorted({p for i in chunk for p in range(len(encoded[i].prompt) - 1, len(seqs[chunk.index(i)]))})
        keep = torch.tensor(positions, dtype=torch.long)
        with torch.no_grad():
            logits = logits_at(model, tokens.to(device), keep.to(device))
        column = {p: j for j, p in enumerate(positions)}
        log_probs = logits.float().log_softmax(-1)
        for row, i in enumerate(chunk):
            enc = encoded[i]
            cols = [column[p] for p in range(len(enc.prompt) - 1, len(enc.prompt) - 1 + len(enc.answer))]
            lp = log_probs[row, cols].gather(-1, enc.answer.to(log_probs.device)[:, None])[:, 0]
            probs[i] = float(lp.mean().exp())
            first = log_probs[row, cols[0]]
            ranks[i] = int((first > first[enc.answer[0]]).sum())
    return probs, ranks


# --------------------------------------------------------------------------- neuron sets


def neuron_sets(
    results: Mapping[str, LocalizationResult],
    *,
    random_like: str | None = "matrice",
    seed: int = 0,
) -> dict[str, dict[str, list[Neuron]]]:
    """{method: {fact_id: LAKNs}} from localisation results, plus ``random``: as many random
    neurons as ``random_like``'s LAKNs, matched per layer (:func:`lakn.scoring.random_neurons`),
    unless a ``random`` result is given already."""
    sets = {name: {fid: list(r.lakn[fid]) for fid in r.fact_ids} for name, r in results.items()}
    if random_like is not None and "random" not in sets:
        source = results.get(random_like) or next(iter(results.values()))
        sets["random"] = {}
        for i, fid in enumerate(source.fact_ids):
            g = torch.Generator().manual_seed(seed * 100_003 + i)
            sets["random"][fid] = random_neurons(source.lakn[fid], source.d_mlp, g)
    return sets


# --------------------------------------------------------------------------- result containers


@dataclass
class _Rows:
    """Rows of one experiment and its settings; subclasses add a ``table()`` summary."""

    rows: list[dict]
    config: dict = field(default_factory=dict)

    def to_dataframe(self):
        import pandas as pd

        return pd.DataFrame(self.rows)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, {"kind": type(self).__name__, "config": self.config, "rows": self.rows})
        return path

    @classmethod
    def load(cls, path: str | Path):
        data = json.loads(Path(path).read_text())
        if data.get("kind") not in (None, cls.__name__):
            raise ValueError(f"{path} holds a {data.get('kind')}, not a {cls.__name__}")
        return cls(rows=data["rows"], config=data.get("config", {}))


def _progress(items, enabled: bool, desc: str, total: int | None = None):
    if not enabled:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, total=total)


# --------------------------------------------------------------------------- probability change rate


@dataclass
class ChangeRateResult(_Rows):
    """Probability change rates, one row per (method, intervention, target fact, query).

    Columns: method, intervention, target (the fact whose neurons were changed), fact_id
    (the query's fact), kind (related / same_relation / other_relation), language, split,
    p_before, p_after, change = (p_after - p_before) / p_before, n_neurons.
    """

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
    from .models import is_masked_lm

    causal = not is_masked_lm(model)
    if queries is None:
        queries = evaluation_queries(model, facts, result=result, languages=languages, max_queries=max_queries,
                                     causal=causal)
    relation = {f.fact_id: f.relation for f in facts}
    p0, r0 = query_probabilities(model, [q.encoded for q in queries], batch_size=batch_size,
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
            g = torch.Generator().manual_seed(seed * 100_003 + k)
            far = sorted(far[int(j)] for j in torch.randperm(len(far), generator=g)[:max_unrelated])
        measured[target] = sorted(near + far)
    rows = []
    for method, target, name, factor in _progress(jobs, progress, "lakn evaluate"):
        neurons = list(sets[method][target])
        idx = measured[target]
        if not idx:
            continue
        with intervene(model, neurons, factor=factor, position=position):
            p1, _ = query_probabilities(model, [queries[i].encoded for i in idx], batch_size=batch_size,
                                        first_token_only=first_token_only)
        for j, i in enumerate(idx):
            q = queries[i]
            kind = ("related" if q.fact_id == target else
                    "same_relation" if relation.get(q.fact_id) == relation[target] else "other_relation")
            before, after = float(p0[i]), float(p1[j])
            rows.append(dict(method=method, intervention=name, target=target, fact_id=q.fact_id, kind=kind,
                             language=q.language, split=q.split, p_before=before, p_after=after,
                             change=(after - before) / before if before > 0 else 0.0, n_neurons=len(neurons)))
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


# --------------------------------------------------------------------------- editing


@dataclass
class EditingResult(_Rows):
    """Cross-lingual editing, one row per (neuron set, edited fact, query).

    ``metric``: reliability (edit language), generality (other languages) or locality (other
    facts). For reliability / generality ``success`` = P(new) > P(old) after the edit and
    ``top1`` = the new answer's first token is the top prediction; for locality ``success`` =
    the query's top-1 first token is unchanged and ``change`` its probability change rate.
    """

    def table(self):
        df = self.to_dataframe()
        if df.empty:
            return df
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


def _top1(model, queries: Sequence[EncodedQuery], batch_size: int) -> list[int]:
    """Top-1 first predicted token at each query's answer position."""
    device = next(model.parameters()).device
    tops = []
    for start in range(0, len(queries), batch_size):
        chunk = queries[start : start + batch_size]
        width = max(len(q.prompt) for q in chunk)
        pad = model.tokenizer.pad_token_id or 0
        tokens = torch.full((len(chunk), width), pad, dtype=torch.long)
        for row, q in enumerate(chunk):
            tokens[row, : len(q.prompt)] = q.prompt
        keep = torch.tensor(sorted({len(q.prompt) - 1 for q in chunk}))
        with torch.no_grad():
            logits = logits_at(model, tokens.to(device), keep.to(device))
        col = {int(p): j for j, p in enumerate(keep.tolist())}
        tops.extend(int(logits[row, col[len(q.prompt) - 1]].argmax()) for row, q in enumerate(chunk))
    return tops


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
    from .models import is_masked_lm

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
            g = torch.Generator().manual_seed(seed * 100_003 + list(by_id).index(fid))
            order = torch.randperm(len(rest), generator=g).tolist()
            picked = [rest[i] for i in order if rest[i].queries(edit_language, causal=causal)][:n_preserve]
        preserve = [f.queries(edit_language, causal=causal)[0] for f in picked]
        preserve_facts = {f.fact_id for f in picked}
        others = [q for q in evaluation_queries(model, [f for f in rest if f.fact_id not in preserve_facts],
                                                languages=languages, max_queries=1, causal=causal)]
        other_enc = [q.encoded for q in others]
        p_other0, _ = query_probabilities(model, other_enc, batch_size=batch_size) if others else (torch.zeros(0), None)
        top_other0 = _top1(model, other_enc, batch_size) if others else []
        p_new0, _ = query_probabilities(model, own_new, batch_size=batch_size)
        p_old0, _ = query_probabilities(model, own_old, batch_size=batch_size)
        contexts[fid] = (meta, own_old, own_new, preserve, others, other_enc, p_other0, top_other0, p_new0, p_old0)
        return contexts[fid]

    for name, fid in _progress(jobs, progress, "lakn edit"):
        fact = by_id[fid]
        meta, own_old, own_new, preserve, others, other_enc, p_other0, top_other0, p_new0, p_old0 = context(fid)
        with edit_fact(model, fact, new_answers[fid], sets[name][fid], language=edit_language, steps=steps, lr=lr,
                       max_queries=max_queries, preserve=preserve, locality_weight=locality_weight,
                       target_prob=target_prob) as edit:
            p_new1, r_new1 = query_probabilities(model, own_new, batch_size=batch_size)
            p_old1, _ = query_probabilities(model, own_old, batch_size=batch_size)
            p_other1, _ = query_probabilities(model, other_enc, batch_size=batch_size) if others else (torch.zeros(0), None)
            top_other1 = _top1(model, other_enc, batch_size) if others else []
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
                             change=(after - before) / before if before > 0 else 0.0,
                             success=float(top_other0[i] == top_other1[i]), top1=float("nan"), n_neurons=n))
    config = dict(edit_language=edit_language, steps=steps, lr=lr, optimiser="adam on W_out rows", max_queries=max_queries,
                  n_preserve=n_preserve, locality_weight=locality_weight, target_prob=target_prob, seed=seed,
                  new_answers=new_answers, n_neurons={k: {f: len(v) for f, v in per.items()} for k, per in sets.items()})
    return EditingResult(rows, config)


def editing_sets(
    result: LocalizationResult, *, language: str = "en", n: int | None = None, seed: int = 0
) -> dict[str, dict[str, list[Neuron]]]:
    """Neuron sets of equal size per fact for editing: ``lakn`` (the best ``n`` LAKNs, default all),
    ``language_specific`` (the ``n`` best neurons by ``language``'s own score s_l that are not
    LAKNs: the selected language-specific set first, then the next by s_l, so the size always
    matches) and ``random`` (matched per layer to the LAKNs used)."""
    out: dict[str, dict[str, list[Neuron]]] = {"lakn": {}, "language_specific": {}, "random": {}}
    for i, fid in enumerate(result.fact_ids):
        lakns = list(result.lakn[fid])
        size = len(lakns) if n is None else min(n, len(lakns))
        per_lang = result.records[fid].per_language
        if size == 0 or language not in per_lang:
            continue
        chosen = set(lakns)
        selected = [x for x in result.language_specific.get(fid, {}).get(language, []) if x not in chosen]
        ranked = [x for x in select_neurons(per_lang[language], 1e-9, size + len(lakns) + len(selected))
                  if x not in chosen and x not in selected]
        specific = (selected + ranked)[:size]
        if len(specific) < size:
            continue
        out["lakn"][fid] = lakns[:size]
        out["language_specific"][fid] = specific
        g = torch.Generator().manual_seed(seed * 100_003 + i)
        out["random"][fid] = random_neurons(lakns[:size], result.d_mlp, g)
    return out


# --------------------------------------------------------------------------- enhancement


@dataclass
class EnhancementResult(_Rows):
    """Knowledge enhancement, one row per (neuron set, fact, query in a language the model got wrong)."""

    def table(self):
        df = self.to_dataframe()
        if df.empty:
            return df
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
    from .models import is_masked_lm

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
        p0, r0 = query_probabilities(model, [q.encoded for q in qs], batch_size=batch_size, first_token_only=first_token_only)
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
        g = torch.Generator().manual_seed(seed * 100_003 + i)
        sets = {"lakn_from_right": chosen, "random": random_neurons(chosen, result.d_mlp, g)}
        wrong = [qs[j].encoded for j in wrong_idx]
        for name, neurons in sets.items():
            with enhance(model, neurons, factor=factor):
                p1, r1 = query_probabilities(model, wrong, batch_size=batch_size, first_token_only=first_token_only)
            for k, j in enumerate(wrong_idx):
                before = float(p0[j])
                rows.append(dict(neurons=name, fact_id=fid, language=qs[j].language, split=qs[j].split,
                                 right_languages=",".join(usable), p_before=before, p_after=float(p1[k]),
                                 change=(float(p1[k]) - before) / before if before > 0 else 0.0,
                                 rank_before=int(r0[j]), rank_after=int(r1[k]), n_neurons=len(neurons)))
    return EnhancementResult(rows, dict(factor=factor, threshold=threshold, top_k=top_k, max_queries=max_queries,
                                        right_rank=right_rank,
                                        right=f"first answer token in the top {right_rank} on most queries of the language"))


# --------------------------------------------------------------------------- injection

# Facts no model can know: subjects and answers made up by the project (lakn/data/fictional.jsonl,
# 10 facts in en, fr, es, de, ru, zh, two paraphrases each), for injection experiments.
FICTIONAL_FACTS: list[Fact] = load_facts(Path(str(files("lakn").joinpath("data", "fictional.jsonl"))))


@dataclass
class InjectionResult(_Rows):
    """New-knowledge injection, one row per (neuron set, fictional fact, query; plus locality rows)."""

    def table(self):
        df = self.to_dataframe()
        if df.empty:
            return df
        rec = df[df["metric"] == "recall"]
        a = rec.groupby(["neurons", "language"]).agg(p_before=("p_before", "mean"), p_after=("p_after", "mean"),
                                                      top1=("top1", "mean"), rank_after=("rank_after", "median"))
        loc = df[df["metric"] == "locality"].groupby("neurons").agg(locality=("success", "mean"))
        return a.join(loc, on="neurons")


def injection_experiment(
    model,
    fictional: Sequence[Fact] = FICTIONAL_FACTS,
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
    """Teach each fictional fact through ``k`` neurons with ``language`` queries only, then query
    it in every language (recall) and check ``unrelated`` facts keep their top-1 (locality).
    ``preserve`` facts (keep them apart from ``unrelated``) give the KL locality term of
    :func:`lakn.edit_fact`, one ``language`` query each; ``target_prob`` stops training early.

    Neuron sets: ``activation`` (:func:`lakn.interventions.activation_neurons` over ``languages``:
    active on the subject in every language; the LAKN-style choice for an unknown fact) and
    ``random`` (matched per layer). Every edit is undone.
    """
    from .models import is_masked_lm

    causal = not is_masked_lm(model)
    d_mlp = int(model.cfg.d_mlp)
    other_q = evaluation_queries(model, unrelated, languages=languages, max_queries=1, causal=causal) if unrelated else []
    other_enc = [q.encoded for q in other_q]
    top0 = _top1(model, other_enc, batch_size) if other_q else []
    overlap = {f.fact_id for f in preserve} & {f.fact_id for f in unrelated}
    if overlap:
        raise ValueError(f"preserve and unrelated facts must differ (locality is measured on unseen facts): {sorted(overlap)}")
    keep = [q for f in preserve for q in f.queries(language, causal=causal)[:1]]
    rows = []
    for i, fact in enumerate(_progress(list(fictional), progress, "lakn inject")):
        langs = [l for l in (languages or fact.languages) if l in fact.templates]
        qs = evaluation_queries(model, [fact], languages=langs, max_queries=None, causal=causal)
        enc = [q.encoded for q in qs]
        p0, r0 = query_probabilities(model, enc, batch_size=batch_size)
        chosen = activation_neurons(model, fact, langs, k)
        g = torch.Generator().manual_seed(seed * 100_003 + i)
        for name, neurons in (("activation", chosen), ("random", random_neurons(chosen, d_mlp, g))):
            with edit_fact(model, fact, {language: fact.answers[language]}, neurons, language=language, steps=steps,
                           lr=lr, preserve=keep, locality_weight=locality_weight, target_prob=target_prob) as edit:
                p1, r1 = query_probabilities(model, enc, batch_size=batch_size)
                top1 = _top1(model, other_enc, batch_size) if other_q else []
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


# --------------------------------------------------------------------------- runs


def localize_methods(
    model,
    facts: Sequence[Fact],
    methods: Sequence[str] = ("matrice", "kn", "amig", "mean", "random"),
    *,
    out: str | Path | None = None,
    **kwargs,
) -> dict[str, LocalizationResult]:
    """:func:`lakn.localize` once per method on shared attributions; run folders ``out/<method>``.
    Pass ``attribution_cache=`` (a dict) to share the attributions with further calls too, e.g.
    the same methods again at an equal neuron count (``top_k``)."""
    from .localization import localize

    results = {}
    cache = kwargs.pop("attribution_cache", None)
    cache = {} if cache is None else cache
    for method in methods:
        folder = None if out is None else Path(out) / method
        results[method] = localize(model, facts, method=method, out=folder, attribution_cache=cache, **kwargs)
    return results


def load_runs(folder: str | Path) -> dict[str, LocalizationResult]:
    """{method: result} from a run folder (``result.json`` inside) or a folder of run folders."""
    folder = Path(folder)
    if (folder / "result.json").is_file():
        r = LocalizationResult.load(folder)
        return {r.config.get("method", folder.name): r}
    runs = {}
    for sub in sorted(p for p in folder.iterdir() if (p / "result.json").is_file()) if folder.is_dir() else []:
        r = LocalizationResult.load(sub)
        runs[r.config.get("method", sub.name)] = r
    if not runs:
        raise FileNotFoundError(f"{folder} holds no finished localisation run (no result.json in it or below it)")
    order = ["matrice", "kn", "amig", "mean", "random"]
    return dict(sorted(runs.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)))
