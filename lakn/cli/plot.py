"""``lakn plot``: the figures of a run folder as offline HTML files (with the trade-off figures when the
folder holds ``tradeoff.json`` from ``lakn evaluate --tradeoff``; a folder of runs then gets those alone)."""

from __future__ import annotations

__all__ = ["register"]


def register(sub) -> None:
    p = sub.add_parser("plot", help="write the figures of a run folder as HTML files")
    p.add_argument("run", help="run folder written by `lakn localize` (or a folder of runs holding tradeoff.json)")
    p.add_argument("--out", default=None, help="folder for the HTML files (default: RUN/figures)")
    p.set_defaults(handler=run)


def run(args) -> int:
    from ..plotting import write_run_figures

    for path in write_run_figures(args.run, args.out):
        print(path)
    return 0
