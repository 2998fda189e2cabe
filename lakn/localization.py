"""Localise language-agnostic knowledge neurons: attribute every query, score each fact, select.

``localize`` runs model + facts -> integrated gradients per query -> per-fact scores (MATRICE or a
baseline) -> cross-fact specificity -> neuron sets, and returns a :class:`LocalizationResult`.
With ``out=`` every finished fact is written at once, so an interrupted run started again with the
same arguments skips finished facts and ends with the same result.

A resume trusts a finished fact's files only when they pass every check of
:meth:`lakn.results.FactRecord.load`: the stored id, the checksums, the run settings' hash, the hash
of the fact's record (so a fact whose record changed in the data file is recomputed) and the queries
and answers it was made from. A file that fails is reported (a :class:`~lakn.results.RunFolderWarning`
naming it), recomputed and listed in ``result.recomputed``; it is never fatal. Other changed
arguments are refused (:class:`RunConfigError`, with the differences).
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any, Sequence

import torch

from .attribution import attribute_queries, coarse_to_fine
from .attribution.effects import effect_maps
from .causal import causal_finalize, check_effects
from .config import ATTRIBUTIONS, RunConfig, RunConfigError
from .facts import DEMO_SETS, Fact, FactsError, check_context_length, data_path, data_sha256, fact_sha256, select_facts
from .models import is_masked_lm, model_name
from .results import (FactRecord, LocalizationResult, RunFolderError, RunFolderWarning, run_folder,
                      write_json_atomic)
from .scoring import score_fact
from .selection import finalize
from .tokens import encode_query
from ._progress import progress as _progress

__all__ = ["localize", "RunConfigError", "RunFolderError", "RunFolderWarning", "ATTRIBUTIONS"]

_D = RunConfig()  # the defaults: localize's keyword defaults come from the run configuration


def localize(
    model,
    facts: Sequence[Fact],
    *,
    languages: Sequence[str] | None = None,
    n_facts: int | None = None,
    method: str = _D.method,
    steps: int = _D.steps,
    attribution: str = _D.attribution,
    max_queries: int | None = _D.max_queries,
    first_token_only: bool = _D.first_token_only,
    threshold: float = _D.threshold,
    top_k: int | None = _D.top_k,
    specificity: str = _D.specificity,
    reference: str = _D.reference,
    min_reference: int = _D.min_reference,
    common_fraction: float | None = _D.common_fraction,
    causal_same_weight: float = _D.causal_same_weight,
    causal_other_weight: float = _D.causal_other_weight,
    causal_top_k: int = _D.causal_top_k,
    causal_competitors: int = _D.causal_competitors,
    seed: int = _D.seed,
    batch_size: int | None = _D.batch_size,
    drop_incomplete: bool = False,
    out: str | Path | None = None,
    data: str = "",
    data_sha256: str | None = None,
    known: str = "",
    progress: bool = True,
    distributed: bool | None = None,
    attribution_cache: dict | None = None,
    **method_kwargs: Any,
) -> LocalizationResult:
    """Find the LAKNs of each fact.

    Args:
        languages: codes to use (default: every language all chosen facts can be queried in).
        method: ``matrice`` (default), ``kn``, ``amig``, ``mean`` or ``random``.
        steps: integrated-gradient steps m. max_queries: paraphrases per language (default all).
        attribution: ``auto`` (exact; the single-position fast path where verified, else the
            reference loop), ``fast``, ``reference``, ``approx`` (activation x gradient, an
            approximation for screening) or ``coarse-to-fine`` (approx, then exact IG on the 4
            layers that matter most).
        specificity: ``auto`` (fact-specific score when each fact has >= ``min_reference``
            reference facts), ``raw`` (plain LAA) or ``specific``; ``reference`` picks the reference
            facts (``others``, ``other_relations``, ``same_relation``). Only for score methods
            (matrice, mean, random); kn and amig select sets directly. ``causal`` (any method, causal
            LMs): one more pass per fact gives the first-order zeroing effects of every neuron on its
            queries (stored with the fact), and once all facts are done each fact keeps the
            ``causal_top_k`` neurons whose effect on its own answer (against ``causal_competitors``
            competitor tokens) most exceeds the damage to the reference facts' answers, weighted
            ``causal_same_weight`` (same relation) and ``causal_other_weight`` (other relations);
            see :mod:`lakn.causal` (``lakn.causal.reselect`` selects again from a finished run).
        common_fraction: drop neurons selected for more than this share of the facts.
        method_kwargs: passed to the scoring method (e.g. ``beta``, ``gamma``, ``query_weighting``).
        out: the run folder (``~`` expanded; an existing file there is an error before any model work).
        data: the facts file the facts came from, recorded in the run configuration (made absolute
            when it names a file); ``data_sha256`` its SHA-256 (default: computed from ``data``);
            ``known`` the known-fact table the facts were filtered with, if any (recorded only).
        attribution_cache: a dict shared between calls: each query's attribution is computed once
            and reused, e.g. to compare scoring methods on the same attributions.
        distributed: data-parallel over the processes of ``torchrun`` (default: when ``WORLD_SIZE`` > 1).
            Each rank attributes a disjoint share of the facts (``facts[rank::world_size]``) and
            writes them to ``out/facts/`` (its shard); after a barrier every rank reads all shards
            and rank 0 writes the merged result, identical to a single-process run.

    Example: ``result = lakn.localize(model, lakn.load_facts("demo")[:3], languages=["en", "fr"])``.
    """
    # the arguments first (RunConfig validates them), so a bad one fails before any model work
    config = RunConfig(method=method, method_kwargs=dict(method_kwargs), steps=steps, max_queries=max_queries,
                       first_token_only=first_token_only, threshold=threshold, top_k=top_k,
                       specificity=specificity, reference=reference, min_reference=min_reference,
                       common_fraction=common_fraction, seed=seed, attribution=attribution, batch_size=batch_size,
                       causal_same_weight=causal_same_weight, causal_other_weight=causal_other_weight,
                       causal_top_k=causal_top_k, causal_competitors=causal_competitors)
    folder = None if out is None else run_folder(out)  # a file there, or a bad folder, fails now
    causal = not is_masked_lm(model)
    if config.specificity == "causal" and not causal:
        raise ValueError("specificity='causal' needs a causal LM (its effect maps differentiate the next-token "
                         f"prediction); {model_name(model)} is a masked LM")
    chosen, langs = select_facts(facts, languages=languages, n_facts=n_facts, causal=causal,
                                 drop_incomplete=drop_incomplete)
    _check_method(config)
    plan = _plan(model, chosen, langs, causal, max_queries)  # every query tokenised and checked now
    label, digest = _data_provenance(data, data_sha256)
    config = config.replace(model=model_name(model), n_layers=int(model.cfg.n_layers), d_mlp=int(model.cfg.d_mlp),
                            data=label, data_sha256=digest, known=str(known), fact_ids=[f.fact_id for f in chosen],
                            languages=langs, versions=_versions())
    rank, world = _init_distributed(distributed)
    if folder is not None:
        _prepare_folder(folder, config, write=rank == 0)  # every rank checks, so all fail alike
        _barrier(world)
    elif world > 1:
        raise ValueError("a distributed run needs out= (a folder all ranks can write), e.g. --out runs/x")
    settings = config.record_sha256()
    hashes = {f.fact_id: fact_sha256(f) for f in chosen}

    records: dict[str, FactRecord] = {}
    mine = chosen[rank::world]
    bar = _progress(mine, progress and rank == 0, "lakn localize", unit="fact")
    for fact in bar:
        reason = ""
        if folder is not None:
            found, reason = _resume(folder / "facts", fact.fact_id, plan[fact.fact_id], config, settings,
                                    hashes[fact.fact_id])
            if found is not None:
                records[fact.fact_id] = found
                continue
        t0 = time.perf_counter()
        attributions, confidence, entropy, rows = _attribute_fact(
            model, plan[fact.fact_id], attribution, attribution_cache,
            steps=steps, first_token_only=first_token_only, batch_size=batch_size,
        )
        scores = score_fact("matrice" if method == "random" else method, attributions, confidence, entropy,
                            threshold=threshold, top_k=top_k, **config.method_kwargs)
        record = FactRecord(fact.fact_id, fact.relation, scores.laa, scores.per_language, scores.lakn,
                            scores.language_specific, rows, time.perf_counter() - t0, rank,
                            fact_sha256=hashes[fact.fact_id], config_sha256=settings, recomputed_because=reason)
        if config.specificity == "causal":  # the same queries, in the same order as the rows
            encoded = [e for qs in plan[fact.fact_id].values() for _, e in qs]
            record.effects = effect_maps(model, encoded, competitors=config.causal_competitors,
                                         batch_size=batch_size).tensors()
            record.seconds = time.perf_counter() - t0
        if folder is not None:
            record.save(folder / "facts")
        records[fact.fact_id] = record
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(fact=fact.fact_id, lakns=len(scores.lakn))

    if world > 1:  # merge the shards: every rank reads all finished facts, in the data's order
        assert folder is not None  # a distributed run has out= (checked above)
        _barrier(world)
        records = {f.fact_id: FactRecord.load(folder / "facts", f.fact_id, config_sha256=settings,
                                              fact_sha256=hashes[f.fact_id]) for f in chosen}
    result = causal_finalize(config, records) if config.specificity == "causal" else finalize(config, records)
    if folder is not None and rank == 0:
        result.save(folder, records=False)  # every fact's files are written (and checked) above
    _barrier(world)
    return result


def _plan(model, chosen: Sequence[Fact], langs: Sequence[str], causal: bool, max_queries: int | None):
    """{fact_id: {lang: [(query, encoded)]}}: every query tokenised before the long computation, so
    an answer that tokenises to nothing or a prompt longer than the model's context fails now,
    naming the fact."""
    n_ctx = getattr(model.cfg, "n_ctx", None)
    plan: dict[str, dict[str, list]] = {}
    for fact in chosen:
        plan[fact.fact_id] = {}
        for lang in langs:
            encoded = []
            for q in fact.queries(lang, causal=causal)[:max_queries]:
                try:
                    enc = encode_query(model, q)
                except FactsError as err:
                    raise FactsError(f"fact {fact.fact_id!r}: {err}") from None
                length = len(enc.prompt) if enc.masked else len(enc.prompt) + len(enc.answer)
                if n_ctx and len(enc.prompt) >= int(n_ctx):  # to_tokens cut it at n_ctx: count it whole
                    length = max(length, len(model.tokenizer(q.prompt + q.continuation)["input_ids"]))
                check_context_length(q, length, int(n_ctx) if n_ctx else None, fact_id=fact.fact_id)
                encoded.append((q, enc))
            plan[fact.fact_id][lang] = encoded
    return plan


def _data_provenance(data: str | Path, digest: str | None) -> tuple[str, str]:
    """The data label a run records (a file's absolute path, a shipped set's name, else as given) and
    its SHA-256 (computed from the file unless given)."""
    text = str(data)
    if text and text not in DEMO_SETS and data_path(text).is_file():
        text = str(data_path(text))
    if digest is None:
        digest = data_sha256(text) if text else ""
    return text, digest


def _resume(folder: Path, fact_id: str, plan: dict[str, list], config: RunConfig, settings: str,
            digest: str) -> tuple[FactRecord | None, str]:
    """A finished fact's record when its files pass every check; else (None, why) after a warning
    that names the file (the fact is then recomputed)."""
    if not FactRecord.done(folder, fact_id):
        return None, ""
    queries = [(lang, q.prompt, q.answer) for lang, qs in plan.items() for q, _ in qs]
    try:
        record = FactRecord.load(folder, fact_id, config_sha256=settings, fact_sha256=digest,
                                 shape=(config.n_layers, config.d_mlp), languages=config.languages, queries=queries)
        if config.specificity == "causal":
            path = FactRecord.find(folder, fact_id)
            check_effects(record, path[0] if path else folder, (config.n_layers, config.d_mlp))
        return record, ""
    except RunFolderError as err:
        reason = str(err)
    warnings.warn(f"{reason}; recomputing fact {fact_id!r}", RunFolderWarning, stacklevel=3)
    return None, reason


def _attribute_fact(model, plan: dict[str, list], attribution: str, cache: dict | None, **kwargs):
    """Attribute every planned query of one fact: stacked maps, confidence and entropy per
    language, and one statistics row per query. The fact's queries (all languages) go to
    :func:`attribute_queries` together, so approx shares passes between them. ``cache``
    (optional) memoises attributions."""
    def key(encoded):
        return (tuple(encoded.prompt.tolist()), tuple(encoded.answer.tolist()), attribution,
                kwargs["steps"], kwargs["first_token_only"])

    found = {} if cache is None else {key(e): cache[key(e)] for qs in plan.values() for _, e in qs if key(e) in cache}
    missing = {key(e): e for qs in plan.values() for _, e in qs if key(e) not in found}
    if attribution == "coarse-to-fine":
        computed = [coarse_to_fine(model, e, **kwargs) for e in missing.values()]
    else:
        computed = attribute_queries(model, list(missing.values()), attribution=attribution, **kwargs)
    found.update(zip(missing, computed))
    if cache is not None:
        cache.update(zip(missing, computed))
    attributions, confidence, entropy, rows = {}, {}, {}, []
    for lang, queries in plan.items():
        maps, probs, ents = [], [], []
        for query, encoded in queries:
            ig = found[key(encoded)]
            maps.append(ig.attributions)
            probs.append(ig.stats.probability)
            ents.append(ig.stats.entropy)
            rows.append({
                "language": lang, "prompt": query.prompt, "answer": query.answer,
                "probability": ig.stats.probability, "entropy": ig.stats.entropy, "rank": ig.stats.rank,
                "answer_tokens": ig.n_answer_tokens,
                # None when not computed (approx skips it): JSON has no NaN
                "completeness_error": (None if bool(ig.completeness_error.isnan().all())
                                       else float(ig.completeness_error.nan_to_num(0.0).max())),
                "attribution": ig.attribution,
            })
        attributions[lang] = torch.stack(maps)
        confidence[lang] = torch.tensor(probs)
        entropy[lang] = torch.tensor(ents)
    return attributions, confidence, entropy, rows


def _init_distributed(requested: bool | None) -> tuple[int, int]:
    """(rank, world size); joins the torchrun process group when asked or when WORLD_SIZE > 1."""
    import os

    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if requested is False or (requested is None and world <= 1):
        return 0, 1
    if not dist.is_available():
        raise RuntimeError("torch.distributed is not available in this torch build")
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and os.environ.get("LAKN_BACKEND") != "gloo" else "gloo"
        dist.init_process_group(backend=os.environ.get("LAKN_BACKEND", backend))
    return dist.get_rank(), dist.get_world_size()


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def _check_method(config: RunConfig) -> None:
    """Run the scoring method once on a tiny input so a bad method argument fails before IG."""
    one = {"en": torch.rand(2, 1, 4)}
    probs = {"en": torch.full((2,), 0.5)}
    kwargs = dict(config.method_kwargs)
    if config.method == "random":
        kwargs["generator"] = torch.Generator().manual_seed(0)
    score_fact(config.method, one, probs, probs, threshold=config.threshold, top_k=config.top_k, **kwargs)


def _prepare_folder(folder: Path, config: RunConfig, write: bool = True) -> None:
    """Create the run folder, or check that an existing one was made with the same arguments."""
    path = folder / "config.json"
    if path.is_file():
        before = RunConfig.load(path)  # a file that is not a configuration: RunConfigError naming it
        diff = before.diff(config)
        if diff:
            shown = "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in list(diff.items())[:6])
            raise RunConfigError(
                f"{folder} holds a run with other arguments ({shown}); resume with the same arguments "
                "or choose another --out folder"
            )
        if before.data_sha256 and config.data_sha256 and before.data_sha256 != config.data_sha256:
            warnings.warn(f"data file {config.data} changed since {folder} was made (SHA-256 "
                          f"{before.data_sha256[:12]}... -> {config.data_sha256[:12]}...): facts whose records "
                          "changed are recomputed", RunFolderWarning, stacklevel=3)
    if write:
        try:
            (folder / "facts").mkdir(parents=True, exist_ok=True)
            write_json_atomic(path, config.to_dict())
        except OSError as err:
            raise RunFolderError(f"cannot write run folder {folder}: {err.strerror or err}") from None


def _versions() -> dict:
    import transformer_lens
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "transformer_lens": getattr(transformer_lens, "__version__", "?")}
