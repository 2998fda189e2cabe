"""The ``lakn`` command line: ``lakn localize``, ``plot``, ``evaluate``, ``edit``, ``inject``, ``data build``,
``data known``, ``report`` (and ``python -m lakn``).

One module per command group, each with a ``register`` function that adds its parser and its
handler; the ``localize`` options come from :class:`lakn.config.RunConfig`. Errors from bad input
are printed as one line (``lakn: error: ...``) with exit status 2. Renamed options (``--facts``,
``--queries``) still work for one release, with a warning on stderr.
"""

from __future__ import annotations

import argparse
import sys

from .._deprecation import deprecated_names
from . import data, edit, evaluate, inject, localize, plot, report

__all__ = ["main", "build_parser"]

__getattr__ = deprecated_names(__name__, {
    "register_localize": "lakn.cli.localize:register", "register_plot": "lakn.cli.plot:register",
    "register_evaluate": "lakn.cli.evaluate:register", "register_edit": "lakn.cli.edit:register",
    "register_inject": "lakn.cli.inject:register",
})

REGISTER = [localize.register, plot.register, evaluate.register, edit.register, inject.register, data.register,
            report.register]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lakn", description="Language-agnostic knowledge neurons.")
    sub = parser.add_subparsers(dest="command", required=True)
    for register in REGISTER:
        register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from ..config import RunConfigError
    from ..facts import FactsError
    from ..models import ModelLoadError

    try:
        return int(args.handler(args) or 0)
    except (FactsError, RunConfigError, ModelLoadError, FileNotFoundError, ValueError) as err:
        parser.exit(2, f"lakn: error: {err}\n")
    except KeyboardInterrupt:
        parser.exit(130, "lakn: interrupted; finished facts are kept, run the same command again to resume\n")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
