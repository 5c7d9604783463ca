"""Entry point: parse the command line, dispatch to one command module, turn errors into one line.

Each command lives in ``regraft/cli/<name>.py`` and exposes ``HELP`` (one line),
``add_arguments(parser)`` and ``run(args) -> int``. Command modules must not import torch at
module level: ``regraft --help`` and ``--version`` answer without it.

Every failure a user can cause ends here as one line on stderr and exit status 2: a
:class:`~regraft.errors.RegraftError` from the library, an ``OSError`` the system raised (disk
full, permissions, a path through a file), a usage error from argparse, or an option out of
range (``cli._options``). ``--debug`` (before or after the command) shows the traceback instead.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from regraft._version import __version__

# command name -> module under regraft.cli; order is the order --help lists them in.
# Commands that read image files: they take --max-image-mb (the size cap of data.files).
IMAGE_READERS = frozenset({"train", "eval", "predict", "compare", "lr-find", "scan"})
_MAX_IMAGE_HELP = "refuse image files larger than this many MB before reading them (default 256; env REGRAFT_MAX_IMAGE_MB)"
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
    parser.add_argument("--debug", dest="top_debug", action="store_true", help="show full tracebacks on errors")
    parser.add_argument("-q", "--quiet", dest="top_quiet", action="store_true", help="print less")
    parser.add_argument("--max-image-mb", type=float, metavar="MB", help=_MAX_IMAGE_HELP)
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
        # SUPPRESS: a default here would overwrite the same option given before the command
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks on errors")
        if name in IMAGE_READERS:
            p.add_argument("--max-image-mb", type=float, metavar="MB", default=argparse.SUPPRESS, help=_MAX_IMAGE_HELP)
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main_process() -> bool:
    """Whether this is the main process of a launch (``RANK`` unset or 0: torchrun, accelerate launch)."""
    return os.environ.get("RANK", "0").strip() in ("", "0")


def main(argv: Sequence[str] | None = None) -> int:
    _tolerant_streams()
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    debug = args.top_debug or getattr(args, "debug", False) or os.environ.get("REGRAFT_DEBUG") == "1"
    if args.top_quiet or not main_process():
        args.quiet = True  # under torchrun / accelerate launch only the main process reports
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    from regraft.errors import Interrupted, RegraftError

    prior_cap = os.environ.get("REGRAFT_MAX_IMAGE_MB")
    had_group = _process_group_up()
    try:
        from regraft.cli._options import validate_args

        validate_args(args)
        if getattr(args, "max_image_mb", None) is not None:
            os.environ["REGRAFT_MAX_IMAGE_MB"] = repr(args.max_image_mb)  # also seen by data-loader workers
        return int(args._module.run(args) or 0)
    except Interrupted as exc:
        sys.stderr.write(f"regraft: {_one_line(exc)}\n")
        return 130
    except RegraftError as exc:
        if debug:
            raise
        sys.stderr.write(f"regraft: error: {_one_line(exc)}\n")
        return 2
    except OSError as exc:  # the system refused something the user asked for: disk full, permissions
        if debug:
            raise
        sys.stderr.write(f"regraft: error: {_os_error(exc)}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("regraft: interrupted\n")
        return 130
    finally:  # main() called in-process (a notebook, a test) leaves the caller's environment as it was
        if prior_cap is None:
            os.environ.pop("REGRAFT_MAX_IMAGE_MB", None)
        else:
            os.environ["REGRAFT_MAX_IMAGE_MB"] = prior_cap
        if not had_group and _process_group_up():
            # the command started the process group (under torchrun / accelerate launch): close it
            # before the interpreter exits, where tearing down its threads can abort the process
            sys.modules["torch.distributed"].destroy_process_group()


def _process_group_up() -> bool:
    """Whether torch.distributed's default process group exists (without importing torch)."""
    dist = sys.modules.get("torch.distributed")
    return bool(dist is not None and dist.is_available() and dist.is_initialized())


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()).strip() or type(exc).__name__


_OS_HINTS = {
    errno.ENOSPC: "free some space or choose another folder",
    errno.EDQUOT: "free some space or choose another folder",
    errno.EACCES: "check the permissions",
    errno.EPERM: "check the permissions",
    errno.EROFS: "choose a folder on a writable disk",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EISDIR: "it is a folder, not a file",
    errno.ENOENT: "check the path",
    errno.ENAMETOOLONG: "choose a shorter path",
    errno.EMFILE: "too many open files: raise the limit (ulimit -n) or use fewer --workers",
}


def _os_error(exc: OSError) -> str:
    where = f" {exc.filename}" if exc.filename else ""
    hint = _OS_HINTS.get(exc.errno or 0, "check the path and the disk")
    what = exc.strerror or next(iter(str(exc).strip().splitlines()), "")[:200] or type(exc).__name__
    return _one_line(f"{what}:{where}; {hint}")


def _tolerant_streams() -> None:
    """Print file names that are not valid UTF-8 (or not encodable here) escaped, never crash on them."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            with contextlib.suppress(ValueError, OSError):
                reconfigure(errors="backslashreplace")


if __name__ == "__main__":
    raise SystemExit(main())
