"""Entry point: parse the command line, dispatch to one command module, turn errors into one line.

Each command lives in ``regraft/cli/<name>.py`` and exposes ``HELP`` (one line),
``add_arguments(parser)`` and ``run(args) -> int``. Command modules must not import torch at
module level: ``regraft --help`` and ``--version`` answer without it.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from regraft._version import __version__

# command name -> module under regraft.cli; order is the order --help lists them in.
COMMANDS: dict[str, str] = {
    "train": "train",
    "eval": "evaluate",
    "predict": "predict",
    "compare": "compare",
    "lr-find": "lr_find",
    "inspect": "inspect",
    "scan": "scan",
    "export": "export",
    "models": "models",
    "demo": "demo",
}


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        prog = self.prog
        sys.stderr.write(f"{prog}: error: {message} (see '{prog} --help')\n")
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="regraft",
        description="Fine-tune pretrained image classifiers: load weights from anywhere, "
        "graft a new head, freeze what should stay frozen, train, evaluate, export.",
        epilog="Run 'regraft COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"regraft {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    parser.add_argument("-q", "--quiet", action="store_true", help="print less")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, module_name in COMMANDS.items():
        try:
            module = importlib.import_module(f"regraft.cli.{module_name}")
        except ModuleNotFoundError as exc:  # a command not built yet in this checkout
            if exc.name != f"regraft.cli.{module_name}":
                raise
            continue
        p = sub.add_parser(
            name,
            help=module.HELP,
            description=getattr(module, "DESCRIPTION", module.HELP),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    debug = args.debug or os.environ.get("REGRAFT_DEBUG") == "1"
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    from regraft.errors import Interrupted, RegraftError

    try:
        return int(args._module.run(args) or 0)
    except Interrupted as exc:
        sys.stderr.write(f"regraft: {exc}\n")
        return 130
    except RegraftError as exc:
        if debug:
            raise
        message = " ".join(str(exc).split("\n")).strip()
        sys.stderr.write(f"regraft: error: {message}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("regraft: interrupted\n")
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
