"""``lakn edit`` and ``lakn inject``: train the W_out rows of neurons to change or teach facts."""

from __future__ import annotations

from pathlib import Path

from ._common import add_deprecated, comma_list, evaluation_facts, positive_int, print_frame

__all__ = ["register_edit", "register_inject"]


def _add_training_args(p, seed_help: str) -> None:
    """Options edit and inject share: the KL term's weight, the early stop, the seed."""
    p.add_argument("--locality-weight", type=float, default=1.0, help="weight of the KL term (default 1)")
    p.add_argument("--target-prob", type=float, default=None,
                   help="stop once every training query gives the answer this probability (default: run all steps)")
    p.add_argument("--seed", type=int, default=0, help=seed_help)


def register_edit(sub) -> None:
    p = sub.add_parser("edit", help="cross-lingual knowledge editing through W_out rows of LAKNs vs controls",
                       description="Edit each fact of a run to another fact's answer (same relation) by a few Adam "
                                   "steps on the W_out rows of its LAKNs, of as many language-specific neurons, and of "
                                   "as many random neurons (matched per layer), using one language; measure "
                                   "reliability, generality (other languages) and locality. Every edit is undone. "
                                   "Writes DIR/edit.json.")
    p.add_argument("run", help="a run folder (or folder of runs: the matrice run is used)")
    p.add_argument("--data", default=None)
    p.add_argument("--model", default=None)
    p.add_argument("--language", default="en", help="the edit language (default en)")
    p.add_argument("--languages", type=comma_list, default=None, help="languages to measure (default: the fact's)")
    p.add_argument("--neurons", type=positive_int, default=None, help="neurons per set (default: smaller set's size)")
    p.add_argument("--steps", type=positive_int, default=10)
    p.add_argument("--lr", type=float, default=0.5)
    p.add_argument("--max-queries", type=positive_int, default=2)
    p.add_argument("--fact-ids", type=comma_list, default=None, help="comma-separated fact ids to edit (default: all)")
    add_deprecated(p, "--facts", "--fact-ids", "fact_ids", comma_list)
    p.add_argument("--preserve", type=int, default=8,
                   help="other facts whose next-token distribution the edit keeps (KL term; 0: none). They are "
                        "left out of the locality measurement (default 8)")
    _add_training_args(p, seed_help="seed of the random control and of the --preserve sample")
    p.set_defaults(handler=run_edit)


def run_edit(args) -> int:
    from ..evaluation import editing_experiment, load_runs
    from ..selection import editing_sets
    from ..models import load_model

    runs = load_runs(args.run)
    run = runs.get("matrice", next(iter(runs.values())))
    facts, _ = evaluation_facts(args, run)
    model = load_model(args.model, verbose=True)
    sets = editing_sets(run, language=args.language, n=args.neurons, seed=args.seed)
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


def register_inject(sub) -> None:
    p = sub.add_parser("inject", help="teach fictional facts through neurons in one language; recall in others",
                       description="Train the W_out rows of k neurons active on the subject in every language "
                                   "(and of k random neurons) on one language's queries of fictional facts, then "
                                   "query the facts in every language. Writes --out (JSON).")
    p.add_argument("--out", required=True, help="JSON file to write")
    p.add_argument("--model", default=None)
    p.add_argument("--language", default="en")
    p.add_argument("--languages", type=comma_list, default=None, help="languages to choose neurons with and to query")
    p.add_argument("--unrelated", default=None, help="facts file whose first --n-unrelated facts check locality")
    p.add_argument("--n-unrelated", type=positive_int, default=4)
    p.add_argument("--k", type=positive_int, default=20, help="neurons to train (default 20)")
    p.add_argument("--steps", type=positive_int, default=20)
    p.add_argument("--lr", type=float, default=0.5)
    p.add_argument("--fact-ids", type=comma_list, default=None, help="comma-separated fictional fact ids (default: all)")
    add_deprecated(p, "--facts", "--fact-ids", "fact_ids", comma_list)
    p.add_argument("--preserve", type=int, default=0,
                   help="facts of --unrelated after the first --n-unrelated whose next-token distribution the "
                        "training keeps (KL term; default 0)")
    _add_training_args(p, seed_help="seed of the random control")
    p.set_defaults(handler=run_inject)


def run_inject(args) -> int:
    from ..evaluation import fictional_facts, injection_experiment
    from ..facts import load_facts
    from ..models import load_model

    pool = load_facts(args.unrelated) if args.unrelated else []
    unrelated, preserve = pool[: args.n_unrelated], pool[args.n_unrelated : args.n_unrelated + max(args.preserve, 0)]
    model = load_model(args.model, verbose=True)
    known = fictional_facts()
    fictional = [f for f in known if args.fact_ids is None or f.fact_id in args.fact_ids]
    if not fictional:
        raise ValueError(f"no fictional fact among {args.fact_ids}; known: {[f.fact_id for f in known]}")
    res = injection_experiment(model, fictional, language=args.language, languages=args.languages, unrelated=unrelated,
                               k=args.k, steps=args.steps, lr=args.lr, preserve=preserve,
                               locality_weight=args.locality_weight, target_prob=args.target_prob, seed=args.seed)
    res.save(args.out)
    print_frame(f"injection of fictional facts, trained in {args.language}", res.table())
    print(f"written: {args.out}")
    return 0
