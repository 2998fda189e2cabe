"""For every fact and method in DIR (a run folder, or a folder of run folders as written by
lakn.localize_methods), zero (suppress) and double (enhance) the fact's neurons and measure
(P_after - P_before) / P_before on the fact's own queries and on other facts' (same relation /
other relations). Queries the localisation did not see are reported as held-out. Writes DIR/eval.json.
With --known FILE (a table of `lakn data known`) only the queries the model knows are measured; held-out
paraphrases and languages among them stay held out.
"""

from __future__ import annotations

from pathlib import Path

from ._common import comma_list, evaluation_facts, positive_int, print_frame

__all__ = ["register"]


def register(sub) -> None:
    p = sub.add_parser("evaluate", help="suppress / enhance each method's neurons and measure probability changes",
                       description=__doc__)
    p.add_argument("run", help="run folder(s) written by `lakn localize`")
    p.add_argument("--data", default=None, help="facts file (default: the run's)")
    p.add_argument("--model", default=None, help="model (default: embedded Gemma 3 270M)")
    p.add_argument("--known", default=None, metavar="FILE",
                   help="known-fact table (lakn data known): measure only the queries it marks known")
    p.add_argument("--holdout-languages", type=comma_list, default=[], help="extra languages to measure (never localised)")
    p.add_argument("--top-k-answer", type=positive_int, default=10,
                   help="keep queries whose first answer token is within the top k before intervention (default 10)")
    p.add_argument("--max-queries", type=positive_int, default=3, help="queries per fact, language and split (default 3)")
    p.add_argument("--enhancement", action="store_true",
                   help="also run knowledge enhancement (neurons from the languages a fact is right in) -> DIR/enhance.json")
    p.add_argument("--first-token-only", choices=("auto", "yes", "no"), default="auto",
                   help="measure P of the answer's first token only (default auto: as the run was localised)")
    p.add_argument("--right-rank", type=positive_int, default=1,
                   help="enhancement: a language is right when the answer's first token is within this rank (default 1)")
    p.add_argument("--max-unrelated", type=positive_int, default=None,
                   help="other-relation queries measured per fact (a seeded sample; default all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random control (and of --max-unrelated)")
    p.add_argument("--batch-size", type=positive_int, default=16)
    p.set_defaults(handler=run)


def run(args) -> int:
    from ..evaluation import change_rates, enhancement_experiment, load_runs
    from ..selection import neuron_sets
    from ..facts import check_languages
    from ..models import load_model

    runs = load_runs(args.run)
    first = next(iter(runs.values()))
    facts, _ = evaluation_facts(args, first)
    if args.known:
        facts = _known_facts(facts, args.known, check_languages(args.holdout_languages) if args.holdout_languages else [])
    languages = list(dict.fromkeys(first.languages + check_languages(args.holdout_languages)
                                   if args.holdout_languages else first.languages))
    model = load_model(args.model, verbose=True)
    sets = neuron_sets(runs, seed=args.seed)
    first_only = (bool(first.config.get("first_token_only")) if args.first_token_only == "auto"
                  else args.first_token_only == "yes")
    rates = change_rates(model, sets, facts, result=first, languages=languages, top_k_answer=args.top_k_answer,
                         max_queries=args.max_queries, max_unrelated=args.max_unrelated, seed=args.seed,
                         first_token_only=first_only, batch_size=args.batch_size)
    out = Path(args.run) / "eval.json"
    rates.save(out)
    c = rates.config
    print(f"queries kept (first answer token in top {args.top_k_answer}): {c['n_kept']}/{c['n_queries']} "
          f"by split {c['kept_by_split']}; facts kept: {len(c['facts_kept'])}/{len(facts)}")
    print_frame("probability change rate, all kept queries (mean over facts)", rates.table())
    held = [s for s in ("heldout_paraphrase", "heldout_language") if c["kept_by_split"].get(s)]
    if held:
        print_frame("held-out queries only", rates.table(split=held))
    if args.enhancement:
        main_run = runs.get("matrice", first)
        enh = enhancement_experiment(model, main_run, facts, languages=languages, max_queries=args.max_queries,
                                     seed=args.seed, first_token_only=first_only, right_rank=args.right_rank,
                                     batch_size=args.batch_size)
        enh.save(Path(args.run) / "enhance.json")
        print_frame("knowledge enhancement in languages the model got wrong", enh.table())
    print(f"written: {out}")
    return 0


def _known_facts(facts, path, holdout_languages):
    """The facts restricted to the queries the table marks known (a query keeps its split: splits go by prompt)."""
    import sys

    from ..known import KnownTable, filter_known

    table = KnownTable.load(path)
    missing = [lang for lang in holdout_languages if lang not in table.languages]
    if missing:
        print(f"lakn: warning: the known table {path} has no rows in {', '.join(missing)}: no query of those "
              "languages is measured (run lakn data known with them)", file=sys.stderr)
    kept = filter_known(facts, table)
    n_queries = sum(len(f.templates[lang]) for f in kept for lang in f.languages)
    print(f"known table {path}: {len(kept)}/{len(facts)} facts known, {n_queries} known queries "
          f"(first answer token in the top {table.top_k})")
    return kept
