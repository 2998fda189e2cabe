"""Attribute every query with integrated gradients, score each fact with MATRICE (or a baseline)
and write DIR/neurons.json. Re-running with the same arguments resumes an interrupted run (each
finished fact's files are checked; one that fails a check is named and recomputed); the options are
the fields of lakn.config.RunConfig. Paths (--out, --data, --model, --known) may use ~ and are
recorded absolute.
"""

from __future__ import annotations

import os
import sys
import time
import warnings

from ..config import CHOICES
from ._common import absolute_path, add_deprecated, add_run_options, comma_list, positive_int, run_options

__all__ = ["register"]


def register(sub) -> None:
    p = sub.add_parser("localize", help="find the LAKNs of each fact and write a run folder",
                       description=__doc__)
    p.add_argument("--out", required=True, help="run folder (created; an existing one is resumed)")
    p.add_argument("--model", default=None, help="HF folder, .gguf file or hub name (default: embedded Gemma 3 270M)")
    p.add_argument("--data", default="demo", help="facts .jsonl/.json file, or 'demo' (default)")
    p.add_argument("--languages", type=comma_list, default=None, help="comma-separated codes (default: all shared)")
    p.add_argument("--n-facts", type=positive_int, default=None, help="use the first N facts")
    p.add_argument("--known", default=None, metavar="FILE",
                   help="known-fact table (lakn data known): keep the facts known in every language counted "
                        "(--languages, default the table's), each restricted to its known queries")
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
    from ..facts import DEMO_SETS, data_sha256, load_facts, select_facts
    from ..localization import localize
    from ..models import load_model
    from ..results import run_folder

    t0 = time.perf_counter()
    # every path resolved once, and every cheap check, before the model loads
    out = run_folder(args.out)
    data = args.data if args.data in DEMO_SETS else absolute_path(args.data)
    digest = data_sha256(data)
    facts = load_facts(data)  # data errors first: they are cheap to find
    known = ""
    if args.known is not None:
        from ..known import filter_known

        known = absolute_path(args.known)
        facts = filter_known(facts, known, languages=args.languages, min_languages=None)
    if args.languages is not None or args.n_facts is not None:
        select_facts(facts, languages=args.languages, n_facts=args.n_facts, drop_incomplete=args.drop_incomplete)
    kwargs = {k: v for k, v in (("beta", args.beta), ("gamma", args.gamma),
                                ("query_weighting", args.query_weighting)) if v is not None}
    if args.method in ("kn", "amig") and kwargs:
        raise ValueError(f"--beta/--gamma/--query-weighting apply to matrice, mean and random, not {args.method}")
    if args.method == "mean":
        kwargs = {}
    device = args.device
    if device == "cuda" and "LOCAL_RANK" in os.environ:  # under torchrun: one GPU per process
        device = f"cuda:{os.environ['LOCAL_RANK']}"
    model = load_model(_model_argument(args.model), device=device, verbose=True)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = _one_line_warning
        result = localize(model, facts, languages=args.languages, n_facts=args.n_facts,
                          drop_incomplete=args.drop_incomplete, out=out, data=data, data_sha256=digest, known=known,
                          progress=True, **run_options(args), **kwargs)
    n = [len(v) for v in result.lakn.values()]
    q = result.queries_dataframe()
    print(f"facts done: {len(n)}  languages: {','.join(result.languages)}  queries: {len(q)}  "
          f"method: {args.method} (selection: {result.selection})")
    print(f"LAKNs per fact: mean {sum(n) / len(n):.1f}, min {min(n)}, max {max(n)}")
    if len(q):
        acc = q.assign(top10=q["rank"] < 10).groupby("language")["top10"].mean()
        print("queries answered (answer in top 10): " + ", ".join(f"{k} {v:.0%}" for k, v in acc.items()))
    if result.recomputed:
        ids = [r["fact_id"] for r in result.recomputed]
        print(f"recomputed on resume (a file failed a check): {len(ids)} fact(s): "
              + ", ".join(ids[:10]) + (" ..." if len(ids) > 10 else ""))
    print(f"time: {time.perf_counter() - t0:.0f} s   written: {out / 'neurons.json'}")
    return 0


def _model_argument(name: str | None) -> str | None:
    """``--model``: a path (one that exists, or that looks like one) made absolute; a hub name as given."""
    if name is None:
        return None
    expanded = os.path.expanduser(name)
    if os.path.exists(expanded) or name.startswith((".", "/", "~")) or expanded.endswith(".gguf"):
        return absolute_path(name)
    return name


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning as one line on stderr, above the progress bar."""
    from tqdm import tqdm

    tqdm.write(f"lakn: warning: {str(message).splitlines()[0] if str(message) else category.__name__}",
               file=sys.stderr)
