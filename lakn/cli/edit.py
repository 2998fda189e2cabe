"""Edit each fact of a run to the answer of the next fact of its relation (each fact its own,
lakn.evaluation.counterfactuals) with each edit method (closed_form:
the constrained least-squares update of the neurons' W_out rows, the default; gradient: Adam steps
on the rows; kn_embedding: the knowledge-neuron embedding edit) through each neuron set (the LAKNs,
as many language-specific and random neurons matched per layer, or whole layers), alone or in
batches, using one language; measure against the model before the edit: reliability (edit
language), generality per language, held-out paraphrases and locality on the same and on other
relations. Every edit is undone. Writes DIR/edit.json.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from ._common import (AUTO_PRESERVE, add_edit_method_options, add_training_options, edit_method_options,
                      evaluation_facts, comma_list, int_list, positive_int, print_frame)

__all__ = ["register"]


def register(sub) -> None:
    p = sub.add_parser("edit", help="cross-lingual knowledge editing through W_out rows of LAKNs vs controls",
                       description=__doc__)
    p.add_argument("run", help="a run folder (or folder of runs: the matrice run is used)")
    p.add_argument("--data", default=None)
    add_training_options(p, language="the edit language", languages="languages to measure (default: the fact's)",
                         steps=10, what="fact ids to edit", preserve=None,
                         preserve_help="other facts the edit keeps: their query prompts join the closed form's "
                                       "preserved keys, and their next-token distribution the gradient method's KL "
                                       "term (0: none); they are left out of the locality measurement. A seeded "
                                       "sample, the edited facts' relations first. Default: "
                                       f"the closed form keeps up to {AUTO_PRESERVE} facts of the data file outside "
                                       "the run (none for lakn's demo sets, whose facts it always keeps; results.md "
                                       "runs 7 and 14)",
                         seed_help="seed of the random control and of the --preserve sample")
    add_edit_method_options(p, sets=("lakn", "layer", "key"), default_sets="lakn",
                            sets_help="neuron sets: lakn (the LAKNs, as many language-specific and random neurons), "
                                      "layer (every neuron of --layers) and/or key (the --key-neurons neurons of that "
                                      "layer the fact's keys lean on most, lakn.key_neurons, and as many random ones)")
    p.add_argument("--neurons", type=positive_int, default=None, help="neurons per set (default: smaller set's size)")
    p.add_argument("--key-neurons", type=positive_int, default=1024,
                   help="size of the key set (default 1024: results.md run 6, the smallest set with the whole "
                        "layer's reliability, and more local)")
    p.add_argument("--target-languages", type=comma_list, default=None,
                   help="closed_form, gradient: find the target on these languages' new answers too (default: the "
                        "edit language alone)")
    p.add_argument("--translate", action=argparse.BooleanOptionalAction, default=None,
                   help="closed_form, gradient: find the target on the edit language's new answer and the model's "
                        "own translations of it into the target languages (default: every key language lakn has "
                        "translation examples for), kept where the model translates them back; the data's other "
                        "answers are then only measured. Default: on for single closed_form edits without "
                        "--target-languages, off for --batch / --chunk batches of several facts and for gradient "
                        "(lakn.edit_fact's translate='auto', results.md runs 17, 19 and 20)")
    p.add_argument("--per-language", action=argparse.BooleanOptionalAction, default=True,
                   help="closed_form, with --target-languages or translations: each target language's keys but the "
                        "edit language's a group of their own, re-solved apart while its queries miss "
                        "(lakn.edit_fact's per_language; default on, results.md run 17)")
    p.add_argument("--max-queries", type=positive_int, default=2,
                   help="queries per language the edit uses and reliability/generality measure (default 2)")
    p.add_argument("--max-heldout", type=int, default=2,
                   help="held-out paraphrases per language measured (not used by the edit; default 2)")
    p.add_argument("--batch", type=int_list, default=[1],
                   help="facts per edit, comma-separated, e.g. 1,10,50 (one batched solve each; default 1)")
    p.add_argument("--chunk", type=positive_int, default=None,
                   help="closed_form: solve each batch in chunks of this many facts, one after another, each on the "
                        "model the earlier chunks edited, whose keys each later solve holds in place (lakn.edit_facts' "
                        "chunk_size, results.md run 15; default: one solve per batch)")
    p.set_defaults(handler=run)


def layer_sets(model, neuron_sets, layers=None):
    """``{fact_id: every neuron of layers}``; without ``layers`` the layer that holds most of the fact's neurons."""
    from .. import editing

    d_mlp = int(model.cfg.d_mlp)
    whole = getattr(editing, "layer_neurons", None) or (lambda m, ls: [(l, i) for l in ls for i in range(d_mlp)])
    out = {}
    for fid, neurons in neuron_sets.items():
        chosen = list(layers) if layers else [Counter(l for l, _ in neurons).most_common(1)[0][0]]
        out[fid] = list(whole(model, chosen))
    return out


def key_sets(model, facts, whole, args) -> dict:
    """``key`` (:func:`lakn.key_neurons` of each fact's first layer in ``whole``, keys in the languages
    measured) and ``key_random`` (as many random neurons of the same layer)."""
    from ..closed_form import preservation_for
    from ..keys import key_neurons
    from ..selection import random_control

    by_id = {f.fact_id: f for f in facts}
    layers = sorted({n[0] for per in whole.values() for n in per[:1]})
    # the closed form's default preserved keys without the edited facts' prompts (cached; each edit
    # leaves out only its own fact, so its covariance differs from this one by the other edited facts)
    moments = preservation_for(model, None, layers, frozenset(whole))
    key, rnd = {}, {}
    for i, (fid, neurons) in enumerate(whole.items()):
        fact = by_id.get(fid)
        if fact is None:
            continue
        layer = neurons[0][0]
        langs = [l for l in (args.languages or sorted(fact.templates)) if l in fact.templates]
        key[fid] = key_neurons(model, fact, layer, min(args.key_neurons, int(model.cfg.d_mlp)), moments[layer], langs,
                               max_queries=args.max_queries,
                               position=(args.position or "subject") if fact.subjects else "last")
        rnd[fid] = random_control(key[fid], int(model.cfg.d_mlp), args.seed, i)
    return {"key": key, "key_random": rnd}


def preserve_candidates(args, result, facts, edited, auto: bool = False) -> list:
    """The facts ``--preserve`` samples from: those of the data file outside the run (the locality pool
    is the run's facts), else the run's facts that are not edited; none is an error. ``auto`` (the
    default ``--preserve``): only facts outside the run, none for a demo set, and none is no error."""
    from ..facts import DEMO_SETS, load_facts
    from ._common import absolute_path

    data = args.data or result.config.get("data") or "demo"
    if auto and data in DEMO_SETS:
        return []
    in_run = {f.fact_id for f in facts}
    outside = [f for f in load_facts(data if data in DEMO_SETS else absolute_path(data)) if f.fact_id not in in_run]
    if auto:
        return outside
    rest = outside or [f for f in facts if f.fact_id not in edited]
    if not rest:
        raise ValueError("--preserve needs facts that are neither edited nor measured: every fact of the run is "
                         "edited and the data holds no other; pass --fact-ids (the others are preserved) or "
                         "--data with more facts")
    return rest


def preserved_sample(rest: list, relations: set[str], n: int, seed: int) -> list:
    """``n`` facts of ``rest`` in a seeded random order, those of the edited ``relations`` first:
    their prompts share the edits' keys most, so they are the neighbours a solve must hold still
    (results.md run 14: for fifty edits in one solve, .79 take at .65 / .68 locality against .71 at
    .55 / .60 for a draw blind to relations; single edits keep .96 / .97 either way). ``run`` asks
    for this only when ``rest`` lies outside the run: facts taken from the run itself leave its
    locality pool, and taking its same-relation facts first would hide the edits' cost there."""
    import torch

    from ..selection import seeded_generator

    order = torch.randperm(len(rest), generator=seeded_generator(seed, 0)).tolist()
    return sorted((rest[i] for i in order), key=lambda f: f.relation not in relations)[:n]


def fact_preservation(model, sets, edited, picked, args):
    """The closed form's preserved keys with ``picked`` facts: the default ones (generic text, demo facts)
    plus those facts' query prompts (the first ``--max-queries`` per measured language), on every
    layer of ``sets``; results.md run 7: other facts of the data buy most of the locality."""
    from ..closed_form import preservation_for

    layers = sorted({l for per in sets.values() for neurons in per.values() for l, _ in neurons})
    return preservation_for(model, picked, layers, frozenset(edited), languages=args.languages,
                            max_queries=args.max_queries)


def run(args) -> int:
    from ..evaluation import load_runs
    from ..evaluation.editing import edit_evaluation
    from ..models import load_model
    from ..selection import editing_sets

    runs = load_runs(args.run)
    result = runs.get("matrice", next(iter(runs.values())))
    facts, _ = evaluation_facts(args, result)
    model = load_model(args.model, verbose=True)
    found = editing_sets(result, language=args.language, n=args.neurons, seed=args.seed)
    if args.fact_ids is not None:  # once, at the source: the layer and key sets derive from found["lakn"]
        found = {name: {f: n for f, n in per.items() if f in args.fact_ids} for name, per in found.items()}
    sets = {}
    if "lakn" in args.edit_set:
        sets.update(found)
    if "layer" in args.edit_set or "key" in args.edit_set:
        whole = layer_sets(model, {fid: result.lakn[fid] for fid in found["lakn"]}, args.layers)
    if "layer" in args.edit_set:
        sets["layer"] = whole
    if "key" in args.edit_set:
        sets.update(key_sets(model, facts, whole, args))
    methods = {m: {"method": m, **edit_method_options(args, m)} for m in args.method}
    for m in ("closed_form", "gradient"):
        if m in methods and args.target_languages:
            methods[m]["target_languages"] = args.target_languages
        if m in methods and args.translate is not None:  # None: edit_fact's "auto"
            methods[m]["translate"] = args.translate
    if "closed_form" in methods and not args.per_language:  # recorded, like the other options, when not the default
        methods["closed_form"]["per_language"] = False
    unrelated = list(facts)
    auto = args.preserve is None  # the closed form only, facts outside the run only, none is no error
    n_preserve = (AUTO_PRESERVE if "closed_form" in methods else 0) if auto else args.preserve
    edited = {f for per in sets.values() for f in per}
    rest = preserve_candidates(args, result, facts, edited, auto) if n_preserve > 0 else []
    if rest and {"gradient", "closed_form"} & set(methods):
        in_run = {f.fact_id for f in facts}  # rest falls back to the run's own facts: keep its relations measured
        outside = not any(f.fact_id in in_run for f in rest)
        relations = {f.relation for f in facts if f.fact_id in edited} if outside else set()
        picked = preserved_sample(rest, relations, n_preserve, args.seed)
        print(f"preserving {len(picked)} facts the edits neither change nor measure (--preserve)")
        if "gradient" in methods and not auto:
            prompts = [f.queries(args.language)[0] for f in picked
                       if args.language in f.templates and f.answers.get(args.language) and f.queries(args.language)]
            methods["gradient"].update(preserve=prompts, locality_weight=args.locality_weight)
        if "closed_form" in methods:
            methods["closed_form"]["preserve"] = fact_preservation(model, sets, edited, picked, args)
        unrelated = [f for f in facts if f not in picked]
    res = edit_evaluation(model, facts, sets, methods=methods, edit_language=args.language, languages=args.languages,
                          max_queries=args.max_queries, max_heldout=args.max_heldout, unrelated=unrelated,
                          batch_sizes=args.batch)
    out = Path(args.run) / "edit.json"
    res.save(out)
    print_frame(f"editing, edit language {args.language}: top-1 of the new answer (reliability, generality per "
                "language, held-out paraphrases), share of generality queries with P(new) > P(old), top-1 retention "
                "of unrelated facts (loc_same: same relation, other answer; loc_other: other relations)", res.wide())
    print_frame("per metric and language (value: top-1 share after the edit; before: the same before it; "
                "n_queries / n_facts behind each cell)", res.table())
    if res.config.get("skipped_batches"):
        print(f"batches skipped (too few facts): {res.config['skipped_batches']}")
    print(f"written: {out}")
    return 0
