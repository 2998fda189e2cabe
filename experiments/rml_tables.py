"""Tables of docs/results.md (run 3) from the files `lakn evaluate` / `lakn edit` / `lakn inject` wrote.

    python experiments/rml_tables.py OUT [--inject FILE]

Change rates: each (target fact, language) cell is the mean over its kept queries, each fact the mean
over its languages, each table entry the mean over facts (+- standard error over facts, n facts).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from lakn.evaluation import ChangeRateResult, EditingResult, EnhancementResult, InjectionResult

COLUMNS = [("suppress", "related"), ("suppress", "same_relation"), ("suppress", "other_relation"),
           ("enhance", "related"), ("enhance", "same_relation"), ("enhance", "other_relation")]


def per_fact(df: pd.DataFrame) -> pd.DataFrame:
    cell = df.groupby(["method", "intervention", "kind", "target", "language"]).change.mean().reset_index()
    return cell.groupby(["method", "intervention", "kind", "target"]).change.mean().reset_index()


def change_table(df: pd.DataFrame) -> pd.DataFrame:
    g = per_fact(df).groupby(["method", "intervention", "kind"]).change
    out = pd.DataFrame({"mean": g.mean(), "sem": g.sem(), "n": g.count()}).unstack(["intervention", "kind"])
    rows = {}
    for method in out.index:
        rows[method] = {f"{i} {k}": f"{out.loc[method, ('mean', i, k)]:+.2f} ± {out.loc[method, ('sem', i, k)]:.2f}"
                        for i, k in COLUMNS if ("mean", i, k) in out.columns}
        rows[method]["facts"] = int(out.loc[method, ("n", "suppress", "related")])
    return pd.DataFrame(rows).T


def markdown(frame: pd.DataFrame) -> str:
    """A pipe table (no extra dependency)."""
    if isinstance(frame.columns, pd.MultiIndex):
        frame = frame.copy()
        frame.columns = [" ".join(map(str, c)) for c in frame.columns]
    def cells(v):
        return f"{v:+.2f}" if isinstance(v, float) else str(v)

    head = [" / ".join(map(str, frame.index.names)) if any(frame.index.names) else ""] + [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for idx, row in frame.iterrows():
        name = " / ".join(map(str, idx)) if isinstance(idx, tuple) else str(idx)
        lines.append("| " + " | ".join([name] + [cells(v) for v in row]) + " |")
    return "\n".join(lines)


def show(title: str, frame: pd.DataFrame) -> None:
    print(f"\n{title}\n")
    print(markdown(frame))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--inject", default=None)
    args = ap.parse_args()
    out = Path(args.out)
    for name in ("threshold", "top10"):
        path = out / name / "eval.json"
        if not path.is_file():
            continue
        res = ChangeRateResult.load(path)
        df, c = res.to_dataframe(), res.config
        print(f"\n## {name}: kept {c['n_kept']}/{c['n_queries']} queries {c['kept_by_split']}, "
              f"facts kept {len(c['facts_kept'])}")
        counts = {m: pd.Series(v).describe()[["mean", "min", "max"]].round(1).to_dict() for m, v in c["n_neurons"].items()}
        print("neurons per fact:", counts)
        show("all kept queries", change_table(df))
        for split in ("heldout_paraphrase", "heldout_language"):
            show(f"{split} only", change_table(df[df.split == split]))
        by_lang = (df[df.intervention == "suppress"].groupby(["method", "kind", "language", "target"]).change.mean()
                   .groupby(["method", "kind", "language"]).mean().unstack(["kind"]))
        show("suppress by language (mean over facts)", by_lang.round(2))
        enh = out / name / "enhance.json"
        if enh.is_file():
            show("enhancement in wrong languages", EnhancementResult.load(enh).table())
    edit = out / "threshold" / "edit.json"
    if edit.is_file():
        show("editing", EditingResult.load(edit).table())
    if args.inject and Path(args.inject).is_file():
        show("injection", InjectionResult.load(args.inject).table())


if __name__ == "__main__":
    main()
