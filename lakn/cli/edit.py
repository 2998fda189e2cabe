"""Edit each fact of a run to another fact's answer (same relation) by a few Adam steps on the W_out
rows of its LAKNs, of as many language-specific neurons, and of as many random neurons (matched
per layer), using one language; measure reliability, generality (other languages) and locality.
Every edit is undone. Writes DIR/edit.json.
"""

from __future__ import annotations

from pathlib import Path

from ._common import add_training_options, evaluation_facts, positive_int, print_frame

__all__ = ["register"]


def register(sub) -> None:
    p = sub.add_parser("edit", help="cross-lingual knowledge editing through W_out rows of LAKNs vs controls",
                       description=__doc__)
    p.add_argument("run", help="a run folder (or folder of runs: the matrice run is used)")
    p.add_argument("--data", default=None)
    add_training_options(p, language="the edit language", languages="languages to measure (default: the fact's)",
                         steps=10, what="fact ids to edit", preserve=8,
                         preserve_help="other facts whose next-token distribution the edit keeps (KL term; 0: "
                                       "none). They are left out of the locality measurement",
                         seed_help="seed of the random control and of the --preserve sample")
    p.add_argument("--neurons", type=positive_int, default=None, help="neurons per set (default: smaller set's size)")
    p.add_argument("--max-queries", type=positive_int, default=2)
    p.set_defaults(handler=run)


def run(args) -> int:
    from ..evaluation import editing_experiment, load_runs
    from ..models import load_model
    from ..selection import editing_sets

    runs = load_runs(args.run)
    result = runs.get("matrice", next(iter(runs.values())))
    facts, _ = evaluation_facts(args, result)
    model = load_model(args.model, verbose=True)
    sets = editing_sets(result, language=args.language, n=args.neurons, seed=args.seed)
    if args.fact_ids is not None:
        sets = {name: {f: n for f, n in per.items() if f in args.fact_ids} for name, per in sets.items()}
    res = editing_experiment(model, facts, sets, edit_language=args.language, languages=args.languages,
                             steps=args.steps, lr=args.lr, max_queries=args.max_queries, n_preserve=args.preserve,
                             locality_weight=args.locality_weight, target_prob=args.target_prob, seed=args.seed)
    out = Path(args.run) / "edit.json"
    res.save(out)
    print_frame(f"editing via W_out rows, edit language {args.language} (success = P(new) > P(old))", res.table())
    print(f"written: {out}")
    return 0
