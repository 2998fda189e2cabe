"""Localise a stable sample of the RML-LAMA-like facts with every method (docs/results.md, run 3).

Sample: relations with enough causal paraphrases in the localisation languages (en, fr, es, ru: >= 2
each) and at least one in the held-out languages (de, zh, ar); per relation, FACTS_PER_RELATION facts
(seeded) among those whose first English query the model answers within its top 10. Localises on
--max-queries paraphrases per localisation language with approx attribution (= exact IG's normalised map on
Gemma 3, benchmarks/README.md). Writes two folders of runs: OUT/threshold (t = 0.2, each method's own
count) and OUT/top10 (every method its 10 best neurons, threshold 1e-9: an equal-count comparison).

    python experiments/rml_localize.py OUT [--per-relation 4] [--known KNOWN.jsonl]

With --known (a table of `lakn data known DATA --out KNOWN.jsonl --languages en`), the facts are those
the table marks known in English (any of their queries) instead of the script's own check of the
first English query; docs/results.md run 3 used the script's own check.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import lakn
from lakn.evaluation import localize_methods
from lakn.probability import batch_answer_probability
from lakn.tokens import encode_query

DATA = Path(__file__).resolve().parents[2] / "shared/data/rml_lama_like/facts.jsonl"
LOCALISE = ["en", "fr", "es", "ru"]
HELDOUT = ["de", "zh", "ar"]


def sample(model, facts, per_relation: int, seed: int = 0, known_table: str | None = None):
    usable = [f for f in facts
              if all(l in f.templates and len(f.queries(l, causal=True)) >= 2 for l in LOCALISE)
              and all(l in f.templates and len(f.queries(l, causal=True)) >= 1 for l in HELDOUT)]
    if known_table is not None:  # the facts whose English queries the table marks known (kept whole)
        known = lakn.filter_known(usable, known_table, languages=["en"], restrict_queries=False)
    else:
        enc = [encode_query(model, f.queries("en", causal=True)[0]) for f in usable]
        _, ranks = batch_answer_probability(model, enc, batch_size=32)
        known = [f for f, r in zip(usable, ranks.tolist()) if r < 10]
    rng = random.Random(seed)
    by_rel: dict[str, list] = {}
    for f in known:
        by_rel.setdefault(f.relation, []).append(f)
    chosen = []
    for rel in sorted(by_rel):
        group = by_rel[rel]
        if len(group) >= 2:  # a same-relation neighbour for every fact
            chosen += rng.sample(group, min(per_relation, len(group)))
    return usable, known, chosen


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--per-relation", type=int, default=4)
    ap.add_argument("--max-queries", type=int, default=2)
    ap.add_argument("--known", default=None, help="known-fact table (lakn data known) instead of the own check")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = lakn.load_model()
    facts = lakn.load_facts(DATA)
    t0 = time.time()
    usable, known, chosen = sample(model, facts, args.per_relation, known_table=args.known)
    info = dict(data=str(DATA), known_table=args.known, usable=len(usable), known_en_top10=len(known), chosen=[f.fact_id for f in chosen],
                relations=sorted({f.relation for f in chosen}), localise=LOCALISE, heldout=HELDOUT,
                max_queries=args.max_queries, sample_s=round(time.time() - t0, 1))
    print(json.dumps({k: v for k, v in info.items() if k != "chosen"}), len(chosen), "facts", flush=True)
    (out / "sample.json").write_text(json.dumps(info, indent=1))
    cache: dict = {}
    common = dict(languages=LOCALISE, attribution="approx", max_queries=args.max_queries, first_token_only=True,
                  data=str(DATA), attribution_cache=cache)
    t0 = time.time()
    localize_methods(model, chosen, out=out / "threshold", **common)
    t1 = time.time()
    localize_methods(model, chosen, out=out / "top10", top_k=10, threshold=1e-9, **common)
    info.update(localise_threshold_s=round(t1 - t0, 1), localise_top10_s=round(time.time() - t1, 1))
    (out / "sample.json").write_text(json.dumps(info, indent=1))
    print("done", info["localise_threshold_s"], info["localise_top10_s"], flush=True)


if __name__ == "__main__":
    main()
