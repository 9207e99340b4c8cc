"""The `snnet-ray` command.

Each package that offers commands has a `commands.py` with `register(subparsers)`; it adds its
sub-commands with argparse only and imports torch, Ray or DeepSpeed inside the handlers, so
`snnet-ray --help` stays fast. A handler returns an exit code (or None for 0).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

__all__ = ["build_parser", "main"]

# Order is the order of `snnet-ray --help`; a module that does not exist yet is skipped.
COMMAND_MODULES = (
    "snnet_ray.stitching.commands",
    "snnet_ray.data.commands",
    "snnet_ray.train.commands",
    "snnet_ray.eval.commands",
    "snnet_ray.results.commands",
    "snnet_ray.deploy.commands",
    "snnet_ray.serve.commands",
    "snnet_ray.tune.commands",
    "snnet_ray.submit.commands",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="snnet-ray",
        description="Stitchable Neural Networks (SN-Net) trained on Ray with DeepSpeed.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name is None or not name.startswith(err.name):  # a missing dependency, not the module
                raise
            continue
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        code = args.handler(args)
    except (ValueError, FileNotFoundError) as err:
        # User errors (bad anchors, missing files, invalid config) are explained, not traced.
        print(f"snnet-ray {args.command}: error: {err}", file=sys.stderr)
        return 2
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
