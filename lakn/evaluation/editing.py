"""Cross-lingual knowledge editing: edit a fact in one language through a neuron set's W_out rows,
measure reliability (that language), generality (the others) and locality (other facts)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor

from .._io import jsonable as _jsonable
from .._progress import progress as _progress
from ..editing import EDIT_METHODS, edit_fact, edit_facts
from ..facts import Fact, FactsError
from ..hooks import Neuron
from ..probability import batch_answer_probability, change_rate, top1_margins, top1_tokens
from ..results import ResultTable
from ..selection import seeded_generator
from ..splits import evaluation_queries
from ..tokens import encode_query

__all__ = ["EditingResult", "counterfactuals", "editing_experiment", "edit_evaluation", "apply_edits", "locality_group",
           "EDIT_METRICS", "LOCALITY_GROUPS"]


@dataclass
class EditingResult(ResultTable):
    """Cross-lingual editing, one row per (neuron set, edited fact, query).

    ``metric``: reliability (edit language), generality (other languages) or locality (other
    facts). For reliability / generality ``success`` = P(new) > P(old) after the edit and
    ``top1`` = the new answer's first token is the top prediction; for locality ``success`` =
    the query's top-1 first token is unchanged and ``change`` its probability change rate.
    """

    def _summarize(self, df):
        if "edit_method" in df.columns:
            return _summarize_evaluation(df)
        eff = df[df["metric"] != "locality"]
        a = eff.groupby(["neurons", "metric", "language"])[["success", "top1"]].mean()
        loc = df[df["metric"] == "locality"].groupby(["neurons", "metric"])[["success"]].mean()
        loc["language"] = "*"
        loc = loc.set_index("language", append=True)
        import pandas as pd

        out = pd.concat([a, loc]).sort_index()
        out["n_neurons"] = df.groupby("neurons")["n_neurons"].mean().reindex(out.index.get_level_values(0)).values
        return out


    def wide(self):
        """One line per (method, neuron set, batch size): reliability, generality top-1 per language,
        overall and on the queries whose old answer the model had top-1 before the edit (``gen_known``:
        a language the model does not answer in bounds what an edit can reach there), the share of
        generality queries with P(new) > P(old), held-out paraphrases, locality on the
        same relation (another answer: ``loc_same``; the edited fact's answer: ``loc_same_answer``)
        and on other relations, the facts edited. Rows of :func:`edit_evaluation` only."""
        df = self.to_dataframe()
        if df.empty or "edit_method" not in df.columns:
            return df
        return _wide(df)


def _summarize_evaluation(df):
    """The long table of :func:`edit_evaluation`: one line per (method, neurons, batch, metric,
    language): ``value`` (top-1 share of the new answer; for ``locality_<group>`` the top-1
    retention), ``before`` (the same share before the edit), ``success`` (P(new) > P(old)),
    ``n_queries``, ``n_facts`` (edited facts; for locality the unrelated facts), ``n_edits``."""
    import pandas as pd

    keys = ["method", "neurons", "batch", "metric", "language"]
    eff = df[df["metric"] != "locality"]
    parts = []
    if len(eff):
        parts.append(eff.groupby(keys).agg(value=("top1", "mean"), before=("top1_before", "mean"),
                                           success=("success", "mean"), n_queries=("top1", "size"),
                                           n_facts=("fact_id", "nunique"), n_edits=("batch_id", "nunique"),
                                           n_neurons=("n_neurons", "mean")))
    loc = df[df["metric"] == "locality"].copy()
    if len(loc):
        loc["metric"] = "locality_" + loc["group"].astype(str)
        loc["language"] = "*"
        parts.append(loc.groupby(keys).agg(value=("success", "mean"), before=("top1_before", "mean"),
                                           success=("success", "mean"), n_queries=("success", "size"),
                                           n_facts=("other_fact", "nunique"), n_edits=("batch_id", "nunique"),
                                           n_neurons=("n_neurons", "mean")))
    return pd.concat(parts).sort_index()


def _wide(df):
    import pandas as pd

    keys = ["method", "neurons", "batch"]
    out = pd.DataFrame(index=pd.MultiIndex.from_frame(df[keys].drop_duplicates()).sort_values())

    def put(name, frame, column="top1"):
        if len(frame):
            out[name] = frame.groupby(keys)[column].mean()

    put("reliability", df[df.metric == "reliability"])
    put("rel_before", df[df.metric == "reliability"], "top1_before")
    gen = df[df.metric == "generality"]
    for lang in sorted(gen["language"].unique()):
        put(f"gen_{lang}", gen[gen.language == lang])
    put("gen_top1", gen)
    if "old_top1_before" in gen.columns:  # the languages where the model answered the fact before the edit
        put("gen_known", gen[gen.old_top1_before == 1])
    put("gen_p_new>old", gen, "success")
    put("heldout", df[df.metric == "heldout"])
    loc = df[df.metric == "locality"]
    for group, name in (("same_relation", "loc_same"), ("same_answer", "loc_same_answer"),
                        ("other_relation", "loc_other")):
        put(name, loc[loc.group == group], "success")
    eff = df[df.metric != "locality"]
    out["facts"] = eff.groupby(keys)["fact_id"].nunique()
    out["n_neurons"] = df.groupby(keys)["n_neurons"].mean()
    return out


def counterfactuals(facts: Sequence[Fact]) -> dict[str, dict[str, str]]:
    """A new answer for each fact: the answers of the next fact of the same relation (in ``facts``'
    order, wrapping round) whose answer differs in every language; facts with no such partner get
    none. Facts of one relation thus get different new answers where the relation has them, as
    CounterFact-style benchmarks give each fact its own (docs/results.md run 12: a batch whose facts
    of a relation all move to one answer rewrites the relation, not the facts)."""
    by_relation: dict[str, list[Fact]] = {}
    for f in facts:
        by_relation.setdefault(f.relation, []).append(f)
    out = {}
    for group in by_relation.values():
        for i, f in enumerate(group):
            for g in group[i + 1:] + group[:i]:
                if g.fact_id != f.fact_id and all(g.answers.get(l) and g.answers[l] != f.answers.get(l)
                                                  for l in f.languages):
                    out[f.fact_id] = dict(g.answers)
                    break
    return {f.fact_id: out[f.fact_id] for f in facts if f.fact_id in out}  # in the facts' order


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
    method: str = "gradient",
) -> EditingResult:
    """The run-3 editing experiment (lakn 0.2; :func:`edit_evaluation` compares methods, sets and
    batches): edit each fact to a new answer through each neuron set's W_out rows (Adam steps on those
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
        with edit_fact(model, fact, new_answers[fid], sets[name][fid], language=edit_language, method=method,
                       steps=steps, lr=lr,
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
    config = dict(edit_language=edit_language, steps=steps, lr=lr, optimiser="adam on W_out rows", method=method, max_queries=max_queries,
                  n_preserve=n_preserve, locality_weight=locality_weight, target_prob=target_prob, seed=seed,
                  new_answers=new_answers, n_neurons={k: {f: len(v) for f, v in per.items()} for k, per in sets.items()})
    return EditingResult(rows, config)


# --------------------------------------------------------------------------- edit evaluation (methods x sets x batch)

EDIT_METRICS = ("reliability", "generality", "heldout", "locality")
LOCALITY_GROUPS = ("same_relation", "other_relation", "same_answer")

EditFunction = Callable[..., Any]


class _Stack:
    """Several edits applied one after another, undone together (newest first)."""

    def __init__(self, edits: list) -> None:
        self.edits = edits

    def undo(self) -> None:
        for e in reversed(self.edits):
            e.undo()


def apply_edits(
    model,
    facts: Sequence[Fact],
    new_answers: Mapping[str, Mapping[str, str]],
    neurons: Mapping[str, Sequence[Neuron]],
    *,
    method: str | EditFunction = "closed_form",
    language: str = "en",
    options: Mapping[str, Any] | None = None,
) -> tuple[Any, bool]:
    """Edit every fact of ``facts`` to ``new_answers[fact_id]`` through ``neurons[fact_id]``:
    :func:`lakn.editing.edit_facts` for several facts (in chunks with ``chunk_size``), else :func:`lakn.edit_fact`.
    Returns ``(handle, batched)``; ``handle.undo()`` restores the weights. ``method`` may be a
    callable ``f(model, facts, new_answers, neurons, language=..., **options)`` returning anything
    with ``undo()`` (a custom or a dummy edit)."""
    options = dict(options or {})
    if callable(method):
        return method(model, list(facts), new_answers, neurons, language=language, **options), True
    if method not in EDIT_METHODS:
        raise ValueError(f"edit method {method!r} is not offered by lakn.editing (it has {list(EDIT_METHODS)})")
    kwargs = dict(options, language=language, method=method)
    if len(facts) > 1:
        ids = [f.fact_id for f in facts]
        return edit_facts(model, list(facts), {i: dict(new_answers[i]) for i in ids},
                          {i: list(neurons[i]) for i in ids}, **kwargs), True
    kwargs.pop("chunk_size", None)  # edit_facts' option: one fact is one chunk
    edits: list = []
    try:
        for f in facts:
            edits.append(edit_fact(model, f, dict(new_answers[f.fact_id]), list(neurons[f.fact_id]), **kwargs))
    except Exception:
        _Stack(edits).undo()
        raise
    return (edits[0] if len(edits) == 1 else _Stack(edits)), len(facts) == 1


def _first_token(enc) -> int:
    return int(enc.answer[0])


@dataclass
class _FactQueries:
    """One edited fact's measured queries, encoded with the old and the new answer, and the model's
    numbers on them before any edit."""

    fact: Fact
    meta: list[tuple[str, str, str, str]]  # (metric, language, split, prompt)
    old: list
    new: list
    tokens: dict[str, tuple[int, int]]  # language -> (old first token, new first token)
    before: dict[str, Tensor] = field(default_factory=dict)
    skipped: int = 0


def _fact_queries(model, fact: Fact, new: Mapping[str, str], *, edit_language: str, languages, max_queries,
                  max_heldout, causal: bool) -> _FactQueries:
    """The fact's queries per language: the first ``max_queries`` (the ones an edit uses for keys
    and targets: reliability in ``edit_language``, generality in the others) and up to
    ``max_heldout`` of the rest (held-out paraphrases, every language). A query whose old and new
    answers share their first token is skipped (first-token metrics cannot tell them apart)."""
    edited = dataclasses.replace(fact, answers={**fact.answers, **dict(new)})
    out = _FactQueries(fact, [], [], [], {})
    for lang in languages or fact.languages:
        if lang not in fact.templates or not fact.answers.get(lang) or not new.get(lang):
            continue
        try:
            old_q, new_q = fact.queries(lang, causal=causal), edited.queries(lang, causal=causal)
        except FactsError:
            continue
        n_edit = len(old_q) if max_queries is None else max_queries
        n_held = 0
        for j, (qo, qn) in enumerate(zip(old_q, new_q)):
            held = j >= n_edit
            if held and (max_heldout is not None and n_held >= max_heldout):
                break
            try:
                eo, en = encode_query(model, qo), encode_query(model, qn)
            except FactsError:
                continue
            if _first_token(eo) == _first_token(en):
                out.skipped += 1
                continue
            out.tokens.setdefault(lang, (_first_token(eo), _first_token(en)))
            metric = "heldout" if held else ("reliability" if lang == edit_language else "generality")
            n_held += held
            out.meta.append((metric, lang, "heldout" if held else "edit", qo.prompt))
            out.old.append(eo)
            out.new.append(en)
    return out


def _measure_own(model, fq: _FactQueries, batch_size: int) -> dict[str, Tensor]:
    p_new, r_new = batch_answer_probability(model, fq.new, batch_size=batch_size, first_token_only=True)
    p_old, r_old = batch_answer_probability(model, fq.old, batch_size=batch_size, first_token_only=True)
    return dict(p_new=p_new, r_new=r_new, p_old=p_old, r_old=r_old)


def locality_group(query_relation: str, query_token: int, language: str, batch: Sequence[_FactQueries]) -> str:
    """Where an unrelated query stands to a batch of edited facts: ``same_answer`` when an edited
    fact of its relation has (old or new) the same first answer token in that language,
    ``same_relation`` when an edited fact shares its relation, else ``other_relation``."""
    same = [fq for fq in batch if fq.fact.relation == query_relation]
    if not same:
        return "other_relation"
    if any(query_token in fq.tokens.get(language, ()) for fq in same):
        return "same_answer"
    return "same_relation"


@dataclass
class EditJob:
    """One edit to measure: a method (label, edit function or name, options), a neuron set and a
    batch of facts edited at once."""

    label: str
    method: str | EditFunction
    options: dict
    neurons: str
    batch: int
    fact_ids: list[str]


def _method_table(methods) -> dict[str, tuple[str | EditFunction, dict]]:
    if isinstance(methods, str):
        methods = (methods,)
    if isinstance(methods, Mapping):
        out = {}
        for label, spec in methods.items():
            spec = dict(spec)
            out[str(label)] = (spec.pop("method", label), spec)
        return out
    return {str(m): (m, {}) for m in methods}


def edit_evaluation(
    model,
    facts: Sequence[Fact],
    sets: Mapping[str, Mapping[str, Sequence[Neuron]]],
    *,
    methods: Sequence[str] | Mapping[str, Mapping[str, Any]] = ("closed_form",),
    new_answers: Mapping[str, Mapping[str, str]] | None = None,
    edit_language: str = "en",
    languages: Sequence[str] | None = None,
    max_queries: int | None = 2,
    max_heldout: int | None = 2,
    unrelated: Sequence[Fact] | None = None,
    locality_queries: int = 1,
    batch_sizes: Sequence[int] = (1,),
    max_batches: int = 1,
    options: Mapping[str, Any] | None = None,
    batch_size: int = 16,
    progress: bool = True,
) -> "EditingResult":
    """Edit facts with each method through each neuron set, singly and in batches, and measure
    everything against the model before the edit; every edit is undone.

    Args:
        sets: ``{set name: {fact_id: neurons}}`` (e.g. :func:`lakn.editing_sets`'s ``lakn`` and
            ``random``, and ``layer``: :func:`lakn.editing.layer_neurons` for every fact).
        methods: edit method names (:data:`lakn.editing.EDIT_METHODS`) or ``{label: {"method":
            name or callable, **options}}`` (several settings of one method side by side).
        new_answers: ``{fact_id: {language: answer}}`` (default :func:`counterfactuals`).
        max_queries: the edit uses (and reliability / generality measure) the first
            ``max_queries`` queries per language; ``max_heldout`` of the rest are held-out
            paraphrases (``heldout``; not used by the edit).
        unrelated: the facts whose queries measure locality (default ``facts``); the facts of the
            batch being edited are left out of each edit's locality.
        batch_sizes: facts per edit (1: each fact alone; b > 1: ``max_batches`` batches of the
            first facts, one :func:`lakn.editing.edit_facts` solve each).
        options: passed to every edit (``max_queries`` is added), under each method's own.

    Rows (``metric``): ``reliability`` / ``generality`` / ``heldout`` (per edited fact, language
    and query: ``top1`` = the new answer's first token is the top prediction after the edit,
    ``top1_before`` the same before, ``old_top1_before`` = the old answer's first token was top-1
    before the edit, ``success`` = P(new) > P(old) for the first tokens after the edit) and ``locality``
    (per unrelated query: ``success`` = its top-1 token is unchanged; ``margin_before`` = that token's
    lead in nats before the edit, :func:`lakn.probability.top1_margins`; ``group``: same_relation /
    other_relation / same_answer, see :func:`locality_group`).
    ``config["solves"]``: per closed-form edit, its facts, groups, solves, kept key weights and the
    groups it missed or sent back to weight 1 (:func:`lakn.edit_fact`'s ``info``).
    """
    from ..models import is_masked_lm

    causal = not is_masked_lm(model)
    new_answers = dict(new_answers or counterfactuals(facts))
    by_id = {f.fact_id: f for f in facts}
    table = _method_table(methods)
    common = dict(options or {})
    common.setdefault("max_queries", max_queries)
    own: dict[str, _FactQueries] = {}

    def queries_of(fid: str) -> _FactQueries:
        if fid not in own:
            fq = _fact_queries(model, by_id[fid], new_answers[fid], edit_language=edit_language, languages=languages,
                               max_queries=max_queries, max_heldout=max_heldout, causal=causal)
            fq.before = _measure_own(model, fq, batch_size) if fq.old else {}
            own[fid] = fq
        return own[fid]

    pool = evaluation_queries(model, list(facts if unrelated is None else unrelated), languages=languages,
                              max_queries=locality_queries, causal=causal)
    pool_enc = [q.encoded for q in pool]
    top_before, margins = top1_margins(model, pool_enc, batch_size) if pool else ([], [])
    pool_tokens = [_first_token(q.encoded) for q in pool]

    jobs: list[EditJob] = []
    skipped_batches = []
    for set_name, per in sets.items():
        eligible = [fid for fid in by_id if fid in new_answers and per.get(fid)]
        for b in batch_sizes:
            if b < 1:
                raise ValueError(f"batch sizes must be >= 1, got {b}")
            groups = [[fid] for fid in eligible] if b == 1 else [eligible[i:i + b] for i in range(0, len(eligible), b)]
            groups = [g for g in groups if len(g) == b][: None if b == 1 else max_batches]
            if not groups:
                skipped_batches.append(dict(neurons=set_name, batch=b, eligible=len(eligible)))
            for label, (method, opts) in table.items():
                jobs.extend(EditJob(label, method, opts, set_name, b, g) for g in groups)

    rows: list[dict] = []
    batched_any: dict[int, bool] = {}
    described: dict[str, set[str]] = {}  # job label -> the edits' own descriptions (e.g. the pivot layer)
    solved: list[dict] = []  # per closed-form edit: its solves, key weights and the facts it missed or released
    for job in _progress(jobs, progress, "lakn edit"):
        batch = [queries_of(fid) for fid in job.fact_ids]
        batch = [fq for fq in batch if fq.old]
        if not batch:
            continue
        per = sets[job.neurons]
        neurons = {fq.fact.fact_id: list(per[fq.fact.fact_id]) for fq in batch}
        handle, batched = apply_edits(model, [fq.fact for fq in batch], new_answers, neurons, method=job.method,
                                      language=edit_language, options={**common, **job.options})
        batched_any[job.batch] = batched_any.get(job.batch, True) and batched
        described.setdefault(job.label, set()).add(str(getattr(handle, "method", "")))
        info = getattr(handle, "info", None) or {}
        if "solves" in info:
            solved.append(dict(method=job.label, neurons=job.neurons, batch=job.batch,
                               facts=[fq.fact.fact_id for fq in batch],
                               **{k: info.get(k) for k in ("solves", "key_weights", "missed", "released",
                                                              "chunks", "translations", "groups")}))
        try:
            after = [_measure_own(model, fq, batch_size) for fq in batch]
            edited = {fq.fact.fact_id for fq in batch}
            keep = [i for i, q in enumerate(pool) if q.fact_id not in edited]
            top_after = top1_tokens(model, [pool_enc[i] for i in keep], batch_size) if keep else []
        finally:
            handle.undo()
        n_neurons = len({n for v in neurons.values() for n in v})
        base = dict(method=job.label, edit_method=job.method if isinstance(job.method, str) else "custom",
                    neurons=job.neurons, batch=job.batch, batch_id=job.fact_ids[0], n_neurons=n_neurons,
                    batched=batched)
        for fq, a in zip(batch, after):
            b0 = fq.before
            for i, (metric, lang, split, prompt) in enumerate(fq.meta):
                rows.append(dict(base, fact_id=fq.fact.fact_id, relation=fq.fact.relation, metric=metric,
                                 language=lang, split=split, group="", prompt=prompt,
                                 p_new_before=float(b0["p_new"][i]), p_new_after=float(a["p_new"][i]),
                                 p_old_before=float(b0["p_old"][i]), p_old_after=float(a["p_old"][i]),
                                 top1_before=float(b0["r_new"][i] == 0), top1=float(a["r_new"][i] == 0),
                                 old_top1_before=float(b0["r_old"][i] == 0),
                                 success_before=float(b0["p_new"][i] > b0["p_old"][i]),
                                 success=float(a["p_new"][i] > a["p_old"][i])))
        for j, i in enumerate(keep):
            q = pool[i]
            rows.append(dict(base, fact_id=",".join(job.fact_ids) if job.batch > 1 else job.fact_ids[0],
                             relation=q.relation, metric="locality", language=q.language, split="unrelated",
                             group=locality_group(q.relation, pool_tokens[i], q.language, batch), prompt=q.prompt,
                             other_fact=q.fact_id, top1_before=float(top_before[i] == pool_tokens[i]),
                             top1=float(top_after[j] == pool_tokens[i]), success=float(top_before[i] == top_after[j]),
                             margin_before=margins[i]))
    config = dict(kind="edit_evaluation", edit_language=edit_language, languages=list(languages or []),
                  methods={k: dict(method=m if isinstance(m, str) else "custom", **o) for k, (m, o) in table.items()},
                  options=common, max_queries=max_queries, max_heldout=max_heldout, batch_sizes=list(batch_sizes),
                  max_batches=max_batches, locality_queries=locality_queries, n_unrelated_queries=len(pool),
                  batched={str(k): v for k, v in batched_any.items()}, skipped_batches=skipped_batches,
                  edits={k: sorted(v - {""}) for k, v in described.items()}, solves=solved,
                  skipped_same_first_token={k: v.skipped for k, v in own.items() if v.skipped},
                  new_answers=new_answers,
                  n_neurons={k: {f: len(v) for f, v in per.items()} for k, per in sets.items()})
    return EditingResult(rows, _jsonable(config))
