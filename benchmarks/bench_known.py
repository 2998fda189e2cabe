"""Speed of the known-fact filter (lakn.known.select_known) on the embedded Gemma 3 270M.

    OMP_NUM_THREADS=1 python benchmarks/bench_known.py [--queries 500] [--data PATH] [--threads 1]

Takes the first ``--queries`` causal queries (at most ``--per-language`` per fact and language) of
the RML-LAMA-like set (``../shared/data/rml_lama_like/facts.jsonl``, not shipped; falls back to
lakn's demo facts), encodes them once, then times :func:`lakn.known.batch_answer_stats` at several
batch sizes, with the full answer (teacher forced) and first token only, against the unbatched
per-query :func:`lakn.probability.answer_stats`, and checks that they agree. Prints a table of
queries per second. No downloads.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import torch

import lakn
from lakn.known import _query_indices, batch_answer_stats, select_known
from lakn.probability import answer_stats
from lakn.tokens import encode_query

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "rml_lama_like" / "facts.jsonl"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--per-language", type=int, default=2, help="queries per fact and language")
    ap.add_argument("--data", default=str(DATA) if DATA.is_file() else "demo")
    ap.add_argument("--batch-sizes", default="1,16,32,64")
    ap.add_argument("--reference", type=int, default=100, help="queries timed with the unbatched reference")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    model = lakn.load_model()
    load_s = time.perf_counter() - t0
    facts = lakn.load_facts(args.data)
    # facts taken round-robin over relations (the file is sorted by relation; some relations are much harder)
    by_relation: dict[str, list] = {}
    for fact in facts:
        by_relation.setdefault(fact.relation, []).append(fact)
    mixed = [group[i] for i in range(max(map(len, by_relation.values()))) for group in by_relation.values()
             if i < len(group)]
    chosen, queries = [], []
    for fact in mixed:
        if len(queries) >= args.queries:
            break
        chosen.append(fact)
        for lang in fact.languages:
            for _, q in _query_indices(fact, lang, True)[: args.per_language]:
                queries.append(q)
    queries = queries[: args.queries]
    t0 = time.perf_counter()
    encoded = []
    for q in queries:
        try:
            encoded.append(encode_query(model, q))
        except lakn.FactsError:
            pass
    encode_s = time.perf_counter() - t0
    n = len(encoded)
    answer_len = sum(len(e.answer) for e in encoded) / n
    prompt_len = sum(len(e.prompt) for e in encoded) / n
    print(f"model: embedded Gemma 3 270M (loaded in {load_s:.1f} s); data: {args.data}")
    print(f"{n} queries from {len(chosen)} facts; mean prompt {prompt_len:.1f} tokens, answer {answer_len:.2f} tokens; "
          f"encoding {n / encode_s:.0f} queries/s")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {platform.machine()}, "
          f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")

    rows = []
    ref = encoded[: args.reference]
    t0 = time.perf_counter()
    ref_stats = [answer_stats(model, e) for e in ref]
    ref_s = time.perf_counter() - t0
    rows.append(("reference: answer_stats per query", "full answer", 1, len(ref), ref_s))
    results = {}
    for full in (True, False):
        for bs in [int(b) for b in args.batch_sizes.split(",")]:
            t0 = time.perf_counter()
            results[(full, bs)] = batch_answer_stats(model, encoded, batch_size=bs, full_answer=full)
            rows.append(("batch_answer_stats", "full answer" if full else "first token", bs, n,
                         time.perf_counter() - t0))
    _, ranks, full_p = results[(True, 16)]
    worst = max(abs(float(full_p[i]) - s.probability) for i, s in enumerate(ref_stats))
    diffs = [abs(int(ranks[i]) - s.rank) for i, s in enumerate(ref_stats)]
    crossed = sum((int(ranks[i]) < 10) != (s.rank < 10) for i, s in enumerate(ref_stats))
    t0 = time.perf_counter()
    table = select_known(model, chosen, top_k=10, max_queries=args.per_language)  # every query of the chosen facts
    e2e = time.perf_counter() - t0
    rows.append(("select_known end to end (encode + score)", "full answer", 16, len(table), e2e))

    print()
    print(f"| {'what':<44} | {'answer':<11} | {'batch':>5} | {'queries':>7} | {'seconds':>8} | {'queries/s':>9} |")
    print(f"| {'-' * 44} | {'-' * 11} | {'-' * 5}:| {'-' * 7}:| {'-' * 8}:| {'-' * 9}:|")
    for what, answer, bs, count, secs in rows:
        print(f"| {what:<44} | {answer:<11} | {bs:>5} | {count:>7} | {secs:>8.2f} | {count / secs:>9.1f} |")
    print()
    print(f"batched vs reference on {len(ref)} queries: max |dP| {worst:.2e}; ranks differ on "
          f"{sum(d > 0 for d in diffs)} (max {max(diffs)}; float ties far down the ranking), "
          f"{crossed} cross the top-10 threshold")
    print(f"known (first answer token in the top 10): {table.config['n_known']}/{table.config['n_queries']} queries, "
          f"{len(table.known_fact_ids())}/{table.config['n_facts']} facts in at least one language")


if __name__ == "__main__":
    main()
