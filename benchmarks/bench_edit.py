"""Cost of one edit and of a batch, per method, side by side (no downloads).

    OMP_NUM_THREADS=1 python benchmarks/bench_edit.py [--layer 12] [--batch 10] [--repeats 2]

On the embedded Gemma 3 270M with lakn's demo facts (each given another fact's answers of its
relation): the preserved-key covariance of one layer built from scratch and read from the cache;
the pivot layer (measured once per model); one closed-form edit through the whole layer (keys at
the subject's last token and at the last prompt token, keys from 7 languages, 20 target steps, the
default pivot term, re-solves and translated target; and at the subject's token without them); a batch of ``--batch`` facts in one solve;
the gradient edit (10 Adam steps) and the knowledge-neuron embedding edit through 20 neurons; and
``undo()``. Prints seconds (median of ``--repeats``) and peak resident memory.

``--pivot-only`` times :func:`lakn.pivot_layer` alone (one lens row per unembedding call against
the batched lens); ``--targets-only`` times the targets of a batch of ``--batch`` facts found one
fact at a time (``find_target`` per fact) against all at once (``find_targets``), both with the
pivot term, and prints how far apart the two sets of targets are. ``--chunks N`` also times the
batch solved in chunks of N facts one after another (``edit_facts(..., chunk_size=N)``);
``--batch-only`` times only the batch rows (one solve, and in chunks with ``--chunks``).
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import tempfile
import time

import torch

import lakn
from lakn.editing import edit_facts, layer_neurons
from lakn.evaluation.editing import counterfactuals
from lakn.pivot import pivot_layer

LANGS = ["en", "fr", "es", "ru", "de", "zh", "ar"]


def _timed(fn, repeats: int):
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layer", type=int, default=12)
    ap.add_argument("--batch", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--pivot-only", action="store_true", help="time pivot_layer alone (both lens modes)")
    ap.add_argument("--targets-only", action="store_true",
                    help="time a batch's targets found one fact at a time and all at once")
    ap.add_argument("--chunks", type=int, default=0, help="also time the batch in chunks of N facts (0: not)")
    ap.add_argument("--batch-only", action="store_true", help="time only the batch rows")
    ap.add_argument("--translate-only", action="store_true",
                    help="time only the translated target: translate_answer, and one edit with and without it")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    args = ap.parse_args()
    if not 0 <= args.chunks < args.batch:
        ap.error(f"--chunks must be 0 (off) or between 1 and --batch - 1 = {args.batch - 1}, got {args.chunks}")
    torch.set_num_threads(args.threads)
    model = lakn.load_model()
    facts = lakn.load_facts("demo")
    new = counterfactuals(facts)
    facts = [f for f in facts if f.fact_id in new and all(l in f.templates for l in LANGS)]
    answers = {f.fact_id: {l: new[f.fact_id][l] for l in LANGS if l in new[f.fact_id]} for f in facts}
    fact, layer = facts[0], args.layer
    whole = layer_neurons(model, [layer])
    small = [(layer, i) for i in range(20)]
    rows: list = []
    if args.targets_only:
        return _print(_target_rows(model, layer, facts[: args.batch], answers, args.repeats), layer, args)
    if args.batch_only:
        pivot_layer(model, layer)  # untimed: measured once per model
        kept = lakn.preservation(model, [layer], facts=facts[1:])
        return _print(_batch_rows(model, facts[: args.batch], answers, whole, kept, args), layer, args)
    if args.translate_only:
        pivot_layer(model, layer)  # untimed: measured once per model
        kept = lakn.preservation(model, [layer], facts=facts[1:])
        return _print(_translate_rows(model, fact, answers[fact.fact_id], whole, kept, args), layer, args)
    pivot_rows = _pivot_rows(model, layer)
    if args.pivot_only:
        return _print(rows + pivot_rows, layer, args)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["LAKN_CACHE_DIR"] = tmp  # a cold cache, then the warm one
        t = time.perf_counter()
        kept = lakn.preservation(model, [layer], facts=facts[1:])
        rows.append(("covariance, built (1 layer)", time.perf_counter() - t, f"{kept.n_tokens} tokens"))
        t = time.perf_counter()
        lakn.preservation(model, [layer], facts=facts[1:])
        rows.append(("covariance, from the cache", time.perf_counter() - t, "hash-checked read"))

        def single(**kw):
            if kw.get("method", "closed_form") == "closed_form":
                kw["preserve"] = kept
            e = lakn.edit_fact(model, fact, answers[fact.fact_id], kw.pop("neurons", whole), **kw)
            e.undo()
            return e

        rows += pivot_rows
        s, e = _timed(lambda: single(position="subject", pivot=None, retries=0, translate=False), args.repeats)
        rows.append(("closed_form, subject keys, no pivot, 1 solve", s, f"{e.info['n_keys']} keys"))
        for pos in ("subject", "last"):
            s, e = _timed(lambda: single(position=pos), args.repeats)
            rows.append((f"closed_form, whole layer, keys at {pos} (default)", s,
                         f"{e.info['n_keys']} keys, pivot L{e.info['pivot_layer']}, key weights {e.info['key_weights']}"))
        rows += _batch_rows(model, facts[: args.batch], answers, whole, kept, args)
        s, _ = _timed(lambda: single(neurons=small, method="gradient"), args.repeats)
        rows.append(("gradient, 20 neurons, 10 Adam steps", s, ""))
        s, _ = _timed(lambda: single(neurons=small, method="kn_embedding"), args.repeats)
        rows.append(("kn_embedding, 20 neurons", s, ""))
        e = lakn.edit_fact(model, fact, answers[fact.fact_id], whole, preserve=kept, position="subject")
        t = time.perf_counter()
        e.undo()
        rows.append(("undo (whole layer)", time.perf_counter() - t, "bit for bit"))
    _print(rows, layer, args)


def _batch_rows(model, batch, answers, whole, kept, args) -> list:
    """A batch in one solve and, with ``--chunks``, in chunks one after another."""
    rows = []
    for chunk in [None] + ([args.chunks] if args.chunks else []):
        s, e = _timed(lambda: _undone(edit_facts(model, batch, {f.fact_id: answers[f.fact_id] for f in batch}, whole,
                                                 preserve=kept, position="subject", chunk_size=chunk)), args.repeats)
        what = "one solve" if chunk is None else f"chunks of {chunk}"
        rows.append((f"closed_form batch of {len(batch)} ({what})", s,
                     f"{s / len(batch):.2f} s per fact, {e.info['solves']} solves, {len(e.info['missed'])} missed"))
    return rows


def _translate_rows(model, fact, answers, whole, kept, args) -> list:
    """The model's translations of the new answer, and one edit with them (one group, and a group per
    language, the default) beside the English target alone, side by side."""
    langs = [l for l in LANGS if l != "en" and l in fact.templates]
    s, words = _timed(lambda: lakn.translate_answer(model, answers["en"], langs), args.repeats)
    rows = [(f"translate_answer into {len(langs)} languages (round trip)", s, f"{len(words)} kept: {words}")]
    for label, kw in (("English target alone (translate=False)", dict(translate=False)),
                      ("translate, one group", dict(translate=True, per_language=False)),
                      ("translate, a group per language (default)", {})):
        s, e = _timed(lambda: _undone(lakn.edit_fact(model, fact, answers, whole, preserve=kept, **kw)), args.repeats)
        rows.append((f"closed_form, whole layer, {label}", s,
                     f"{e.info['solves']} solves, groups {len(e.info['groups'])}, missed {e.info['missed']}"))
    return rows


def _undone(edit):
    edit.undo()
    return edit


def _pivot_rows(model, layer: int) -> list:
    """pivot_layer timed with one lens row per unembedding call (as before) and with the batched lens."""
    import lakn.pivot as pivot_module

    out = []
    pivot_layer(model, layer, n_facts=1)  # untimed: the one-off costs (demo facts, tokenizer) out of both rows
    for chunk, label in ((1, "one lens row per unembedding call"), (pivot_module._LENS_ROWS, "batched lens")):
        saved, pivot_module._LENS_ROWS = pivot_module._LENS_ROWS, chunk
        pivot_module._LAYERS.pop(model, None)  # measure, not the memo
        try:
            t = time.perf_counter()
            at = pivot_layer(model, layer)
        finally:
            pivot_module._LENS_ROWS = saved
        out.append((f"pivot layer; {label}", time.perf_counter() - t, f"layer {at}"))
    return out


def _target_rows(model, layer: int, facts, answers, repeats: int) -> list:
    """A batch's targets (keys from every language, the pivot term) one fact at a time and at once."""
    from lakn.target import find_target, find_targets
    from lakn.closed_form_edit import _group
    from lakn.editing import _with_answers
    from lakn.keys import _key_languages

    at = pivot_layer(model, layer)  # untimed: measured once per model
    groups = [_group(model, f.fact_id, _with_answers(f, {"en": answers[f.fact_id]["en"]}), f, ["en"],
                     _key_languages(f, answers[f.fact_id], "en", None), None, "subject") for f in facts]
    pivots = [None if at is None else g.pivot(at, 1.0) for g in groups]
    n_pivot = sum(len(p.prompts) for p in pivots if p is not None)
    alone_s, alone = _timed(lambda: [find_target(model, layer, g.targets, positions=g.target_positions, pivot=p)
                                     for g, p in zip(groups, pivots)], repeats)
    together_s, together = _timed(lambda: find_targets(model, layer, [g.targets for g in groups],
                                                       positions=[g.target_positions for g in groups],
                                                       pivots=pivots), repeats)
    gap = max(float((a[0] - b[0]).norm() / a[0].norm()) for a, b in zip(alone, together))
    note = f"{len(groups)} targets, {sum(len(g.targets) for g in groups)} queries, {n_pivot} pivot prompts (L{at})"
    return [(f"targets, one fact at a time ({len(groups)} facts)", alone_s, note),
            (f"targets, all at once ({len(groups)} facts)", together_s,
             f"{alone_s / together_s:.1f}x; largest |difference| / |delta| {gap:.1e}")]


def _print(rows: list, layer: int, args) -> None:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"Gemma 3 270M, layer {layer}, {args.threads} thread(s), {platform.processor() or platform.machine()}, "
          f"median of {args.repeats}; peak RSS {peak:.0f} MiB")
    print(f"{'step':<46} {'seconds':>8}  note")
    for name, s, note in rows:
        print(f"{name:<46} {s:>8.2f}  {note}")


if __name__ == "__main__":
    main()
