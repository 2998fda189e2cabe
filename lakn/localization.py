"""Localise language-agnostic knowledge neurons: attribute every query, score each fact, select.

``localize`` runs model + facts -> integrated gradients per query -> per-fact scores (MATRICE or a
baseline) -> cross-fact specificity -> neuron sets, and returns a :class:`LocalizationResult`.
With ``out=`` every finished fact is written at once, so an interrupted run started again with the
same arguments skips finished facts and ends with the same result.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from . import __version__
from .attribution import attribute_queries, coarse_to_fine
from .facts import Fact, select_facts
from .models import is_masked_lm, model_name
from .results import FactRecord, LocalizationResult, write_json_atomic
from .scoring import (
    common_neuron_filter,
    random_neurons,
    reference_sets,
    score_fact,
    select_neurons,
    specific_scores,
)
from .tokens import encode_query

__all__ = ["localize", "RunConfigError", "ATTRIBUTIONS"]

ATTRIBUTIONS = ("auto", "fast", "reference", "approx", "coarse-to-fine")

# arguments that do not change results: a resumed run may differ in these
_VOLATILE = {"batch_size", "progress", "created", "device"}
_EXACT = {"auto", "fast", "reference"}


class RunConfigError(ValueError):
    """A run folder holds a run made with other arguments; the message lists the differences."""


def localize(
    model,
    facts: Sequence[Fact],
    *,
    languages: Sequence[str] | None = None,
    n_facts: int | None = None,
    method: str = "matrice",
    steps: int = 20,
    attribution: str = "auto",
    max_queries: int | None = None,
    first_token_only: bool = False,
    threshold: float = 0.2,
    top_k: int | None = None,
    specificity: str = "auto",
    reference: str = "others",
    min_reference: int = 5,
    common_fraction: float | None = None,
    seed: int = 0,
    batch_size: int | None = None,
    drop_incomplete: bool = False,
    out: str | Path | None = None,
    data: str = "",
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
            (matrice, mean, random); kn and amig select sets directly.
        common_fraction: drop neurons selected for more than this share of the facts.
        method_kwargs: passed to the scoring method (e.g. ``beta``, ``gamma``, ``query_weighting``).
        attribution_cache: a dict shared between calls: each query's attribution is computed once
            and reused, e.g. to compare scoring methods on the same attributions.
        distributed: data-parallel over the processes of ``torchrun`` (default: when ``WORLD_SIZE`` > 1).
            Each rank attributes a disjoint share of the facts (``facts[rank::world_size]``) and
            writes them to ``out/facts/`` (its shard); after a barrier every rank reads all shards
            and rank 0 writes the merged result, identical to a single-process run.

    Example: ``result = lakn.localize(model, lakn.load_facts("demo")[:3], languages=["en", "fr"])``.
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if max_queries is not None and max_queries < 1:
        raise ValueError(f"max_queries must be at least 1, got {max_queries}")
    if attribution not in ATTRIBUTIONS:
        raise ValueError(f"attribution must be one of {ATTRIBUTIONS}, got {attribution!r}")
    if specificity not in ("auto", "raw", "specific"):
        raise ValueError(f"specificity must be 'auto', 'raw' or 'specific', got {specificity!r}")
    causal = not is_masked_lm(model)
    chosen, langs = select_facts(facts, languages=languages, n_facts=n_facts, causal=causal,
                                 drop_incomplete=drop_incomplete)
    _check_method(method, threshold, top_k, method_kwargs)
    # tokenise every query before the long computation, so a bad answer fails now
    plan: dict[str, dict[str, list]] = {}
    for fact in chosen:
        plan[fact.fact_id] = {}
        for lang in langs:
            queries = fact.queries(lang, causal=causal)[:max_queries]
            plan[fact.fact_id][lang] = [(q, encode_query(model, q)) for q in queries]

    config = {
        "lakn_version": __version__,
        "model": model_name(model),
        "n_layers": int(model.cfg.n_layers),
        "d_mlp": int(model.cfg.d_mlp),
        "data": str(data),
        "fact_ids": [f.fact_id for f in chosen],
        "languages": langs,
        "method": method,
        "method_kwargs": dict(sorted(method_kwargs.items())),
        "steps": steps,
        "max_queries": max_queries,
        "first_token_only": first_token_only,
        "threshold": threshold,
        "top_k": top_k,
        "specificity": specificity,
        "reference": reference,
        "min_reference": min_reference,
        "common_fraction": common_fraction,
        "seed": seed,
        "attribution": attribution,
        "baseline": "zero",
        "hook_point": "mlp.hook_post",
        "batch_size": batch_size,
        "versions": _versions(),
    }
    rank, world = _init_distributed(distributed)
    folder = None
    if out is not None:
        folder = Path(out)
        _prepare_folder(folder, config, write=rank == 0)  # every rank checks, so all fail alike
        _barrier(world)
    elif world > 1:
        raise ValueError("a distributed run needs out= (a folder all ranks can write), e.g. --out runs/x")

    records: dict[str, FactRecord] = {}
    mine = chosen[rank::world]
    bar = _progress(mine, progress and rank == 0)
    for fact in bar:
        if folder is not None and FactRecord.done(folder / "facts", fact.fact_id):
            records[fact.fact_id] = FactRecord.load(folder / "facts", fact.fact_id)
            continue
        t0 = time.perf_counter()
        attributions, confidence, entropy, rows = _attribute_fact(
            model, plan[fact.fact_id], attribution, attribution_cache,
            steps=steps, first_token_only=first_token_only, batch_size=batch_size,
        )
        scores = score_fact("matrice" if method == "random" else method, attributions, confidence, entropy,
                            threshold=threshold, top_k=top_k, **method_kwargs)
        record = FactRecord(fact.fact_id, fact.relation, scores.laa, scores.per_language, scores.lakn,
                            scores.language_specific, rows, time.perf_counter() - t0, rank)
        if folder is not None:
            record.save(folder / "facts")
        records[fact.fact_id] = record
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(fact=fact.fact_id, lakns=len(scores.lakn))

    if world > 1:  # merge the shards: every rank reads all finished facts, in the data's order
        _barrier(world)
        records = {f.fact_id: FactRecord.load(folder / "facts", f.fact_id) for f in chosen}
    result = _finalize(config, records, chosen)
    if folder is not None and rank == 0:
        result.save(folder)
    _barrier(world)
    return result


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
        computed = attribute_queries(model, list(missing.values()), mode=attribution, **kwargs)
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
                "attribution": ig.mode,
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


def _finalize(config: dict, records: dict[str, FactRecord], facts: Sequence[Fact]) -> LocalizationResult:
    """Cross-fact step: fact-specific scores, random controls, common-neuron filter, language sets."""
    method, threshold, top_k = config["method"], config["threshold"], config["top_k"]
    lakn = {fid: list(rec.lakn) for fid, rec in records.items()}
    language_specific = {fid: dict(rec.language_specific) for fid, rec in records.items()}
    specific: dict = {}
    selection = "sets" if method in ("kn", "amig") else "raw"
    if method not in ("kn", "amig") and config["specificity"] != "raw":
        relations = {f.fact_id: f.relation for f in facts}
        refs = reference_sets(list(records), relations, config["reference"])
        enough = min(len(r) for r in refs.values()) >= config["min_reference"]
        if config["specificity"] == "specific" or enough:
            specific = specific_scores({fid: rec.laa for fid, rec in records.items()}, relations, config["reference"])
            selection = "specific"
            lakn = {fid: select_neurons(specific[fid], threshold, top_k) for fid in records}
    if config["common_fraction"] is not None:
        lakn = common_neuron_filter(lakn, config["common_fraction"])
    if method == "random":
        d_mlp = config["d_mlp"]
        for i, fid in enumerate(records):
            generator = torch.Generator().manual_seed(config["seed"] * 100_003 + i)
            lakn[fid] = random_neurons(lakn[fid], d_mlp, generator)
    if method not in ("kn", "amig"):
        for fid, rec in records.items():
            chosen = set(lakn[fid])
            language_specific[fid] = {
                lang: [n for n in select_neurons(s, threshold, top_k) if n not in chosen]
                for lang, s in rec.per_language.items()
            }
    return LocalizationResult(config, records, lakn, language_specific, selection, specific)


def _check_method(method: str, threshold: float, top_k: int | None, method_kwargs: dict) -> None:
    """Run the scoring method once on a tiny input so a bad method or argument fails before IG."""
    one = {"en": torch.rand(2, 1, 4)}
    probs = {"en": torch.full((2,), 0.5)}
    kwargs = dict(method_kwargs)
    if method == "random":
        kwargs["generator"] = torch.Generator().manual_seed(0)
    score_fact(method, one, probs, probs, threshold=threshold, top_k=top_k, **kwargs)


def _prepare_folder(folder: Path, config: dict, write: bool = True) -> None:
    """Create the run folder, or check that an existing one was made with the same arguments."""
    path = folder / "config.json"
    if path.is_file():
        old = json.loads(path.read_text())
        keys = (set(old) | set(config)) - _VOLATILE - {"versions", "lakn_version"}
        diff = sorted(k for k in keys if old.get(k) != json.loads(json.dumps(config.get(k))))
        if "attribution" in diff and {old.get("attribution"), config.get("attribution")} <= _EXACT:
            diff.remove("attribution")  # every exact mode gives the same attributions
        if diff:
            shown = "; ".join(f"{k}: {old.get(k)!r} -> {config.get(k)!r}" for k in diff[:6])
            raise RunConfigError(
                f"{folder} holds a run with other arguments ({shown}); resume with the same arguments "
                "or choose another --out folder"
            )
    if write:
        (folder / "facts").mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, config)


def _progress(items, enabled: bool):
    if not enabled:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc="lakn localize", unit="fact")


def _versions() -> dict:
    import transformer_lens
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "transformer_lens": getattr(transformer_lens, "__version__", "?")}
