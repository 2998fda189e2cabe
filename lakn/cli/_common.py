"""What the command groups share: option types, generated options, deprecated option names, output."""

from __future__ import annotations

import argparse
import sys
from dataclasses import MISSING
from typing import Any

from ..config import CHOICES, RunConfig, positive_int

__all__ = ["comma_list", "positive_int", "add_run_options", "run_options", "add_deprecated", "add_training_options",
           "print_frame", "evaluation_facts"]


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


def add_training_options(parser: argparse.ArgumentParser, *, language: str, languages: str, steps: int, what: str,
                         preserve: int, preserve_help: str, seed_help: str) -> None:
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
    parser.add_argument("--preserve", type=int, default=preserve, help=f"{preserve_help} (default {preserve})")
    parser.add_argument("--locality-weight", type=float, default=1.0, help="weight of the KL term (default 1)")
    parser.add_argument("--target-prob", type=float, default=None,
                        help="stop once every training query gives the answer this probability (default: run all steps)")
    parser.add_argument("--seed", type=int, default=0, help=seed_help)


def print_frame(title: str, frame) -> None:
    import pandas as pd

    print(f"\n{title}")
    if frame is None or len(frame) == 0:
        print("  (nothing to show: no query was kept)")
        return
    with pd.option_context("display.max_columns", 30, "display.width", 200, "display.float_format", "{:+.3f}".format):
        print(frame)


def evaluation_facts(args, run):
    """The facts of a run, read from ``--data`` or the run's own data file."""
    from ..facts import load_facts

    data = args.data or run.config.get("data") or "demo"
    facts = load_facts(data)
    ids = set(run.fact_ids)
    return [f for f in facts if f.fact_id in ids], data
