"""Attribute every query with integrated gradients, score each fact with MATRICE (or a baseline)
and write DIR/neurons.json. Re-running with the same arguments resumes an interrupted run; the
options are the fields of lakn.config.RunConfig.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from ..config import CHOICES
from ._common import add_deprecated, add_run_options, comma_list, positive_int, run_options

__all__ = ["register"]


def register(sub) -> None:
    p = sub.add_parser("localize", help="find the LAKNs of each fact and write a run folder",
                       description=__doc__)
    p.add_argument("--out", required=True, help="run folder (created; an existing one is resumed)")
    p.add_argument("--model", default=None, help="HF folder, .gguf file or hub name (default: embedded Gemma 3 270M)")
    p.add_argument("--data", default="demo", help="facts .jsonl/.json file, or 'demo' (default)")
    p.add_argument("--languages", type=comma_list, default=None, help="comma-separated codes (default: all shared)")
    p.add_argument("--n-facts", type=positive_int, default=None, help="use the first N facts")
    add_run_options(p)
    p.add_argument("--beta", type=float, default=None, help="MATRICE within-language penalty (default 1)")
    p.add_argument("--gamma", type=float, default=None, help="MATRICE cross-language penalty (default 1)")
    p.add_argument("--query-weighting", choices=CHOICES["query_weighting"], default=None,
                   help="MATRICE query weights (default confidence)")
    p.add_argument("--drop-incomplete", action="store_true", help="skip facts lacking a requested language")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cpu; under torchrun 'cuda' means "
                                                  "the process's LOCAL_RANK GPU)")
    add_deprecated(p, "--facts", "--n-facts", "n_facts", positive_int)
    add_deprecated(p, "--queries", "--max-queries", "max_queries", positive_int)
    p.set_defaults(handler=run)


def run(args) -> int:
    from ..facts import load_facts, select_facts
    from ..localization import localize
    from ..models import load_model

    t0 = time.perf_counter()
    facts = load_facts(args.data)  # data errors first: they are cheap to find
    if args.languages is not None or args.n_facts is not None:
        select_facts(facts, languages=args.languages, n_facts=args.n_facts, drop_incomplete=args.drop_incomplete)
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
    result = localize(model, facts, languages=args.languages, n_facts=args.n_facts, drop_incomplete=args.drop_incomplete,
                      out=args.out, data=args.data, progress=True, **run_options(args), **kwargs)
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
