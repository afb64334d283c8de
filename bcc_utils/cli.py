"""Command line: ``python -m bcc_utils <command> …`` — the same code the notebooks call.

Each area of the library owns its commands in a small ``*cli`` module with a
``register(subparsers)`` function; handlers import heavy libraries lazily so
that ``python -m bcc_utils --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings
from contextlib import contextmanager

#: Modules that contribute subcommands (each defines ``register(subparsers)``).
COMMAND_MODULES: tuple[str, ...] = (
    "bcc_utils.data.cli",  # audit, split, download
    "bcc_utils.series",  # series (run the notebooks headless)
    "bcc_utils.train_cli",  # train, evaluate, predict
    "bcc_utils.bench",  # bench pipeline, bench latency
    "bcc_utils.export",  # export (ONNX + sidecar)
    "bcc_utils.explain_cli",  # explain (class activation maps and their share on the cell)
    "bcc_utils.corruptions_cli",  # robustness (accuracy under corruptions)
)


@contextmanager
def warnings_to_stderr():
    """Print warnings raised inside the block as plain ``warning: …`` lines (deprecations dropped)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        finally:
            for w in caught:
                if not issubclass(w.category, (DeprecationWarning, FutureWarning)):
                    print(f"warning: {w.message}", file=sys.stderr)


def positive_int(text: str) -> int:
    """``argparse`` type: an integer >= 1 (argparse turns the error into one usage line)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser with every registered subcommand."""
    parser = argparse.ArgumentParser(
        prog="python -m bcc_utils",
        description="Blood cell classification (PBC dataset): data audit, leak-free split, training, evaluation.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen command; return its exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        status = args.func(args)
    except (OSError, ValueError, RuntimeError) as exc:  # clear one-line errors for users
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(status or 0)


if __name__ == "__main__":
    raise SystemExit(main())
