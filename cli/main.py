"""The ``zray`` command: ``zray inspect`` (more subcommands arrive with later issues)."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="zray", description="zray cluster tools")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("version", help="print the zray version")
    args = parser.parse_args(argv)
    if args.command == "version":
        from importlib.metadata import version

        print(version("zray"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
