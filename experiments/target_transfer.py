"""Does the closed-form edit's *target* reach other languages, before any key has to carry it?

The closed-form edit (docs/method.md §8.3) finds one residual ``delta`` on the edit language's
queries and asks every language's key to produce it. This script separates the two steps: it adds
``delta`` itself to ``blocks.{L}.mlp.hook_out`` at the subject's last token of every language's
queries (no weight change, no key, so no locality cost) and counts how often the new answer's first
token becomes top-1. That rate bounds what any solve through layer ``L`` can reach with that target.
Targets compared: found on en only, on en with the pivot term over the other languages' prompts
(lakn.pivot; the edit's default), and on en + fr answers together.

    OMP_NUM_THREADS=1 python experiments/target_transfer.py [--facts 8] [--layer 12] [--out transfer.json]

Facts: the same pick as experiments/edit_frontier.py (known in en, a counterfactual per fact).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _frontier():
    spec = importlib.util.spec_from_file_location("edit_frontier", HERE / "edit_frontier.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def top1_with_delta(model, layer, encoded, positions, delta, hooks=()):
    """Per query: is the answer's first token top-1 with ``delta`` added at ``positions[i]``?"""
    import torch

    from lakn.tokens import last_logits

    out = []
    for enc, pos in zip(encoded, positions):
        onehot = torch.zeros(len(enc.prompt), 1)
        onehot[pos] = 1.0

        def add(act, hook=None, onehot=onehot):
            return act + (onehot * delta).to(act.dtype)

        with torch.no_grad(), model.hooks(fwd_hooks=[(f"blocks.{layer}.mlp.hook_out", add), *hooks]):
            logits = last_logits(model, enc.prompt[None])[0]
        out.append(int(logits.argmax()) == int(enc.answer[0]))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(HERE.parents[1] / "shared" / "data" / "rml_lama_like" / "facts.jsonl"))
    ap.add_argument("--facts", type=int, default=8)
    ap.add_argument("--layer", type=int, default=12)
    ap.add_argument("--max-queries", type=int, default=2)
    ap.add_argument("--targets", default="en;en+pivot;en,fr", help="target languages, ';' between settings; '+pivot' adds "
                    "the pivot term over the other languages' prompts (default en;en+pivot;en,fr)")
    ap.add_argument("--out", default="transfer.json")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if not Path(args.data).is_file():
        print(f"target_transfer: the shared data is not at {args.data}; nothing to do")
        return 0
    import torch

    import lakn
    from lakn.target import find_target
    from lakn.editing import _with_answers
    from lakn.keys import key_position
    from lakn.pivot import Pivot, pivot_layer

    fr = _frontier()
    t0 = time.time()
    model = lakn.load_model()
    edit, _, _, new, _, _ = fr.pick_facts(model, lakn.load_facts(args.data), fr.LANGS, args.facts, 0, 0, args.seed)
    settings = [s for s in args.targets.split(";") if s]
    at = pivot_layer(model, args.layer)
    rows = []
    for fact in edit:
        edited = _with_answers(fact, new[fact.fact_id])
        per_lang = {}
        for lang in fr.LANGS:
            qs = edited.queries(lang, causal=True)[: args.max_queries]
            enc = [lakn.encode_query(model, q) for q in qs]
            pos = [key_position(model, q, e.prompt, edited, "subject") for q, e in zip(qs, enc)]
            per_lang[lang] = [(e, p) for e, p in zip(enc, pos) if p is not None]
        for name in settings:
            setting = [l for l in name.removesuffix("+pivot").split(",") if l]
            targets = [ep for l in setting for ep in per_lang[l]]
            pivot = None
            if name.endswith("+pivot"):  # the other languages' prompts through the logit lens (lakn.pivot)
                rest = [ep for l, eps in per_lang.items() if l not in setting for ep in eps]
                pivot = Pivot([e.prompt for e, _ in rest], [p for _, p in rest], int(targets[0][0].answer[0]), at)
            delta, hist = find_target(model, args.layer, [e for e, _ in targets], positions=[p for _, p in targets],
                                      pivot=pivot)
            for lang, eps in per_lang.items():
                if not eps:
                    continue
                hits = top1_with_delta(model, args.layer, [e for e, _ in eps], [p for _, p in eps], delta)
                before = top1_with_delta(model, args.layer, [e for e, _ in eps], [p for _, p in eps],
                                         torch.zeros_like(delta))
                rows.append(dict(fact=fact.fact_id, relation=fact.relation, target=name, language=lang,
                                 top1=sum(hits) / len(hits), top1_before=sum(before) / len(before), n=len(hits),
                                 delta_norm=float(delta.norm()), nll_first=hist[0], nll_last=hist[-1]))
        print(f"[{time.time() - t0:.0f}s] {fact.fact_id} ({fact.relation})", flush=True)
    Path(args.out).write_text(json.dumps(dict(rows=rows, layer=args.layer, facts=[f.fact_id for f in edit]), indent=1))
    import pandas as pd

    df = pd.DataFrame(rows)
    with pd.option_context("display.width", 200, "display.float_format", "{:.2f}".format):
        print(df.pivot_table(index="target", columns="language", values="top1", aggfunc="mean")[fr.LANGS])
        print(df.groupby("target")[["delta_norm", "nll_first", "nll_last"]].mean())
    print(f"written: {args.out} ({time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
