"""The ``lakn`` command line: ``lakn localize``, ``lakn plot`` (and ``python -m lakn ...``).

Each subcommand is a ``register_*`` function that adds its parser and its handler; errors from
bad input are printed as one line (``lakn: error: ...``) with exit status 2.
"""

from __future__ import annotations

import argparse
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
    p.add_argument("--batch-size", type=_positive_int, default=64, help="rows per forward/backward pass")
    p.add_argument("--drop-incomplete", action="store_true", help="skip facts lacking a requested language")
    p.add_argument("--device", default=None, help="cpu or cuda (default: the model's)")
    p.set_defaults(handler=_run_localize)


def _run_localize(args) -> int:
    from .facts import load_facts, select_facts
    from .localization import localize
    from .models import is_masked_lm, load_model

    t0 = time.perf_counter()
    facts = load_facts(args.data)  # data errors first: they are cheap to find
    if args.languages is not None or args.facts is not None:
        select_facts(facts, languages=args.languages, n_facts=args.facts, drop_incomplete=args.drop_incomplete)
    model = load_model(args.model, device=args.device, verbose=True)
    kwargs = {k: v for k, v in (("beta", args.beta), ("gamma", args.gamma),
                                ("query_weighting", args.query_weighting)) if v is not None}
    if args.method in ("kn", "amig") and kwargs:
        raise ValueError(f"--beta/--gamma/--query-weighting apply to matrice, mean and random, not {args.method}")
    if args.method == "mean":
        kwargs = {}
    result = localize(
        model, facts, languages=args.languages, n_facts=args.facts, method=args.method, steps=args.steps,
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


REGISTER = [register_localize, register_plot]


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
