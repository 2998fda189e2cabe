"""``lakn report``: one self-contained offline HTML page for a run folder (configuration, summary and
experiment tables, every figure of ``lakn plot``, and a card per fact's LAKNs with the tokens each
promotes and the queries that activate it most)."""

from __future__ import annotations

from ._common import positive_int

__all__ = ["register"]


def register(sub) -> None:
    p = sub.add_parser("report", help="one offline HTML page for a run folder", description=__doc__)
    p.add_argument("run", help="run folder written by `lakn localize` (eval.json / edit.json included when present)")
    p.add_argument("--out", default=None, help="HTML file to write (default RUN/report.html)")
    p.add_argument("--model", default=None, help="model for the LAKN cards (default: the run's own, from its config)")
    p.add_argument("--no-model", action="store_true",
                   help="load no model (the cards then leave out promoted tokens and activating queries)")
    p.add_argument("--max-facts", type=positive_int, default=None, help="cards for the first N facts (default all)")
    p.set_defaults(handler=run)


def run(args) -> int:
    from ..report import write_report

    if args.no_model and args.model is not None:
        raise ValueError("--model and --no-model exclude each other")
    path = write_report(args.run, args.out, model=args.model, load_model=not args.no_model, max_facts=args.max_facts)
    print(f"written: {path}")
    return 0
