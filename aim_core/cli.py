"""The `aimfl` command line: thin wrappers over aim_core."""

from __future__ import annotations

import argparse
import json
import sys

from aim_core.config import ConfigError, load_config


def cmd_info(args: argparse.Namespace) -> None:
    from aim_core.counting import model_info

    print(json.dumps(model_info(load_config(args.config, args.overrides)), indent=2))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="aimfl", description="AIM adapters for video, trained centrally or federated")
    commands = parser.add_subparsers(dest="command", required=True)

    info = commands.add_parser("info", help="parameter counts and multiply-adds of a config, as JSON (offline)")
    info.add_argument("config", help="a config file, or a name in configs/ (e.g. k400_clip_vit_b16_8f)")
    info.add_argument("overrides", nargs="*", help="key=value config overrides")
    info.set_defaults(run=cmd_info)

    args = parser.parse_args(argv)
    try:
        args.run(args)
    except ConfigError as err:
        print(f"aimfl: config error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
