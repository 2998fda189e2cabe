"""New-knowledge injection on the embedded Gemma 3 270M: lakn's fictional facts taught in some
languages (default en, fr) and recalled in all, with locality on real facts of the shared
RML-LAMA-like data that the model knows (top-1 retention of their first answer token).

Methods x neuron sets: the closed-form solve (keys at the subject's last token, or the last prompt
token) through a whole layer, and the gradient (Adam) and knowledge-neuron embedding edits
through the activation-chosen neurons and random neurons of the same count and layers.

    OMP_NUM_THREADS=1 python experiments/inject_frontier.py [--out inject.json] [--layer 12]
        [--train en,fr] [--unrelated 30] [--grid 1e4:1,1e5:1]

Without the shared data the locality pool is lakn's demo facts (the script says so).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "rml_lama_like" / "facts.jsonl"  # ../shared
LANGS = ["en", "fr", "es", "ru", "de", "zh", "ar"]


def known_pool(model, facts, n, seed):
    """``n`` facts the model answers in English (first answer token top-1), in a seeded order."""
    import torch

    from lakn.known import select_known

    g = torch.Generator().manual_seed(seed)
    order = [facts[i] for i in torch.randperm(len(facts), generator=g).tolist()]
    pool = []
    for start in range(0, len(order), 200):
        chunk = order[start:start + 200]
        ok = select_known(model, chunk, languages=["en"], top_k=1, max_queries=1,
                          full_answer=False).known_fact_ids(min_languages=1, languages=["en"])
        pool += [f for f in chunk if f.fact_id in ok]
        if len(pool) >= n:
            break
    return pool[:n]


def _variant(spec: str) -> dict:
    """edit_frontier.py's parser of closed-form option sets."""
    import importlib.util

    loaded = importlib.util.spec_from_file_location("edit_frontier", Path(__file__).resolve().parent / "edit_frontier.py")
    mod = importlib.util.module_from_spec(loaded)
    loaded.loader.exec_module(mod)
    return mod._variant(spec)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--out", default="inject.json")
    ap.add_argument("--layer", type=int, default=12)
    ap.add_argument("--train", default="en,fr", help="training languages (default en,fr)")
    ap.add_argument("--languages", default=",".join(LANGS))
    ap.add_argument("--unrelated", type=int, default=30, help="real facts of the locality pool (default 30)")
    ap.add_argument("--grid", default="1e4:1", help="closed-form points LAM:GAIN,... (default 1e4:1)")
    ap.add_argument("--positions", default="subject,last", help="closed-form key positions (default subject,last)")
    ap.add_argument("--k", type=int, default=20, help="activation-chosen neurons for the small-set methods")
    ap.add_argument("--skip-small", action="store_true", help="only the closed form through the layer")
    ap.add_argument("--answer-weight", type=int, default=1,
                    help="each preserved fact prompt's last token counts N times (lakn.preservation's answer_weight)")
    ap.add_argument("--preserve-facts", type=int, default=0,
                    help="also preserve the query prompts (2 per language) of up to N facts of the data whose relation "
                         "is not in the locality pool (default 0)")
    ap.add_argument("--preserve-from", default="other-relations", choices=("other-relations", "other-facts"),
                    help="other-facts: any fact outside the locality pool (its relations too), as lakn inject "
                         "--preserve takes them")
    ap.add_argument("--variants", default="", help="closed-form option sets side by side (as edit_frontier.py's, plus "
                    "key_languages=es+de+ru+zh: languages whose prompts, never their answers, give keys too)")
    ap.add_argument("--peers", default="", help="methods run through the same layer beside the closed form, "
                    "with their defaults: kn_embedding, gradient (default none)")
    ap.add_argument("--spread", default="", help="layers below --layer the whole-layer set also spans (e.g. 10: "
                    "one injection solved layer by layer, MEMIT's spreading, as edit_frontier.py's --spread)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    spread = sorted({int(l) for l in args.spread.split(",") if l.strip()} | {args.layer})
    if spread[-1] != args.layer:
        ap.error(f"--spread layers must be below --layer {args.layer}")
    import lakn
    from lakn.evaluation import injection_experiment
    from lakn.evaluation import InjectionResult

    t0 = time.time()
    model = lakn.load_model()
    languages = [l for l in args.languages.split(",") if l]
    train = [l for l in args.train.split(",") if l]
    if Path(args.data).is_file():
        facts = [f for f in lakn.load_facts(args.data) if all(l in f.templates for l in languages)]
        pool_name = "shared data"
    else:
        print(f"inject_frontier: no shared data at {args.data}; the locality pool is lakn's demo facts")
        facts, pool_name = list(lakn.load_facts("demo")), "demo facts"
    pool = known_pool(model, facts, args.unrelated, args.seed)
    print(f"[{time.time() - t0:.0f}s] locality pool: {len(pool)} known {pool_name}", flush=True)
    kept = lakn.preservation(model, spread, facts=lakn.load_facts("demo"), answer_weight=args.answer_weight)
    if args.preserve_facts > 0:  # facts the locality measurement never sees (by default, nor their relations)
        seen, measured = {f.relation for f in pool}, {f.fact_id for f in pool}
        others = [f for f in facts if f.fact_id not in measured
                  and (args.preserve_from == "other-facts" or f.relation not in seen)][: args.preserve_facts]
        kept = kept.merged(lakn.preservation(model, spread, texts=[], facts=others, languages=languages,
                                             max_queries=2, answer_weight=args.answer_weight))
        print(f"preserving {len(others)} facts of {len({f.relation for f in others})} relations "
              f"({args.preserve_from})", flush=True)
    results = []
    grid = [(float(p.split(":")[0]), float(p.split(":")[1])) for p in args.grid.split(",") if p]
    variants = [_variant(v) for v in args.variants.split(";")] if args.variants.strip() else [{}]
    closed = {f"closed_form {pos} lam={lam:g} gain={gain:g}"
              + "".join(f" {k}={'+'.join(v) if isinstance(v, list) else v}" for k, v in variant.items()):
              dict(method="closed_form", lam=lam, gain=gain, preserve=kept, position=pos, **variant)
              for pos in args.positions.split(",") if pos for lam, gain in grid for variant in variants}
    for peer in (p for p in args.peers.split(",") if p):
        if peer not in ("kn_embedding", "gradient"):
            ap.error(f"unknown peer {peer!r}: choose kn_embedding or gradient")
        closed[peer] = dict(method=peer)
    common = dict(languages=languages, train_languages=train, unrelated=pool, k=args.k, seed=args.seed,
                  progress=False)
    t = time.time()
    results.append(injection_experiment(model, methods=closed, neuron_sets=["layer"], layers=spread, **common))
    print(f"[{time.time() - t0:.0f}s] closed form through layers {spread}: {time.time() - t:.0f} s", flush=True)
    if not args.skip_small:
        t = time.time()
        small = {"gradient": dict(method="gradient"), "kn_embedding": dict(method="kn_embedding")}
        results.append(injection_experiment(model, methods=small, neuron_sets=["activation", "random"], **common))
        print(f"[{time.time() - t0:.0f}s] gradient, kn_embedding through {args.k} neurons: {time.time() - t:.0f} s",
              flush=True)
    merged = InjectionResult([r for res in results for r in res.rows],
                             dict(runs=[res.config for res in results], layer=args.layer, layers=spread, train=train,
                                  pool=[f.fact_id for f in pool], seconds=time.time() - t0))
    merged.save(args.out)
    import pandas as pd

    with pd.option_context("display.max_columns", 30, "display.width", 220, "display.float_format", "{:.2f}".format):
        print(merged.wide())
        df = merged.to_dataframe()
        rec = df[df.metric == "recall"]
        print(rec.pivot_table(index=["method", "neurons"], columns="language", values="top1", aggfunc="mean"))
    print(f"written: {args.out} ({time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
