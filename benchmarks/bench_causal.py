"""Cost of the causal selection (specificity="causal") next to plain localisation, per fact.

    OMP_NUM_THREADS=1 python benchmarks/bench_causal.py [--facts 2] [--languages en,fr,es,ru] [--max-queries 2]

On the embedded Gemma 3 270M with lakn's demo facts and ``attribution="approx"``: one plain run
(the default specificity) and one causal run of the same facts, side by side, into temporary run
folders. Prints seconds per fact for the attribution + scoring, the effect pass (first-order
zeroing effects of every neuron on every query, :func:`lakn.attribution.effects.effect_maps`), the
cross-fact selection, the whole run, and the bytes the run folder holds per fact. No downloads.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

import lakn
from lakn.attribution.effects import effect_maps
from lakn.causal import causal_finalize
from lakn.selection import finalize
from lakn.tokens import encode_query


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--facts", type=int, default=2)
    ap.add_argument("--languages", default="en,fr,es,ru")
    ap.add_argument("--max-queries", type=int, default=2)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    langs = args.languages.split(",")

    model = lakn.load_model()
    facts = lakn.load_facts("demo")[: args.facts]
    settings = dict(languages=langs, attribution="approx", max_queries=args.max_queries, progress=False)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, extra in (("plain", {}), ("causal", {"specificity": "causal"})):
            out = Path(tmp) / name
            t0 = time.perf_counter()
            result = lakn.localize(model, facts, out=out, **settings, **extra)
            wall = time.perf_counter() - t0
            records = result.records
            t1 = time.perf_counter()
            (causal_finalize if name == "causal" else finalize)(result.run_config, records)
            select = time.perf_counter() - t1
            rows[name] = dict(per_fact=sum(r.seconds for r in records.values()) / len(records), select=select / len(records),
                              wall=wall / len(records), bytes=_folder_bytes(out) / len(records),
                              queries=sum(len(r.queries) for r in records.values()) / len(records),
                              lakns=sum(len(v) for v in result.lakn.values()) / len(records))
        # the effect pass alone, on the same queries (what the causal per-fact time adds)
        t0 = time.perf_counter()
        for fact in facts:
            encoded = [encode_query(model, q) for lang in langs for q in fact.queries(lang)[: args.max_queries]]
            effect_maps(model, encoded)
        effects = (time.perf_counter() - t0) / len(facts)

    plain, causal = rows["plain"], rows["causal"]
    print(f"lakn {lakn.__version__}, torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{args.threads} thread(s); {model_name(model)}; {len(facts)} demo facts x {len(langs)} languages x "
          f"{args.max_queries} queries, attribution=approx, first answer token in the effect pass")
    print()
    print("| per fact | plain (specificity=auto) | causal (specificity=causal) |")
    print("| --- | ---: | ---: |")
    print(f"| queries | {plain['queries']:.0f} | {causal['queries']:.0f} |")
    print(f"| attribution + scoring (+ effect pass) | {plain['per_fact']:.2f} s | {causal['per_fact']:.2f} s |")
    print(f"| effect pass alone (`effect_maps`) | - | {effects:.2f} s |")
    print(f"| cross-fact selection | {plain['select'] * 1e3:.1f} ms | {causal['select'] * 1e3:.1f} ms |")
    print(f"| whole run (wall, incl. folder writes) | {plain['wall']:.2f} s | {causal['wall']:.2f} s |")
    print(f"| run folder | {plain['bytes'] / 1e6:.2f} MB | {causal['bytes'] / 1e6:.2f} MB |")
    print(f"| LAKNs | {plain['lakns']:.1f} | {causal['lakns']:.1f} |")


def model_name(model) -> str:
    return lakn.models.model_name(model)


if __name__ == "__main__":
    main()
