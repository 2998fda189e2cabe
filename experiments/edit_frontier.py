"""The editing frontier on the shared RML-LAMA-like data: generality against locality for the
closed-form edit through a whole layer (a small grid of lam, gain and the null-space projection),
beside the gradient (Adam) edit and the knowledge-neuron embedding edit on a small neuron set
(the run's LAKNs, or activation-chosen neurons without a run) and random neurons of the same size,
and a batch-size point (1, 10, 50 facts in one solve).

    OMP_NUM_THREADS=1 python experiments/edit_frontier.py [--out frontier.json]
        [--facts 8] [--batch 10,50] [--layer 12] [--run RUN_DIR] [--quick]

Facts: those the embedded Gemma 3 270M answers in English (first answer token top-1), each with a
counterfactual (another fact of its relation whose answers differ in every language); edited in
en with keys from every measured language; measured in en (reliability), fr/es/ru/de/zh/ar
(generality on the edit's queries, and held-out paraphrases the edit never saw), and locality
(top-1 retention) on a pool of other facts: the same relation (another answer) and other
relations. The data is read where it lies (never copied); without it the script says so and exits 0.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "rml_lama_like" / "facts.jsonl"  # ../shared
LANGS = ["en", "fr", "es", "ru", "de", "zh", "ar"]


def pick_facts(model, facts, languages, n_edit, n_batch, n_pool, seed):
    """Known facts with counterfactuals for the edits (relations taken in turn), and a locality
    pool of other facts: for each edited relation a few others, then any facts."""
    import torch

    from lakn.evaluation.editing import counterfactuals
    from lakn.known import select_known

    full = [f for f in facts if all(l in f.templates and f.answers.get(l) for l in languages)]
    new = counterfactuals(full)
    g = torch.Generator().manual_seed(seed)
    order = [full[i] for i in torch.randperm(len(full), generator=g).tolist()]
    candidates = [f for f in order if f.fact_id in new]  # ~6% are known in en: score them all
    known = select_known(model, candidates, languages=["en"], top_k=1, max_queries=1, full_answer=False)
    ok = known.known_fact_ids(min_languages=1, languages=["en"])
    known_facts = [f for f in candidates if f.fact_id in ok]
    by_rel = defaultdict(list)
    for f in known_facts:
        by_rel[f.relation].append(f)
    edit: list = []
    while len(edit) < n_edit and any(by_rel.values()):  # relations in turn: several relations, a few each
        for rel in list(by_rel):
            if by_rel[rel] and len(edit) < n_edit:
                edit.append(by_rel[rel].pop(0))
    batch = edit + [f for f in known_facts if f not in edit][: max(n_batch - len(edit), 0)]
    used = {f.fact_id for f in batch}
    rest = [f for f in order if f.fact_id not in used]
    pool, rels = [], {f.relation for f in edit}
    for rel in sorted(rels):
        pool += [f for f in rest if f.relation == rel][:3]
    pool += [f for f in rest if f not in pool and f.relation not in rels][: max(n_pool - len(pool), 0)]
    answers = {f.fact_id: {l: new[f.fact_id][l] for l in languages} for f in batch}  # keys: the measured languages
    return edit, batch, pool, answers, len(known_facts), len(candidates)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--out", default="frontier.json")
    ap.add_argument("--facts", type=int, default=8, help="facts edited one at a time (default 8)")
    ap.add_argument("--skip-facts", type=int, default=0,
                    help="leave out the first N picked facts (e.g. 8: the next facts, never used for tuning)")
    ap.add_argument("--batch", default="10,50", help="batch sizes of the batch point (default 10,50)")
    ap.add_argument("--pool", type=int, default=30, help="facts of the locality pool (default 30)")
    ap.add_argument("--layer", type=int, default=12)
    ap.add_argument("--k", type=int, default=20, help="size of the small neuron set without a run (default 20)")
    ap.add_argument("--run", default=None, help="a run folder of these facts: its LAKNs are the small set")
    ap.add_argument("--max-queries", type=int, default=2)
    ap.add_argument("--languages", default=",".join(LANGS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--preserve", default="demo", choices=("generic", "demo"),
                    help="preserved keys: lakn's generic text alone, or with every query prompt of lakn's demo facts "
                         "in all their languages (default demo; disjoint from the shared data measured here)")
    ap.add_argument("--answer-weight", type=int, default=1,
                    help="each preserved fact prompt's last token counts N times (lakn.preservation's answer_weight)")
    ap.add_argument("--preserve-facts", type=int, default=0,
                    help="also preserve the query prompts (every measured language, 2 per language) of up to N facts "
                         "of the data whose relation is neither edited nor in the locality pool (default 0)")
    ap.add_argument("--preserve-from", default="other-relations",
                    choices=("other-relations", "other-facts", "sample", "related"),
                    help="other-facts: the first N facts (in the data's order) neither edited nor in the locality "
                         "pool, same relations too; sample: N of those drawn at random with --seed; related: the "
                         "same draw with the edited (and batch) facts' relations first, as lakn edit --preserve "
                         "picks them")
    ap.add_argument("--grid", default=None, help="closed-form grid points LAM:GAIN[:NS],... (default: the built-in grid)")
    ap.add_argument("--position", default="subject", choices=("last", "subject"),
                    help="where keys are read and the target added: the last prompt token or the subject's last token")
    ap.add_argument("--skip-small", action="store_true", help="skip the small-set comparison")
    ap.add_argument("--sizes", default="", help="set sizes of the layer's key-chosen neurons and random ones of the "
                    "same count (closed form at the first grid point, and kn_embedding), e.g. 64,256,1024")
    ap.add_argument("--size-peers", default="kn_embedding", help="peer methods of the --sizes sets beside the closed "
                    "form (comma-separated; '' for none; default kn_embedding)")
    ap.add_argument("--batch-peers", default="", help="peer methods of the batch point beside the closed form "
                    "(comma-separated, e.g. kn_embedding; default none)")
    ap.add_argument("--batch-all", action="store_true", help="the batch point runs every grid point and variant "
                    "(default: the first)")
    ap.add_argument("--batch-only-peers", action="store_true", help="the batch point runs only --batch-peers")
    ap.add_argument("--sequential", type=int, default=0, help="also edit each batch in chunks of N facts, one after "
                    "another (lakn.edit_facts' chunk_size, AlphaEdit's sequential setting): each chunk solved on the "
                    "model the earlier chunks edited, whose keys each later solve holds in place (--chunk-hold) and "
                    "whose prompts join the preserved keys (default 0: not run)")
    ap.add_argument("--chunk-hold", type=float, default=None, help="lakn.closed_form_edit.CHUNK_HOLD for "
                    "--sequential: how many times their kept key weight the earlier chunks' keys weigh in later "
                    "solves (0: held through the preserved keys only; default: lakn's)")
    ap.add_argument("--spread", default="", help="layers below --layer the whole-layer set also spans (e.g. 8,9,10,11: "
                    "one edit solved layer by layer, MEMIT's spreading; the grid and batch rows use it)")
    ap.add_argument("--skip-grid", action="store_true", help="skip the whole-layer grid")
    ap.add_argument("--target-languages", default="", help="find the closed-form target on these languages' new answers "
                    "too (e.g. fr; default: en alone, the edit language); rows are labelled targets=...")
    ap.add_argument("--variants", default="", help="closed-form option sets side by side at every grid point, ';' "
                    "between sets, ',' between KEY=VALUE options of pivot (auto, none or a layer), pivot_weight, "
                    "target_steps, retries, retry_boost, context_weight; e.g. 'pivot=none,retries=0;pivot=auto' "
                    "(default: lakn's defaults)")
    ap.add_argument("--quick", action="store_true", help="a smoke run: 2 facts, 2 grid points, batch 3")
    args = ap.parse_args()
    if args.chunk_hold is not None:
        import lakn.closed_form_edit

        if not args.chunk_hold >= 0:
            ap.error(f"--chunk-hold must be a number >= 0, got {args.chunk_hold}")
        lakn.closed_form_edit.CHUNK_HOLD = args.chunk_hold
    if not Path(args.data).is_file():
        print(f"edit_frontier: the shared data is not at {args.data}; nothing to do")
        return 0
    import lakn
    from lakn.cli.edit import preserved_sample
    from lakn.closed_form import preservation
    from lakn.editing import activation_neurons, layer_neurons
    from lakn.keys import key_neurons
    from lakn.evaluation.editing import EditingResult, edit_evaluation
    from lakn.selection import random_control

    languages = [l.strip() for l in args.languages.split(",") if l.strip()]
    batches = [int(b) for b in args.batch.split(",") if b.strip()]
    grid = [(1e3, 1.0, None), (1e4, 1.0, None), (1e5, 1.0, None), (1e3, 3.0, None), (1e4, 3.0, None),
            (1e5, 3.0, None), (1e4, 1.0, 1e-4)]
    if args.grid:
        grid = [(float(p.split(":")[0]), float(p.split(":")[1]), float(p.split(":")[2]) if p.count(":") == 2 else None)
                for p in args.grid.split(",")]
    if args.quick:
        args.facts, batches, args.pool, grid = 2, [3], 8, [(1e4, 1.0, None), (1e4, 3.0, None)]
    t0 = time.time()
    model = lakn.load_model()
    facts = lakn.load_facts(args.data)
    edit, batch, pool, new, n_known, n_cand = pick_facts(model, facts, languages, args.skip_facts + args.facts,
                                                         max(batches, default=0), args.pool, args.seed)
    edit = edit[args.skip_facts:]  # --skip-facts: facts a tuning run never saw (same pick, same pool)
    print(f"[{time.time() - t0:.0f}s] {n_known} known of {n_cand} candidates; editing {len(edit)} facts "
          f"({sorted({f.relation for f in edit})}), batch pool {len(batch)}, locality pool {len(pool)} facts",
          flush=True)
    t1 = time.time()
    spread = sorted({int(l) for l in args.spread.split(",") if l.strip()} | {args.layer})
    if spread[-1] != args.layer:
        ap.error(f"--spread layers must be below --layer {args.layer}")
    kept = preservation(model, spread, facts=lakn.load_facts("demo") if args.preserve == "demo" else None,
                        answer_weight=args.answer_weight)
    if args.preserve_facts > 0:  # other facts of relations the measurement never sees
        seen = {f.relation for f in edit} | {f.relation for f in batch} | {f.relation for f in pool}
        used = {f.fact_id for f in batch} | {f.fact_id for f in pool}
        others = [f for f in facts if f.fact_id not in used
                  and (args.preserve_from != "other-relations" or f.relation not in seen)]
        if args.preserve_from in ("sample", "related"):  # lakn edit's draw; "sample": blind to relations
            related = args.preserve_from == "related"
            edited = {f.relation for f in edit} | {f.relation for f in batch} if related else set()
            others = preserved_sample(others, edited, args.preserve_facts, args.seed)
        others = others[: args.preserve_facts]
        kept = kept.merged(preservation(model, spread, texts=[], facts=others, languages=languages, max_queries=2,
                                        answer_weight=args.answer_weight))
        print(f"preserving {len(others)} facts of {len({f.relation for f in others})} relations "
              f"({args.preserve_from})", flush=True)
    print(f"[{time.time() - t0:.0f}s] covariance of layers {spread} ({kept.source}, {kept.n_tokens} tokens): "
          f"{time.time() - t1:.1f} s", flush=True)
    common = dict(new_answers=new, edit_language="en", languages=languages, max_queries=args.max_queries,
                  max_heldout=2, unrelated=pool, progress=False)
    layer = {f.fact_id: layer_neurons(model, spread) for f in batch}
    layer_name = f"layer{args.layer}" if len(spread) == 1 else f"layers{spread[0]}-{spread[-1]}"
    results = []

    def run(label, **kw):
        t = time.time()
        res = edit_evaluation(model, **{**common, **kw})
        results.append(res)
        print(f"[{time.time() - t0:.0f}s] {label}: {time.time() - t:.0f} s", flush=True)
        print_tables(res)  # each stage's table as it ends: a crash later loses nothing printed
        return res

    targets = [l for l in args.target_languages.split(",") if l.strip()]
    tag = f" targets=en,{','.join(targets)}" if targets else ""
    variants = [_variant(v) for v in args.variants.split(";")] if args.variants.strip() else [{}]
    methods = {f"closed_form lam={lam:g} gain={gain:g}" + (f" ns={ns:g}" if ns else "") + tag
               + "".join(f" {k}={v}" for k, v in variant.items()):
               dict(method="closed_form", lam=lam, gain=gain, preserve=kept, position=args.position, **variant,
                    **({"null_space": ns} if ns else {}), **({"target_languages": targets} if targets else {}))
               for lam, gain, ns in grid for variant in variants}
    if not args.skip_grid:
        run("closed_form grid, whole layer", facts=edit, sets={layer_name: layer}, methods=methods)
    if args.run:
        from lakn.evaluation import load_runs

        runs = load_runs(args.run)
        result = runs.get("matrice", next(iter(runs.values())))
        small = {f.fact_id: list(result.lakn[f.fact_id])[: args.k] for f in edit if result.lakn.get(f.fact_id)}
        small_name = "lakn"
    else:  # activation-chosen neurons, only when the small-set comparison runs
        small = {} if args.skip_small else {f.fact_id: activation_neurons(model, f, languages, args.k) for f in edit}
        small_name = "activation"
    rand = {fid: random_control(n, int(model.cfg.d_mlp), args.seed, i) for i, (fid, n) in enumerate(small.items())}
    first = next(iter(methods))
    sizes = [int(x) for x in args.sizes.split(",") if x.strip()]
    for i, size in enumerate(sizes):
        chosen = {f.fact_id: key_neurons(model, f, args.layer, size, kept[args.layer], languages,
                                          max_queries=args.max_queries, position=args.position)
                  for f in edit}
        rnd = {fid: random_control(n, int(model.cfg.d_mlp), args.seed + 1000 * (i + 1), j)
               for j, (fid, n) in enumerate(chosen.items())}
        run(f"{size} key-chosen and random neurons of layer {args.layer}", facts=edit,
            sets={f"key{size}": chosen, f"random{size}": rnd},
            methods={first: methods[first], **{m: dict(method=m) for m in args.size_peers.split(",") if m.strip()}})
    peers = {  # the closed form needs a covariance of every layer of the small sets: left out here
             "gradient": dict(method="gradient"), "kn_embedding": dict(method="kn_embedding")}
    if not args.skip_small:
        run("small sets: closed_form, gradient, kn_embedding", facts=edit, sets={small_name: small, "random": rand},
            methods=peers)
    if batches:
        bmethods = {} if args.batch_only_peers else dict(methods) if args.batch_all else {first: methods[first]}
        bmethods.update({m: dict(method=m) for m in args.batch_peers.split(",") if m.strip()})
        if args.sequential > 0:
            bmethods[f"{first} sequential={args.sequential}"] = {**methods[first], "chunk_size": args.sequential}
        run(f"batches {batches}", facts=batch, sets={layer_name: layer}, methods=bmethods,
            batch_sizes=batches)
    merged = EditingResult([r for res in results for r in res.rows],
                           dict(runs=[res.config for res in results], data=args.data, layer=args.layer,
                                edited=[f.fact_id for f in edit], batch_facts=[f.fact_id for f in batch],
                                pool=[f.fact_id for f in pool], n_known=n_known, seconds=time.time() - t0))
    merged.save(args.out)
    print_tables(merged)
    print(f"written: {args.out} ({time.time() - t0:.0f} s)")
    return 0


def _variant(spec: str) -> dict:
    """'pivot=auto,target_steps=40' -> closed-form options (pivot: auto, none or a layer)."""
    out: dict = {}
    for item in spec.split(","):
        if not item.strip():
            continue
        key, _, value = item.strip().partition("=")
        if key == "pivot":
            from lakn.cli._common import pivot_choice  # the parser of lakn edit --pivot

            out[key] = pivot_choice(value)
        elif key in ("target_steps", "retries"):
            out[key] = int(value)
        elif key in ("pivot_weight", "target_decay", "target_lr", "lam", "context_weight", "retry_boost"):
            out[key] = float(value)
        elif key in ("translate", "per_language"):  # edit_fact's switches (lakn.translate_answer; groups per language)
            out[key] = value.strip().lower() in ("1", "true", "yes")
        elif key == "key_languages":  # injection: languages whose prompts (not answers) give keys, '+' between
            out[key] = [l for l in value.split("+") if l]
        else:
            raise SystemExit(f"unknown variant option {key!r}")
    return out


def print_tables(res) -> None:
    import pandas as pd

    df = res.to_dataframe()
    wide = res.wide()
    held = df[df.metric == "heldout"]
    for lang in sorted(held.language.unique()):
        wide[f"held_{lang}"] = held[held.language == lang].groupby(["method", "neurons", "batch"])["top1"].mean()
    with pd.option_context("display.max_columns", 40, "display.width", 250, "display.float_format", "{:.2f}".format):
        print(wide)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
