"""What the command groups share: option types, generated options, deprecated option names, output."""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import MISSING
from typing import Any

from ..config import CHOICES, RunConfig, above_one_float, non_negative_float, non_negative_int, positive_int

__all__ = ["absolute_path", "comma_list", "positive_int", "add_run_options", "run_options", "add_deprecated",
           "add_training_options", "add_edit_method_options", "edit_method_options", "int_list", "choice_list",
           "print_frame", "evaluation_facts"]

EDIT_METHOD_CHOICES = ("closed_form", "gradient", "kn_embedding")


def absolute_path(text: str) -> str:
    """A path argument with ``~`` expanded, made absolute (resolved once, so a run records where it is)."""
    return os.path.abspath(os.path.expanduser(text))


def comma_list(text: str) -> list[str]:
    """argparse type: ``"en,fr"`` -> ``["en", "fr"]``."""
    return [t.strip() for t in text.split(",") if t.strip()]


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """One option per user field of :class:`~lakn.config.RunConfig` (``--max-queries`` for
    ``max_queries``), with its default, choices and help taken from the configuration."""
    for f in RunConfig.options():
        default: Any = f.default if f.default is not MISSING else None
        flag = "--" + f.name.replace("_", "-")
        text = f.metadata["help"]
        if isinstance(default, bool):
            parser.add_argument(flag, action="store_true", help=text)
        elif f.name in CHOICES:
            parser.add_argument(flag, choices=CHOICES[f.name], default=default, help=f"{text} (default {default})")
        else:
            shown = "" if default is None else f" (default {default})"
            parser.add_argument(flag, type=f.metadata["parse"], default=default, help=text + shown)


def run_options(args: argparse.Namespace) -> dict[str, Any]:
    """The :class:`~lakn.config.RunConfig` fields given on the command line, by name."""
    return {f.name: getattr(args, f.name) for f in RunConfig.options()}


class _Deprecated(argparse.Action):
    """An old option name: works as the new one, with a warning on stderr."""

    def __init__(self, option_strings, dest, new: str, **kwargs):
        self.new = new
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"lakn: warning: {option_string} is deprecated and will be removed in lakn 0.3; use {self.new}",
              file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_deprecated(parser: argparse.ArgumentParser, old: str, new: str, dest: str, type) -> None:
    """Accept ``old`` as a hidden alias of the option ``new`` (same destination and type)."""
    parser.add_argument(old, action=_Deprecated, new=new, dest=dest, type=type, help=argparse.SUPPRESS)


AUTO_PRESERVE = 400
"""Other facts the closed form of ``lakn edit`` and ``lakn inject`` keeps by default (results.md runs 7, 11)."""


def add_training_options(parser: argparse.ArgumentParser, *, language: str, languages: str, steps: int, what: str,
                         preserve: int | None, preserve_help: str, seed_help: str) -> None:
    """The options of the commands that train W_out rows (edit, inject): the model, the training
    language and the languages measured, Adam steps and rate, the facts to train, the KL term's
    facts and weight, the early stop and the seed."""
    parser.add_argument("--model", default=None, help="model (default: embedded Gemma 3 270M)")
    parser.add_argument("--language", default="en", help=f"{language} (default en)")
    parser.add_argument("--languages", type=comma_list, default=None, help=languages)
    parser.add_argument("--steps", type=positive_int, default=steps)
    parser.add_argument("--lr", type=float, default=0.5)
    parser.add_argument("--fact-ids", type=comma_list, default=None, help=f"comma-separated {what} (default: all)")
    add_deprecated(parser, "--facts", "--fact-ids", "fact_ids", comma_list)
    parser.add_argument("--preserve", type=int, default=preserve,
                        help=preserve_help + ("" if preserve is None else f" (default {preserve})"))
    parser.add_argument("--locality-weight", type=float, default=1.0, help="weight of the KL term (default 1)")
    parser.add_argument("--target-prob", type=float, default=None,
                        help="stop once every training query gives the answer this probability (default: run all steps)")
    parser.add_argument("--seed", type=int, default=0, help=seed_help)


def int_list(text: str) -> list[int]:
    """argparse type: ``"1,10,50"`` -> ``[1, 10, 50]`` (each a positive integer)."""
    return [positive_int(t) for t in comma_list(text)]


def choice_list(choices: tuple[str, ...]):
    """argparse type: a comma-separated list whose items are all in ``choices``."""

    def parse(text: str) -> list[str]:
        items = comma_list(text)
        bad = [t for t in items if t not in choices]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"invalid choice {','.join(bad) or text!r} (choose from {', '.join(choices)})")
        return items

    return parse


def add_edit_method_options(parser: argparse.ArgumentParser, *, sets: tuple[str, ...], default_sets: str,
                            sets_help: str) -> None:
    """The options that choose the edit (edit, inject): the method(s), the neuron set(s), the layers
    of the whole-layer set and the closed-form solve's settings (left to lakn.editing unless given)."""
    parser.add_argument("--method", type=choice_list(EDIT_METHOD_CHOICES), default=["closed_form"],
                        help="edit method(s), comma-separated: closed_form (the constrained least-squares update), "
                             "gradient (Adam steps on the rows), kn_embedding (the knowledge-neuron embedding edit); "
                             "default closed_form")
    parser.add_argument("--edit-set", type=choice_list(sets), default=comma_list(default_sets),
                        help=f"{sets_help} (comma-separated; default {default_sets})")
    parser.add_argument("--layers", type=int_list_or_zero, default=None,
                        help="layers of the whole-layer set (default: the layer holding most of the fact's neurons)")
    parser.add_argument("--lam", type=float, default=None, help="closed_form: weight of the preserved keys")
    parser.add_argument("--gain", type=float, default=None, help="closed_form: scale of the target; kn_embedding: scale of the embedding change (kn_scale)")
    parser.add_argument("--position", choices=("subject", "last"), default=None,
                        help="closed_form: read the keys and add the target at the subject's last token (subject) "
                             "or at the last prompt token (last); default: lakn.editing's")
    parser.add_argument("--null-space", type=float, default=None,
                        help="closed_form: project the update onto the null space of the preserved keys "
                             "(eigenvalue threshold, e.g. 1e-4; default: no projection)")
    parser.add_argument("--pivot", type=pivot_choice, default="auto",
                        help="closed_form: the pivot term of the target (the other languages' prompts read through the "
                             "logit lens, lakn.pivot): auto (default), none, or a layer")
    parser.add_argument("--retries", type=non_negative_int, default=None,
                        help="closed_form: re-solves, each with the keys of facts whose new answer is not yet top-1 "
                             "counting --retry-boost times more (default: lakn.editing.RETRIES; 0: one solve)")
    parser.add_argument("--retry-boost", type=above_one_float, default=None,
                        help="closed_form: how many times more a missed fact's keys count in each re-solve "
                             "(a number > 1; default: lakn.editing.RETRY_BOOST)")
    parser.add_argument("--context-weight", type=non_negative_float, default=None,
                        help="closed_form: weight of the key prompts' other positions, kept unchanged, per unit of "
                             "their key's weight (default: lakn.editing's CONTEXT_WEIGHT; 0: off)")
    parser.add_argument("--target-steps", type=positive_int, default=None,
                        help="closed_form: Adam steps of the target search (default: lakn.editing's)")


def pivot_choice(text: str) -> str | int | None:
    """argparse type: ``auto``, ``none`` or a layer (an integer >= 0)."""
    if text in ("auto", "none"):
        return None if text == "none" else text
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected auto, none or a layer, got {text!r}")
    return int(text)


def int_list_or_zero(text: str) -> list[int]:
    """argparse type: ``"0,12"`` -> ``[0, 12]`` (integers >= 0)."""
    out = []
    for t in comma_list(text):
        if not t.isdigit():
            raise argparse.ArgumentTypeError(f"expected integers >= 0, got {t!r}")
        out.append(int(t))
    return out


def edit_method_options(args: argparse.Namespace, method: str) -> dict[str, Any]:
    """The options of ``method`` given on the command line (the others keep lakn.editing's defaults)."""
    out: dict[str, Any] = {}
    if method == "closed_form":
        for name in ("lam", "gain", "null_space", "position", "retries", "retry_boost", "target_steps",
                     "context_weight"):
            if getattr(args, name, None) is not None:
                out[name] = getattr(args, name)
        if getattr(args, "pivot", "auto") != "auto":  # none (None) or a layer
            out["pivot"] = args.pivot
        if getattr(args, "chunk", None) is not None:  # lakn edit's --chunk
            out["chunk_size"] = args.chunk
    elif method == "kn_embedding" and getattr(args, "gain", None) is not None:
        out["kn_scale"] = args.gain
    elif method == "gradient":
        out.update(steps=args.steps, lr=args.lr)
        if args.target_prob is not None:
            out["target_prob"] = args.target_prob
    return out


def print_frame(title: str, frame) -> None:
    import pandas as pd

    print(f"\n{title}")
    if frame is None or len(frame) == 0:
        print("  (nothing to show: no query was kept)")
        return
    with pd.option_context("display.max_columns", 30, "display.width", 200, "display.float_format", "{:+.3f}".format):
        print(frame)


def evaluation_facts(args, run):
    """The facts of a run, read from ``--data`` or the run's own data file (recorded absolute).

    A recorded relative path (runs of lakn 0.1) is read from the current folder; when it is not
    there the error says so. Facts whose records changed since the run (their hash differs from the
    one stored with the fact's files), or that the data no longer holds, are named in a warning.
    """
    from ..facts import DEMO_SETS, data_sha256, fact_sha256, load_facts

    recorded = run.config.get("data") or "demo"
    data = args.data or recorded
    if data not in DEMO_SETS:
        path = absolute_path(data)
        if args.data is None and not os.path.exists(path):
            raise FileNotFoundError(f"the run's data file {data} is not found (from {os.getcwd()}); pass --data FILE")
        data = path
    facts = load_facts(data)
    ids = set(run.fact_ids)
    chosen = [f for f in facts if f.fact_id in ids]
    missing = len(ids) - len(chosen)
    if missing:
        _warn(f"{missing} of the run's {len(ids)} facts are not in {data}; they are left out")
    # a run localised with --known hashed its facts after the known filter: compare like with like
    views = [{f.fact_id: f for f in chosen}]
    known = run.config.get("known")
    if known and os.path.exists(known):
        from ..known import filter_known

        for langs in (None, run.languages):
            views.append({f.fact_id: f for f in filter_known(chosen, known, languages=langs, min_languages=None)})
    changed = [f.fact_id for f in chosen if run.records[f.fact_id].fact_sha256
               and all(f.fact_id not in v or run.records[f.fact_id].fact_sha256 != fact_sha256(v[f.fact_id])
                       for v in views)]
    digest = run.config.get("data_sha256")
    if changed:
        _warn(f"{len(changed)} fact(s) changed in {data} since the run localised them (used as they are now): "
              + ", ".join(changed[:5]) + (" ..." if len(changed) > 5 else ""))
    elif digest and data == recorded and data_sha256(data) != digest:
        _warn(f"data file {data} changed since the run (SHA-256 {digest[:12]}... -> {data_sha256(data)[:12]}...)")
    return chosen, data


def _warn(text: str) -> None:
    print(f"lakn: warning: {text}", file=sys.stderr)
