"""Which preserved keys buy the closed-form edit its locality? The same single edits (whole layer,
keys at the subject's token, English target) solved with different preserved corpora, measured on
the same locality pool of the shared RML-LAMA-like data (docs/results.md run 7).

    OMP_NUM_THREADS=1 python experiments/preserve_corpus.py [--facts 4] [--lams 1e5,3e4]
        [--corpora demo,big,oracle,near,xrel300x3,xrel1000x2]

Corpora, each the default one (``demo``: lakn's generic text and demo facts' prompts) plus:
- ``big``: 3 query prompts per language of 300 other facts of the data (any relation, the edited
  and the measured facts left out);
- ``xrelNxQ``: Q prompts per language of up to N facts whose relation is neither edited nor in the
  locality pool: what a user's own other facts give on relations the edit never sees;
- ``near``: the locality pool's facts' other paraphrases (not the measured first query);
- ``oracle``: every prompt of the locality pool's facts, the measured ones too (an upper bound).

Facts and pool are edit_frontier.py's (same seed). The data is read where it lies (never copied);
without it the script says so and exits 0.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from edit_frontier import DATA, LANGS, pick_facts, print_tables  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--out", default="preserve_corpus.json")
    ap.add_argument("--facts", type=int, default=4)
    ap.add_argument("--layer", type=int, default=12)
    ap.add_argument("--lams", default="1e5,3e4")
    ap.add_argument("--corpora", default="demo,big,oracle,near")
    args = ap.parse_args()
    if not Path(args.data).is_file():
        print(f"preserve_corpus: the shared data is not at {args.data}; nothing to do")
        return 0
    import torch

    import lakn
    from lakn.closed_form import preservation, prompt_preservation
    from lakn.editing import layer_neurons
    from lakn.evaluation.editing import edit_evaluation

    lams = [float(x) for x in args.lams.split(",")]
    corpora = [c for c in args.corpora.split(",") if c]
    t0 = time.time()
    model = lakn.load_model()
    facts = lakn.load_facts(args.data)
    edit, _, pool, new, *_ = pick_facts(model, facts, LANGS, args.facts, 0, 30, 0)
    kept = preservation(model, [args.layer], facts=lakn.load_facts("demo"))
    used = {f.fact_id for f in edit} | {f.fact_id for f in pool}
    g = torch.Generator().manual_seed(1)
    others = [facts[i] for i in torch.randperm(len(facts), generator=g).tolist() if facts[i].fact_id not in used][:300]
    rels = {f.relation for f in edit} | {f.relation for f in pool}
    xrel = [facts[i] for i in torch.randperm(len(facts), generator=g).tolist() if facts[i].relation not in rels]
    print(f"{len(xrel)} facts of relations neither edited nor measured: {sorted({f.relation for f in xrel})}")

    def prompts_of(chosen, which: slice):
        return [model.to_tokens(q.prompt)[0].cpu() for f in chosen for lang in LANGS if lang in f.templates
                for q in f.queries(lang, causal=True)[which]]

    def extra(name: str):
        if name == "big":
            return prompts_of(others, slice(0, 3))
        if name == "oracle":
            return prompts_of(pool, slice(0, None))
        if name == "near":
            return prompts_of(pool, slice(1, None))
        if name.startswith("xrel"):
            n, per = (int(x) for x in name[4:].split("x"))
            return prompts_of(xrel[:n], slice(0, per))
        raise SystemExit(f"unknown corpus {name!r}")

    pres = {c: kept if c == "demo" else kept.merged(prompt_preservation(model, extra(c), [args.layer]))
            for c in corpora}
    for name, p in pres.items():
        print(f"{name}: {p.n_tokens} preserved tokens", flush=True)
    methods = {f"{name} lam={lam:g}": dict(method="closed_form", lam=lam, preserve=p, translate=False)  # run 7's
               for name, p in pres.items() for lam in lams}
    layer = {f.fact_id: layer_neurons(model, [args.layer]) for f in edit}
    res = edit_evaluation(model, edit, {f"layer{args.layer}": layer}, methods=methods, new_answers=new,
                          edit_language="en", languages=LANGS, max_queries=2, max_heldout=2, unrelated=pool,
                          progress=False)
    print_tables(res)
    res.save(args.out)
    print(f"written: {args.out} ({time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
