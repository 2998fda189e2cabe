"""Train the W_out rows of k neurons active on the subject in every language (and of k random
neurons) on one language's queries of fictional facts, then query the facts in every language.
Writes --out (JSON).
"""

from __future__ import annotations

from ._common import add_training_options, positive_int, print_frame

__all__ = ["register"]


def register(sub) -> None:
    p = sub.add_parser("inject", help="teach fictional facts through neurons in one language; recall in others",
                       description=__doc__)
    p.add_argument("--out", required=True, help="JSON file to write")
    add_training_options(p, language="the training language", languages="languages to choose neurons with and to query",
                         steps=20, what="fictional fact ids", preserve=0,
                         preserve_help="facts of --unrelated after the first --n-unrelated whose next-token "
                                       "distribution the training keeps (KL term)",
                         seed_help="seed of the random control")
    p.add_argument("--unrelated", default=None, help="facts file whose first --n-unrelated facts check locality")
    p.add_argument("--n-unrelated", type=positive_int, default=4)
    p.add_argument("--k", type=positive_int, default=20, help="neurons to train (default 20)")
    p.set_defaults(handler=run)


def run(args) -> int:
    from ..evaluation import injection_experiment
    from ..facts import load_facts
    from ..models import load_model

    pool = load_facts(args.unrelated) if args.unrelated else []
    unrelated, preserve = pool[: args.n_unrelated], pool[args.n_unrelated : args.n_unrelated + max(args.preserve, 0)]
    model = load_model(args.model, verbose=True)
    known = load_facts("fictional")
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
