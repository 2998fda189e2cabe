"""Why an edit does not take: the closed-form rows leak the target into the rest of the fact's prompt
(docs/results.md run 9 section 1).

For each named fact of edit_frontier.py's pick (facts 1-16, the same preserved facts), the target δ
is found as usual (whole layer, defaults, one solve). It is then applied at the subject's token
alone (a hook), and as the row change solved at key weights w, without and with context keys (the
key prompts' other positions mapped to no change, weighted c x w). Printed: the rank (0 = top) of
the new answer's first token on the English target queries, the share of δ realised at the key,
and the mean change at the other positions over |δ|.

    OMP_NUM_THREADS=1 python experiments/context_leak.py P279_242 P176_530 [--weights 1,16,64] [--context 0,1,4]

The data is read where it lies (never copied); without it the script says so and exits 0.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from edit_frontier import DATA, LANGS, pick_facts  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("facts", nargs="+", help="fact ids among edit_frontier.py's first 16 picked facts")
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--layer", type=int, default=12)
    ap.add_argument("--weights", default="1,16,64", help="key weights (default 1,16,64)")
    ap.add_argument("--context", default="0,1,4", help="context weights per unit of key weight (default 0,1,4)")
    args = ap.parse_args()
    if not Path(args.data).is_file():
        print(f"context_leak: the shared data is not at {args.data}; nothing to do")
        return 0
    import torch

    import lakn
    from lakn.closed_form import preservation, solve_rows
    from lakn.editing import layer_neurons
    from lakn.keys import context_keys, key_prompts, prompt_keys
    from lakn.tokens import encode_query, last_logits
    from lakn.weights import Edit

    model = lakn.load_model()
    facts = lakn.load_facts(args.data)
    edit, batch, pool, new, *_ = pick_facts(model, facts, LANGS, 16, 0, 30, 0)
    unknown = sorted(set(args.facts) - {f.fact_id for f in edit})
    if unknown:
        ap.error(f"not among the 16 picked facts: {', '.join(unknown)}")
    seen = {f.relation for f in edit} | {f.relation for f in pool}
    used = {f.fact_id for f in pool}
    others = [f for f in facts if f.fact_id not in used and f.relation not in seen][:400]
    layer = args.layer
    kept = preservation(model, [layer], facts=lakn.load_facts("demo"))
    kept = kept.merged(preservation(model, [layer], texts=[], facts=others, languages=LANGS, max_queries=2))
    every = list(range(int(model.cfg.d_mlp)))
    cov = kept.restricted(layer, every)
    point = f"blocks.{layer}.mlp.hook_out"
    for fact in [f for f in edit if f.fact_id in args.facts]:
        e = lakn.edit_fact(model, fact, new[fact.fact_id], layer_neurons(model, [layer]), preserve=kept,
                           max_queries=2, retries=0, translate=False)  # the English target, as in run 9
        delta = e.info["targets"][0]
        e.undo()
        edited = lakn.Fact(fact.fact_id, fact.relation, {**fact.answers, "en": new[fact.fact_id]["en"]},
                           fact.templates, fact.subjects)
        targets = [encode_query(model, q) for q in edited.queries("en")[:2]]
        _, _, target_pos = key_prompts(model, edited, ["en"], 2, "subject")
        prompts, _, positions = key_prompts(model, fact, LANGS, 2, "subject")
        keys = prompt_keys(model, prompts, {layer: every}, positions)[layer]
        ctx = context_keys(model, prompts, {layer: every}, positions)[layer]

        def ranks(fwd_hooks=()) -> list[int]:
            out = []
            with torch.no_grad(), model.hooks(fwd_hooks=list(fwd_hooks)):
                for q in targets:
                    logits = last_logits(model, q.prompt[None])[0]
                    out.append(int((logits > logits[int(q.answer[0])]).sum()))
            return out

        alone = []
        for q, pos in zip(targets, target_pos):
            def add(out, hook=None, pos=pos):
                out = out.clone()
                out[0, pos] += delta.to(out.dtype)
                return out
            with torch.no_grad(), model.hooks(fwd_hooks=[(point, add)]):
                logits = last_logits(model, q.prompt[None])[0]
            alone.append(int((logits > logits[int(q.answer[0])]).sum()))
        print(f"{fact.fact_id} -> {new[fact.fact_id]['en']}: ranks before {ranks()}, δ at the subject alone {alone}; "
              f"{len(keys)} keys, {len(ctx)} context rows", flush=True)
        for w in [float(x) for x in args.weights.split(",")]:
            for c in [float(x) for x in args.context.split(",")]:
                rows_in = torch.cat([keys, ctx]) if c else keys
                residuals = torch.zeros(len(rows_in), delta.shape[0], dtype=torch.float64)
                residuals[: len(keys)] = delta.double()
                weights = torch.cat([torch.full((len(keys),), w), torch.full((len(ctx) if c else 0,), c * w)])
                rows = solve_rows(rows_in, residuals, cov, lam=lakn.editing.LAM, weights=weights).float()
                realised = float(keys[0].float() @ rows @ delta / delta.norm() ** 2)
                leak = float((ctx.float() @ rows).norm(dim=-1).mean() / delta.norm())
                change = Edit(model, {layer: every}, {}, {layer: rows}, [], method="trial", active=False)
                change.redo()
                try:
                    after = ranks()
                finally:
                    change.undo()
                print(f"  key weight {w:g}, context {c:g}: realised {realised:.2f}, leak {leak:.3f}, ranks {after}",
                      flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
