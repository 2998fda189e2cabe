"""docs/results.md run 4: the specificity protocol on facts of relations the defaults were not tuned on.

    python experiments/specificity_run.py RUN [RUN ...] --data FACTS [--holdout-languages de,zh,ar] [--out FILE]

The RUN folders: a causal run (``lakn localize --specificity causal``) and, optionally, a plain run of the
same facts (the default selection), each already evaluated (``lakn evaluate RUN --data FACTS
--holdout-languages de,zh,ar`` wrote ``RUN/eval.json``). Prints, from those files, the protocol per
relation and per language (mean ± s.e. over facts), then measures the trade-off on the causal run:
matrice / kn / amig / mean re-selected under the causal selection at equal k, and matrice over the
contrast weights, all in batched :func:`lakn.evaluation.tradeoff` calls, and writes the rows to --out.
The shared data is read from where it lies; nothing of it is copied.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

import lakn
from lakn.evaluation import ChangeRateResult, tradeoff
from lakn.evaluation.specificity import GROUPS

SHORT = {"seen": "own seen", "heldout_paraphrase": "own held-out para.", "heldout_language": "own held-out lang.",
         "same_relation_different_answer": "same rel. diff. answer", "same_relation_same_answer": "same rel. same answer",
         "other_relations": "other relations"}


def per_fact(df: pd.DataFrame) -> pd.DataFrame:
    """Change per (method, target, group): mean over languages of the per-language query means."""
    cell = df.groupby(["method", "target", "group", "language"]).change.mean().reset_index()
    return cell.groupby(["method", "target", "group"]).change.mean().reset_index()


def mean_se(values: pd.Series) -> str:
    return f"{values.mean():+.3f} ± {values.sem():.3f}" if len(values) > 1 else f"{values.mean():+.3f}"


def protocol_by(df: pd.DataFrame, relation: dict[str, str], key: str) -> pd.DataFrame:
    """Method x group table split by ``key`` (``relation`` of the target, or ``language``)."""
    if key == "relation":
        pf = per_fact(df)
        pf["relation"] = pf.target.map(relation)
        g = pf.groupby(["method", "relation", "group"]).change
    else:
        cell = df.groupby(["method", "target", "group", "language"]).change.mean().reset_index()
        g = cell.groupby(["method", "language", "group"]).change
    out = g.apply(mean_se).unstack("group")
    return out[[c for c in GROUPS if c in out.columns]].rename(columns=SHORT)


def markdown(df: pd.DataFrame) -> str:
    """A markdown table of ``df`` (index as the first columns), without extra dependencies."""
    df = df.reset_index()
    cells = [[f"{v:.3f}" if isinstance(v, float) else str(v) for v in row] for row in df.itertuples(index=False)]
    head = [str(c) for c in df.columns]
    return "\n".join(["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
                     + ["| " + " | ".join(r) + " |" for r in cells])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", help="run folders (each with eval.json)")
    ap.add_argument("--data", required=True)
    ap.add_argument("--holdout-languages", default="de,zh,ar")
    ap.add_argument("--out", default="tradeoff_run4.json")
    ap.add_argument("--skip-tradeoff", action="store_true")
    args = ap.parse_args()
    pd.set_option("display.width", 250)
    pd.set_option("display.max_columns", 20)
    facts = lakn.load_facts(args.data)
    relation = {f.fact_id: f.relation for f in facts}
    runs = {}
    for folder in map(Path, args.runs):
        result = lakn.LocalizationResult.load(folder)
        runs[folder.name] = result
        path = folder / "eval.json"
        if not path.is_file():
            print(f"{path}: not evaluated yet (lakn evaluate {folder} --data ...)")
            continue
        df = ChangeRateResult.load(path).to_dataframe()
        df = df[df.intervention == "suppress"]
        print(f"\n## {folder.name} ({result.selection}): {path}")
        print(markdown(protocol_by(df, relation, "relation")))
        print(markdown(protocol_by(df, relation, "language")))
    if args.skip_tradeoff:
        return
    causal = {n: r for n, r in runs.items() if r.selection == "causal"}
    if not causal:
        raise SystemExit(f"{args.runs} holds no causal run")
    name, result = next(iter(causal.items()))
    model = lakn.load_model()
    langs = list(dict.fromkeys(result.languages + args.holdout_languages.split(",")))
    options = dict(languages=langs, first_token_only=True, progress=True)
    rows = []
    grids = [dict(methods=["matrice", "kn", "amig", "mean"], weights=[(4.0, 1.0)], ks=[20, 80]),
             dict(methods=["matrice"], weights=[(0.0, 0.0), (1.0, 0.25), (8.0, 2.0)], ks=[80])]
    for grid in grids:
        curve = tradeoff(model, {name: result}, facts, **grid, **options)
        rows += curve.rows
        print(markdown(curve.table()))
    Path(args.out).write_text(json.dumps(rows, indent=1))
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
