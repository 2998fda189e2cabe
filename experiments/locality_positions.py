"""Where an injection's locality cost enters an unrelated prompt: the closed-form injection's
output change added at the prompt's last position only (where its answer is read), at its
earlier positions only (read at the answer through attention), or everywhere (the edit itself).

The first ``--facts`` fictional facts are injected, each alone, as inject_frontier.py does (trained in en + fr, keys from the
es de ru zh prompts too, whole layer, λ 1e5, 400 facts outside the locality pool preserved), then
undone; its row change runs as a hook on the 30 known facts' first query per language, and the
share of those queries that keep their top-1 token is printed per mode.

    OMP_NUM_THREADS=2 python experiments/locality_positions.py [--facts 5] [--answer-weight 1]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from inject_frontier import DATA, LANGS, known_pool  # noqa: E402

MODES = ("everywhere", "last only", "earlier only")


def top1_under(model, prompts, layer: int, rows=None, mode: str = "everywhere") -> list[int]:
    """Each prompt's top-1 next token, with ``act @ rows`` added to layer ``layer``'s MLP output at
    the positions ``mode`` names (no change without ``rows``). Prompts run in batches of one length."""
    import torch

    from lakn.keys import _by_length

    store: dict = {}

    def capture(act, hook=None):
        store["act"] = act
        return act

    def add(out, hook=None):
        change = store.pop("act") @ rows.to(out)
        mask = torch.zeros(out.shape[1], 1, dtype=out.dtype, device=out.device)
        mask[{"everywhere": slice(None), "last only": slice(-1, None), "earlier only": slice(None, -1)}[mode]] = 1
        return out + change * mask

    hooks = [] if rows is None else [(f"blocks.{layer}.mlp.hook_post", capture), (f"blocks.{layer}.mlp.hook_out", add)]
    tops = [0] * len(prompts)
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):
        for _, members in sorted(_by_length(prompts).items()):
            for start in range(0, len(members), 32):
                chunk = members[start:start + 32]
                logits = model(torch.stack([prompts[i] for i in chunk]))
                for i, token in zip(chunk, logits[:, -1].argmax(-1).tolist()):
                    tops[i] = token
    return tops


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--facts", type=int, default=5, help="fictional facts injected one at a time (default 5)")
    ap.add_argument("--layer", type=int, default=12)
    ap.add_argument("--preserve-facts", type=int, default=400)
    ap.add_argument("--answer-weight", type=int, default=1, help="lakn.preservation's answer_weight (default 1)")
    args = ap.parse_args()
    import lakn
    from lakn.splits import evaluation_queries

    if not Path(args.data).is_file():
        print(f"locality_positions: no shared data at {args.data}")
        return 1
    t0 = time.time()
    model = lakn.load_model()
    facts = [f for f in lakn.load_facts(args.data) if all(l in f.templates for l in LANGS)]
    pool = known_pool(model, facts, 30, 0)
    measured = {f.fact_id for f in pool}
    others = [f for f in facts if f.fact_id not in measured][: args.preserve_facts]
    kept = lakn.preservation(model, [args.layer], facts=lakn.load_facts("demo"), answer_weight=args.answer_weight)
    kept = kept.merged(lakn.preservation(model, [args.layer], texts=[], facts=others, languages=LANGS, max_queries=2,
                                         answer_weight=args.answer_weight))
    prompts = [q.encoded.prompt for q in evaluation_queries(model, pool, languages=LANGS, max_queries=1, causal=True)]
    before = top1_under(model, prompts, args.layer)
    print(f"[{time.time() - t0:.0f}s] {len(prompts)} locality queries, {len(others)} facts preserved", flush=True)
    kept_share: dict[str, list[float]] = {m: [] for m in MODES}
    for fact in list(lakn.load_facts("fictional"))[: args.facts]:
        edit = lakn.inject_fact(model, fact, languages=("en", "fr"), neurons=lakn.layer_neurons(model, [args.layer]),
                                method="closed_form", lam=1e5, preserve=kept, position="subject",
                                key_languages=["es", "de", "ru", "zh"])
        edit.undo()
        assert edit.neurons_by_layer[args.layer] == list(range(int(model.cfg.d_mlp)))  # act @ rows: the whole layer
        for mode in MODES:
            after = top1_under(model, prompts, args.layer, edit.deltas[args.layer], mode)
            kept_share[mode].append(sum(a == b for a, b in zip(before, after)) / len(prompts))
        print(f"[{time.time() - t0:.0f}s] {fact.fact_id:32s} "
              + "  ".join(f"{m} {v[-1]:.3f}" for m, v in kept_share.items()), flush=True)
    print("mean".ljust(40) + "  ".join(f"{m} {sum(v) / len(v):.3f}" for m, v in kept_share.items()))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
