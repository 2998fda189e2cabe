"""How well the model translates the new answers of run 12's batch (docs/results.md run 16, section 1).

For each different English new answer of the batch of fifty (``edit_frontier.pick_facts``, seed 0),
the model's translation into fr es ru de zh ar (``lakn.translate_answer`` without the round trip),
whether it translates back to the English answer (the round trip), and whether it starts with the
first token of the data's answer (what generality reads). Prints one table of shares.
``--fictional``: the answers of lakn's fictional facts instead (injection's; results.md run 20).

    OMP_NUM_THREADS=2 python -u experiments/translate_check.py      # about 10 minutes on 2 CPU threads
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from edit_frontier import DATA, LANGS, pick_facts  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fictional", action="store_true", help="lakn's fictional facts' answers (injection)")
    args = ap.parse_args()
    import torch

    import lakn

    torch.set_grad_enabled(False)
    if not args.fictional and not Path(args.data).exists():  # before the model loads
        print(f"no data at {args.data} (../shared is not here): nothing to measure")
        return 0
    t0 = time.time()
    model = lakn.load_model()
    answers = {}
    if args.fictional:
        fictional = lakn.load_facts("fictional")
        for f in fictional:
            answers.setdefault(f.answers["en"], f.answers)
        languages = [l for l in LANGS if all(l in f.answers for f in fictional)]
    else:
        _, batch, _, new, _, _ = pick_facts(model, lakn.load_facts(args.data), LANGS, 24, args.batch, 30, args.seed)
        for f in batch:
            answers.setdefault(new[f.fact_id]["en"], new[f.fact_id])
        languages = LANGS

    def first(text: str) -> list[int]:
        return model.to_tokens(" " + text, prepend_bos=False)[0][:1].tolist()

    others = [l for l in languages if l != "en"]
    right = {l: 0 for l in others}
    kept = {l: 0 for l in others}
    both = {l: 0 for l in others}
    for en, ref in answers.items():
        raw = lakn.translate_answer(model, en, others, round_trip=False)
        line = [en]
        for l in others:
            word = raw.get(l, "")
            ok = bool(word) and first(word) == first(ref[l])
            back = bool(word) and lakn.translate_answer(model, word, ["en"], source=l, round_trip=False).get(
                "en", "").casefold() == " ".join(en.split()).casefold()
            right[l] += ok
            kept[l] += back
            both[l] += ok and back
            line.append(f"{l}={word}|{ref[l]}{'' if ok else '*'}{'' if back else '(x)'}")
        print(" ; ".join(line), flush=True)
    n = len(answers)
    print(f"\n{n} different English answers ({time.time() - t0:.0f} s)")
    print("| | " + " | ".join(others) + " |")
    print("|---|" + "---|" * len(others))
    for name, counts in (("right, all translations", right), ("kept by the round trip", kept),
                         ("kept and right", both)):
        print(f"| {name} | " + " | ".join(f"{counts[l] / n:.2f}" for l in others) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
