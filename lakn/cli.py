"""The ``lakn`` command line: ``lakn localize``, ``lakn plot`` (and ``python -m lakn ...``).

Each subcommand is a ``register_*`` function that adds its parser and its handler; errors from
bad input are printed as one line (``lakn: error: ...``) with exit status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

__all__ = ["main", "build_parser"]


def _languages(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def register_localize(sub) -> None:
    p = sub.add_parser("localize", help="find the LAKNs of each fact and write a run folder",
                       description="Attribute every query with integrated gradients, score each fact with "
                                   "MATRICE (or a baseline) and write DIR/neurons.json. Re-running with the "
                                   "same arguments resumes an interrupted run.")
    p.add_argument("--out", required=True, help="run folder (created; an existing one is resumed)")
    p.add_argument("--model", default=None, help="HF folder, .gguf file or hub name (default: embedded Gemma 3 270M)")
    p.add_argument("--data", default="demo", help="facts .jsonl/.json file, or 'demo' (default)")
    p.add_argument("--languages", type=_languages, default=None, help="comma-separated codes (default: all shared)")
    p.add_argument("--facts", type=_positive_int, default=None, help="use the first N facts")
    p.add_argument("--method", default="matrice", choices=["matrice", "kn", "amig", "mean", "random"])
    p.add_argument("--steps", type=_positive_int, default=20, help="integrated-gradient steps m (default 20)")
    p.add_argument("--queries", type=_positive_int, default=None, help="paraphrases per language (default all)")
    p.add_argument("--first-token-only", action="store_true", help="attribute the first answer token only")
    p.add_argument("--threshold", type=float, default=0.2, help="selection threshold t (share of the max)")
    p.add_argument("--top-k", type=_positive_int, default=None, help="cap LAKNs per fact")
    p.add_argument("--beta", type=float, default=None, help="MATRICE within-language penalty (default 1)")
    p.add_argument("--gamma", type=float, default=None, help="MATRICE cross-language penalty (default 1)")
    p.add_argument("--query-weighting", choices=["uniform", "confidence", "entropy"], default=None)
    p.add_argument("--specificity", choices=["auto", "raw", "specific"], default="auto")
    p.add_argument("--reference", choices=["others", "other_relations", "same_relation"], default="others")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--attribution", choices=["auto", "fast", "reference", "approx", "coarse-to-fine"],
                   default="auto", help="exact IG: fast single-position path where verified (auto), or the "
                                        "reference loop; approx / coarse-to-fine: approximate screening")
    p.add_argument("--batch-size", type=_positive_int, default=None,
                   help="rows per forward/backward pass (chunk size; results do not depend on it; "
                        "default: as many as fit about 1 GiB, see lakn.attribution.auto_batch_size)")
    p.add_argument("--drop-incomplete", action="store_true", help="skip facts lacking a requested language")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cpu; under torchrun 'cuda' means the process's LOCAL_RANK GPU)")
    p.set_defaults(handler=_run_localize)


def _run_localize(args) -> int:
    from .facts import load_facts, select_facts
    from .localization import localize
    from .models import is_masked_lm, load_model

    t0 = time.perf_counter()
    facts = load_facts(args.data)  # data errors first: they are cheap to find
    if args.languages is not None or args.facts is not None:
        select_facts(facts, languages=args.languages, n_facts=args.facts, drop_incomplete=args.drop_incomplete)
    device = args.device
    if device == "cuda" and "LOCAL_RANK" in os.environ:  # under torchrun: one GPU per process
        device = f"cuda:{os.environ['LOCAL_RANK']}"
    model = load_model(args.model, device=device, verbose=True)
    kwargs = {k: v for k, v in (("beta", args.beta), ("gamma", args.gamma),
                                ("query_weighting", args.query_weighting)) if v is not None}
    if args.method in ("kn", "amig") and kwargs:
        raise ValueError(f"--beta/--gamma/--query-weighting apply to matrice, mean and random, not {args.method}")
    if args.method == "mean":
        kwargs = {}
    result = localize(
        model, facts, languages=args.languages, n_facts=args.facts, method=args.method, steps=args.steps,
        attribution=args.attribution,
        max_queries=args.queries, first_token_only=args.first_token_only, threshold=args.threshold,
        top_k=args.top_k, specificity=args.specificity, reference=args.reference, seed=args.seed,
        batch_size=args.batch_size, drop_incomplete=args.drop_incomplete, out=args.out, data=args.data,
        progress=True, **kwargs,
    )
    n = [len(v) for v in result.lakn.values()]
    q = result.queries_dataframe()
    print(f"facts done: {len(n)}  languages: {','.join(result.languages)}  queries: {len(q)}  "
          f"method: {args.method} (selection: {result.selection})")
    print(f"LAKNs per fact: mean {sum(n) / len(n):.1f}, min {min(n)}, max {max(n)}")
    if len(q):
        acc = q.assign(top10=q["rank"] < 10).groupby("language")["top10"].mean()
        print("queries answered (answer in top 10): " + ", ".join(f"{k} {v:.0%}" for k, v in acc.items()))
    print(f"time: {time.perf_counter() - t0:.0f} s   written: {Path(args.out) / 'neurons.json'}")
    return 0


def register_plot(sub) -> None:
    p = sub.add_parser("plot", help="write the figures of a run folder as HTML files")
    p.add_argument("run", help="run folder written by `lakn localize`")
    p.add_argument("--out", default=None, help="folder for the HTML files (default: RUN/figures)")
    p.set_defaults(handler=_run_plot)


def _run_plot(args) -> int:
    from .plotting import write_run_figures

    for path in write_run_figures(args.run, args.out):
        print(path)
    return 0


def _evaluation_facts(args, run):
    from .facts import load_facts

    data = args.data or run.config.get("data") or "demo"
    facts = load_facts(data)
    ids = set(run.fact_ids)
    return [f for f in facts if f.fact_id in ids], data


def _print_frame(title: str, frame) -> None:
    import pandas as pd

    print(f"\n{title}")
    if frame is None or len(frame) == 0:
        print("  (nothing to show: no query was kept)")
        return
    with pd.option_context("display.max_columns", 30, "display.width", 200, "display.float_format", "{:+.3f}".format):
        print(frame)


def register_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="suppress / enhance each method's neurons and measure probability changes",
                       description="For every fact and method in DIR (a run folder, or a folder of run folders as "
                                   "written by lakn.localize_methods), zero (suppress) and double (enhance) the fact's "
                                   "neurons and measure (P_after - P_before) / P_before on the fact's own queries and "
                                   "on other facts' (same relation / other relations). Queries the localisation did "
                                   "not see are reported as held-out. Writes DIR/eval.json.")
    p.add_argument("run", help="run folder(s) written by `lakn localize`")
    p.add_argument("--data", default=None, help="facts file (default: the run's)")
    p.add_argument("--model", default=None, help="model (default: embedded Gemma 3 270M)")
    p.add_argument("--holdout-languages", type=_languages, default=[], help="extra languages to measure (never localised)")
    p.add_argument("--top-k-answer", type=_positive_int, default=10,
                   help="keep queries whose first answer token is within the top k before intervention (default 10)")
    p.add_argument("--max-queries", type=_positive_int, default=3, help="queries per fact, language and split (default 3)")
    p.add_argument("--enhancement", action="store_true",
                   help="also run knowledge enhancement (neurons from the languages a fact is right in) -> DIR/enhance.json")
    p.add_argument("--first-token-only", choices=("auto", "yes", "no"), default="auto",
                   help="measure P of the answer's first token only (default auto: as the run was localised)")
    p.add_argument("--right-rank", type=_positive_int, default=1,
                   help="enhancement: a language is right when the answer's first token is within this rank (default 1)")
    p.add_argument("--max-unrelated", type=_positive_int, default=None,
                   help="other-relation queries measured per fact (a seeded sample; default all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random control (and of --max-unrelated)")
    p.add_argument("--batch-size", type=_positive_int, default=16)
    p.set_defaults(handler=_run_evaluate)


def _run_evaluate(args) -> int:
    from .evaluation import change_rates, enhancement_experiment, load_runs, neuron_sets
    from .facts import check_languages
    from .models import load_model

    runs = load_runs(args.run)
    first = next(iter(runs.values()))
    facts, _ = _evaluation_facts(args, first)
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
    _print_frame("probability change rate, all kept queries (mean over facts)", rates.table())
    held = [s for s in ("heldout_paraphrase", "heldout_language") if c["kept_by_split"].get(s)]
    if held:
        _print_frame("held-out queries only", rates.table(split=held))
    if args.enhancement:
        main_run = runs.get("matrice", first)
        enh = enhancement_experiment(model, main_run, facts, languages=languages, max_queries=args.max_queries,
                                     seed=args.seed, first_token_only=first_only, right_rank=args.right_rank,
                                     batch_size=args.batch_size)
        enh.save(Path(args.run) / "enhance.json")
        _print_frame("knowledge enhancement in languages the model got wrong", enh.table())
    print(f"written: {out}")
    return 0


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
    p.add_argument("--languages", type=_languages, default=None, help="languages to measure (default: the fact's)")
    p.add_argument("--neurons", type=_positive_int, default=None, help="neurons per set (default: smaller set's size)")
    p.add_argument("--steps", type=_positive_int, default=10)
    p.add_argument("--lr", type=float, default=0.5)
    p.add_argument("--max-queries", type=_positive_int, default=2)
    p.add_argument("--facts", type=_languages, default=None, help="comma-separated fact ids to edit (default: all)")
    p.add_argument("--preserve", type=int, default=8,
                   help="other facts whose next-token distribution the edit keeps (KL term; 0: none). They are "
                        "left out of the locality measurement (default 8)")
    _add_training_args(p, seed_help="seed of the random control and of the --preserve sample")
    p.set_defaults(handler=_run_edit)


def _run_edit(args) -> int:
    from .evaluation import editing_experiment, editing_sets, load_runs
    from .models import load_model

    runs = load_runs(args.run)
    run = runs.get("matrice", next(iter(runs.values())))
    facts, _ = _evaluation_facts(args, run)
    model = load_model(args.model, verbose=True)
    sets = editing_sets(run, language=args.language, n=args.neurons, seed=args.seed)
    if args.facts is not None:
        sets = {name: {f: n for f, n in per.items() if f in args.facts} for name, per in sets.items()}
    res = editing_experiment(model, facts, sets, edit_language=args.language, languages=args.languages,
                             steps=args.steps, lr=args.lr, max_queries=args.max_queries, n_preserve=args.preserve,
                             locality_weight=args.locality_weight, target_prob=args.target_prob, seed=args.seed)
    out = Path(args.run) / "edit.json"
    res.save(out)
    _print_frame(f"editing via W_out rows, edit language {args.language} (success = P(new) > P(old))", res.table())
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
    p.add_argument("--languages", type=_languages, default=None, help="languages to choose neurons with and to query")
    p.add_argument("--unrelated", default=None, help="facts file whose first --n-unrelated facts check locality")
    p.add_argument("--n-unrelated", type=_positive_int, default=4)
    p.add_argument("--k", type=_positive_int, default=20, help="neurons to train (default 20)")
    p.add_argument("--steps", type=_positive_int, default=20)
    p.add_argument("--lr", type=float, default=0.5)
    p.add_argument("--facts", type=_languages, default=None, help="comma-separated fictional fact ids (default: all)")
    p.add_argument("--preserve", type=int, default=0,
                   help="facts of --unrelated after the first --n-unrelated whose next-token distribution the "
                        "training keeps (KL term; default 0)")
    _add_training_args(p, seed_help="seed of the random control")
    p.set_defaults(handler=_run_inject)


def _run_inject(args) -> int:
    from .evaluation import FICTIONAL_FACTS, injection_experiment
    from .facts import load_facts
    from .models import load_model

    pool = load_facts(args.unrelated) if args.unrelated else []
    unrelated, preserve = pool[: args.n_unrelated], pool[args.n_unrelated : args.n_unrelated + max(args.preserve, 0)]
    model = load_model(args.model, verbose=True)
    fictional = [f for f in FICTIONAL_FACTS if args.facts is None or f.fact_id in args.facts]
    if not fictional:
        raise ValueError(f"no fictional fact among {args.facts}; known: {[f.fact_id for f in FICTIONAL_FACTS]}")
    res = injection_experiment(model, fictional, language=args.language, languages=args.languages, unrelated=unrelated,
                               k=args.k, steps=args.steps, lr=args.lr, preserve=preserve,
                               locality_weight=args.locality_weight, target_prob=args.target_prob, seed=args.seed)
    res.save(args.out)
    _print_frame(f"injection of fictional facts, trained in {args.language}", res.table())
    print(f"written: {args.out}")
    return 0


REGISTER = [register_localize, register_plot]
REGISTER += [register_evaluate, register_edit, register_inject]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lakn", description="Language-agnostic knowledge neurons.")
    sub = parser.add_subparsers(dest="command", required=True)
    for register in REGISTER:
        register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from .facts import FactsError
    from .localization import RunConfigError
    from .models import ModelLoadError

    try:
        return int(args.handler(args) or 0)
    except (FactsError, RunConfigError, ModelLoadError, FileNotFoundError, ValueError) as err:
        parser.exit(2, f"lakn: error: {err}\n")
    except KeyboardInterrupt:
        parser.exit(130, "lakn: interrupted; finished facts are kept, run the same command again to resume\n")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
