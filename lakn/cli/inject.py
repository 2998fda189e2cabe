"""Teach the fictional facts of lakn (facts no model can know) through neurons with each edit method
(closed_form: the least-squares update of the neurons' W_out rows, the default; gradient: Adam
steps; kn_embedding: the knowledge-neuron embedding edit), trained on some languages' queries, then
query them in every language (recall: the answer's first token top-1) and check real facts keep
their top-1 answer (locality). Neuron sets: k neurons active on the subject in every language, as
many random neurons (matched per layer), or a whole layer. Writes RUN/inject.json or --out.
"""

from __future__ import annotations

from pathlib import Path

from ._common import (AUTO_PRESERVE, add_edit_method_options, add_training_options, comma_list, edit_method_options,
                      evaluation_facts, positive_int, print_frame)

__all__ = ["register"]


def register(sub) -> None:
    p = sub.add_parser("inject", help="teach fictional facts through neurons in some languages; recall in all",
                       description=__doc__)
    p.add_argument("run", nargs="?", default=None,
                   help="a run folder: its facts check locality (unless --unrelated) and RUN/inject.json is written")
    p.add_argument("--data", default=None, help="the run's facts file (default: the one it recorded)")
    p.add_argument("--out", default=None, help="JSON file to write (default RUN/inject.json; needed without RUN)")
    add_training_options(p, language="the training language", languages="languages to choose neurons with and to query",
                         steps=20, what="fictional fact ids", preserve=None,
                         preserve_help="facts of --unrelated (or the run) after the first --n-unrelated that the "
                                       "training keeps: their prompts join the closed form's preserved keys, their "
                                       "next-token distribution the gradient method's KL term (0: none). Default: "
                                       f"the closed form keeps up to {AUTO_PRESERVE} of them, the gradient method "
                                       "none (lakn's demo facts are left out: it always keeps them; results.md run 11)",
                         seed_help="seed of the random control")
    p.add_argument("--train-languages", type=comma_list, default=None,
                   help="languages whose queries train the fact, e.g. en,fr (default: --language)")
    p.add_argument("--key-languages", type=comma_list, default=None,
                   help="closed_form: languages whose prompts (never their answers) give keys too, mapped to the first "
                        "training language's target with its pivot term, e.g. es,de,ru,zh (default: none)")
    add_edit_method_options(p, sets=("activation", "random", "layer"), default_sets="activation,random",
                            sets_help="neuron sets: activation (k neurons active on the subject in every language), "
                                      "random (as many, matched per layer), layer (every neuron of --layers)")
    p.add_argument("--unrelated", default=None, help="facts file whose first --n-unrelated facts check locality")
    p.add_argument("--n-unrelated", type=positive_int, default=4)
    p.add_argument("--k", type=positive_int, default=20, help="neurons to train (default 20)")
    p.set_defaults(handler=run)


def run(args) -> int:
    from ..evaluation import injection_experiment, load_runs
    from ..facts import DEMO_SETS, load_facts
    from ..models import load_model

    if args.out is None and args.run is None:
        raise ValueError("give a run folder (RUN/inject.json is written) or --out FILE")
    if args.unrelated:
        pool = load_facts(args.unrelated)
    elif args.run is not None:
        runs = load_runs(args.run)
        pool, _ = evaluation_facts(args, runs.get("matrice", next(iter(runs.values()))))
    else:
        pool = []
    auto = args.preserve is None  # the closed form's preserved keys only; the KL term when asked
    n_preserve = max(args.preserve, 0) if not auto else AUTO_PRESERVE if "closed_form" in args.method else 0
    unrelated, rest = pool[: args.n_unrelated], pool[args.n_unrelated :]
    if auto:  # lakn's demo facts are in the closed form's default keys already
        demo = {f.fact_id for name in DEMO_SETS for f in load_facts(name)}
        rest = [f for f in rest if f.fact_id not in demo]
    preserve = rest[:n_preserve]
    model = load_model(args.model, verbose=True)
    known = load_facts("fictional")
    fictional = [f for f in known if args.fact_ids is None or f.fact_id in args.fact_ids]
    if not fictional:
        raise ValueError(f"no fictional fact among {args.fact_ids}; known: {[f.fact_id for f in known]}")
    methods = {m: {"method": m, **{k: v for k, v in edit_method_options(args, m).items()
                                   if k not in ("steps", "lr", "target_prob")}} for m in args.method}
    if auto and "gradient" in methods:
        methods["gradient"]["preserve"] = []
    if preserve:
        print(f"preserving {len(preserve)} facts the injections neither change nor measure (--preserve)")
    if args.key_languages and "closed_form" in methods:
        methods["closed_form"]["key_languages"] = args.key_languages
    res = injection_experiment(model, fictional, language=args.language, languages=args.languages,
                               train_languages=args.train_languages, unrelated=unrelated, k=args.k, steps=args.steps,
                               lr=args.lr, preserve=preserve, locality_weight=args.locality_weight,
                               target_prob=args.target_prob, seed=args.seed, methods=methods,
                               neuron_sets=args.edit_set, layers=args.layers)
    out = Path(args.out) if args.out else Path(args.run) / "inject.json"
    res.save(out)
    trained = ",".join(args.train_languages or [args.language])
    print_frame(f"injection of fictional facts, trained in {trained}: recall = the answer's first token top-1 "
                "(trained languages / the others), locality = top-1 retention of real facts", res.wide())
    print_frame("per language", res.table())
    print(f"written: {out}")
    return 0
