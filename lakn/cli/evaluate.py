"""For every fact and method in DIR (a run folder, or a folder of runs as written by
lakn.localize_methods), zero (suppress) and double (enhance) the fact's neurons and measure the
probability change rate (P_after - P_before) / P_before and top-1 retention under the fair specificity
protocol: the fact's own queries (seen by the localisation, held-out paraphrases, held-out languages),
other facts of its relation with a different / the same first answer token, and other relations
(without queries that share the fact's answer token); the random control (as many neurons per layer)
on all of them. The other facts are never the run's own (they were its reference): a seeded sample of
the data file's remaining facts (--unrelated-per-relation per relation), recorded in DIR/eval.json.
Only queries the model answers before intervention count (--top-k-answer). With --known FILE (a table
of `lakn data known`) only the queries the model knows are measured. --tradeoff also measures own against
unrelated drop over neuron counts (and, for a causal run, contrast weights) -> DIR/tradeoff.json
(`lakn plot DIR` draws it).
"""

from __future__ import annotations

from pathlib import Path

from ._common import comma_list, evaluation_facts, positive_int, print_frame

__all__ = ["register"]


def _int_list(text: str) -> list[int]:
    return [positive_int(t) for t in comma_list(text)]


def _weights(text: str) -> list[tuple[float, float]]:
    """``"1:0.25,4:1"`` -> ``[(1.0, 0.25), (4.0, 1.0)]`` (same-relation : other-relation weight)."""
    import argparse

    out = []
    for part in comma_list(text):
        try:
            same, other = part.split(":")
            out.append((float(same), float(other)))
        except ValueError:
            raise argparse.ArgumentTypeError(f"weight pair {part!r} is not SAME:OTHER (e.g. 4:1)") from None
    return out


def register(sub) -> None:
    p = sub.add_parser("evaluate", help="suppress / enhance each method's neurons and measure how specific they are",
                       description=__doc__)
    p.add_argument("run", help="run folder(s) written by `lakn localize`")
    p.add_argument("--data", default=None, help="facts file (default: the run's)")
    p.add_argument("--model", default=None, help="model (default: embedded Gemma 3 270M)")
    p.add_argument("--known", default=None, metavar="FILE",
                   help="known-fact table (lakn data known): measure only the queries it marks known")
    p.add_argument("--holdout-languages", type=comma_list, default=[], help="extra languages to measure (never localised)")
    p.add_argument("--top-k-answer", type=positive_int, default=10,
                   help="keep queries whose first answer token is within the top k before intervention (default 10)")
    p.add_argument("--max-queries", type=positive_int, default=3,
                   help="own queries per fact, language and split (default 3)")
    p.add_argument("--enhancement", action="store_true",
                   help="also run knowledge enhancement (neurons from the languages a fact is right in) -> DIR/enhance.json")
    p.add_argument("--first-token-only", choices=("auto", "yes", "no"), default="auto",
                   help="measure P of the answer's first token only (default auto: as the run was localised)")
    p.add_argument("--right-rank", type=positive_int, default=1,
                   help="enhancement: a language is right when the answer's first token is within this rank (default 1)")
    p.add_argument("--unrelated-per-relation", type=positive_int, default=8,
                   help="facts not in the run sampled per relation as the unrelated facts (default 8)")
    p.add_argument("--max-unrelated", type=positive_int, default=16,
                   help="other-relation queries measured per fact (a seeded sample; default 16)")
    p.add_argument("--max-same-relation", type=positive_int, default=None,
                   help="same-relation different-answer queries per fact (a seeded sample; default all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random control and of the unrelated samples")
    p.add_argument("--batch-size", type=positive_int, default=16)
    p.add_argument("--tradeoff", action="store_true",
                   help="also measure own against unrelated drop over --tradeoff-k (and --tradeoff-weights for a "
                        "causal run) -> DIR/tradeoff.json")
    p.add_argument("--tradeoff-k", type=_int_list, default=[10, 20, 40, 80], metavar="K,K,...",
                   help="trade-off: neuron counts (default 10,20,40,80)")
    p.add_argument("--tradeoff-weights", type=_weights, default=[(1.0, 0.25), (4.0, 1.0), (16.0, 4.0)],
                   metavar="SAME:OTHER,...", help="trade-off, causal runs: contrast weight pairs (default 1:0.25,4:1,16:4)")
    p.add_argument("--tradeoff-methods", type=comma_list, default=None, metavar="M,M,...",
                   help="trade-off, causal runs: scoring methods to re-select with (default: each run's own)")
    p.set_defaults(handler=run)


def run(args) -> int:
    import sys
    import warnings

    from ..evaluation import change_rates, enhancement_experiment, load_runs
    from ..facts import check_languages, load_facts
    from ..models import load_model
    from ..selection import neuron_sets

    runs = load_runs(args.run)
    first = next(iter(runs.values()))
    facts, data = evaluation_facts(args, first)
    pool = [f for f in load_facts(data) if f.fact_id not in set(first.fact_ids)]
    if args.known:
        held = check_languages(args.holdout_languages) if args.holdout_languages else []
        facts = _known_facts(facts, args.known, held)
        pool = _known_facts(pool, args.known, [], quiet=True)
    if not pool:
        print(f"lakn: warning: {data} holds no fact outside the run: the same- and other-relation groups are "
              "empty (pass --data with more facts)", file=sys.stderr)
    languages = list(dict.fromkeys(first.languages + check_languages(args.holdout_languages)
                                   if args.holdout_languages else first.languages))
    model = load_model(args.model, verbose=True)
    sets = neuron_sets(runs, seed=args.seed)
    first_only = (bool(first.config.get("first_token_only")) if args.first_token_only == "auto"
                  else args.first_token_only == "yes")
    options = dict(languages=languages, top_k_answer=args.top_k_answer, max_queries=args.max_queries,
                   max_unrelated=args.max_unrelated, max_same_relation=args.max_same_relation,
                   unrelated_per_relation=args.unrelated_per_relation, seed=args.seed, first_token_only=first_only,
                   batch_size=args.batch_size)
    with warnings.catch_warnings():  # said above, in the command's words
        warnings.filterwarnings("ignore", message="change_rates: every fact given")
        rates = change_rates(model, sets, [*facts, *pool], result=first, **options)
    out = Path(args.run) / "eval.json"
    rates.save(out)
    c = rates.config
    u = c["unrelated"]
    print(f"own queries kept (first answer token in top {args.top_k_answer}): {c['n_kept']}/{c['n_queries']} "
          f"by split {c['kept_by_split']}; facts kept: {len(c['facts_kept'])}/{len(facts)}")
    print(f"unrelated facts: {len(u['fact_ids'])} of {u['pool']} not in the run (seed {u['seed']}, at most "
          f"{u['per_relation']} per relation), {u['n_probe_kept']}/{u['n_probe_queries']} of their queries kept")
    print_frame("suppress (neurons zeroed): change rate, mean ± s.e. over facts (facts f / queries q)",
                rates.specificity_table())
    print_frame("suppress: top-1 retention (share of queries whose top-1 token is unchanged), mean ± s.e.",
                rates.specificity_table("retention", counts=False))
    print_frame("suppress: change rate per language (mean ± s.e. over facts)",
                rates.specificity_table(by_language=True, counts=False))
    if "enhance" in c["interventions"]:
        print_frame("enhance (neurons doubled): change rate, mean ± s.e. over facts",
                    rates.specificity_table(intervention="enhance", counts=False))
    if args.enhancement:
        main_run = runs.get("matrice", first)
        enh = enhancement_experiment(model, main_run, facts, languages=languages, max_queries=args.max_queries,
                                     seed=args.seed, first_token_only=first_only, right_rank=args.right_rank,
                                     batch_size=args.batch_size)
        enh.save(Path(args.run) / "enhance.json")
        print_frame("knowledge enhancement in languages the model got wrong", enh.table())
    print(f"written: {out}")
    if args.tradeoff:
        from ..evaluation import tradeoff

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="change_rates: every fact given")
            curve = tradeoff(model, runs, [*facts, *pool], ks=args.tradeoff_k, weights=args.tradeoff_weights,
                             methods=args.tradeoff_methods, **options)
        path = curve.save(Path(args.run) / "tradeoff.json")
        print_frame("trade-off: change rate of own (seen, held-out language) and unrelated queries per grid point",
                    curve.table())
        print(f"written: {path}")
    return 0


def _known_facts(facts, path, holdout_languages, *, quiet: bool = False):
    """The facts restricted to the queries the table marks known (a query keeps its split: splits go by prompt)."""
    import sys

    from ..known import KnownTable, filter_known

    table = KnownTable.load(path)
    missing = [lang for lang in holdout_languages if lang not in table.languages]
    if missing:
        print(f"lakn: warning: the known table {path} has no rows in {', '.join(missing)}: no query of those "
              "languages is measured (run lakn data known with them)", file=sys.stderr)
    kept = filter_known(facts, table)
    if quiet:
        return kept
    n_queries = sum(len(f.templates[lang]) for f in kept for lang in f.languages)
    print(f"known table {path}: {len(kept)}/{len(facts)} facts known, {n_queries} known queries "
          f"(first answer token in the top {table.top_k})")
    return kept
