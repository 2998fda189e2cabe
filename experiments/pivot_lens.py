"""Where a multilingual model pivots: the logit lens of each language's prompts, layer by layer.

For facts the model answers in English (edit_frontier.py's pick), the last position of each
language's queries is read through the logit lens (lakn.lens_ranks: the final norm and the
unembedding applied to a layer's residual stream). The table gives, per layer and language, the
median rank of the *English* answer's first token and of the language's own answer's first token.
Where the English answer ranks high in other languages' prompts is the "pivot" the closed-form
edit's target uses (lakn.pivot); lakn.pivot_layer's choice for an edit at --layer is printed too.

    OMP_NUM_THREADS=1 python experiments/pivot_lens.py [--facts 16] [--layer 12] [--out lens.json]
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(HERE.parents[1] / "shared" / "data" / "rml_lama_like" / "facts.jsonl"))
    ap.add_argument("--facts", type=int, default=16)
    ap.add_argument("--layer", type=int, default=12, help="the edited layer (for lakn.pivot_layer)")
    ap.add_argument("--max-queries", type=int, default=2)
    ap.add_argument("--out", default="lens.json")
    args = ap.parse_args()
    if not Path(args.data).is_file():
        print(f"pivot_lens: the shared data is not at {args.data}; nothing to do")
        return 0
    import torch

    import lakn

    spec = importlib.util.spec_from_file_location("edit_frontier", HERE / "edit_frontier.py")
    fr = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fr)
    t0 = time.time()
    model = lakn.load_model()
    edit, *_ = fr.pick_facts(model, lakn.load_facts(args.data), fr.LANGS, args.facts, 0, 0, 0)
    ranks: dict[str, dict[str, list]] = {lang: {"en": [], "own": []} for lang in fr.LANGS}
    for fact in edit:
        en_token = int(lakn.encode_query(model, fact.queries("en", causal=True)[0]).answer[0])
        for lang in fr.LANGS:
            for q in fact.queries(lang, causal=True)[: args.max_queries]:
                enc = lakn.encode_query(model, q)
                ranks[lang]["en"].append(lakn.lens_ranks(model, [enc.prompt], en_token)[0])
                ranks[lang]["own"].append(lakn.lens_ranks(model, [enc.prompt], int(enc.answer[0]))[0])
    n_layers = int(model.cfg.n_layers)
    table = {lang: {kind: torch.stack(v).float().median(0).values.tolist() if v else [] for kind, v in per.items()}
             for lang, per in ranks.items()}
    at = lakn.pivot_layer(model, args.layer)
    print(f"{len(edit)} facts; median rank of the English answer / of the language's own answer (first tokens), "
          f"logit lens of the last prompt position; lakn.pivot_layer for an edit at layer {args.layer}: {at}")
    print("layer " + " ".join(f"{lang:>13}" for lang in fr.LANGS))
    for layer in range(n_layers):
        cells = [f"{int(table[g]['en'][layer]):>6}/{int(table[g]['own'][layer]):<6}" if table[g]["en"] else f"{'':>13}"
                 for g in fr.LANGS]
        print(f"{layer:5d} " + " ".join(cells))
    Path(args.out).write_text(json.dumps(dict(facts=[f.fact_id for f in edit], pivot_layer=at, median_ranks=table,
                                              n_queries={g: len(ranks[g]["en"]) for g in fr.LANGS}), indent=1))
    print(f"written: {args.out} ({time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
