"""`rayzero` command line.

    rayzero run [RECIPE] [section.field=value ...]   run a recipe (default: tiny)
    rayzero recipes                                  list shipped recipes
    rayzero config [RECIPE] [overrides ...]          print the resolved config
"""

from __future__ import annotations

import argparse
import sys

import yaml

from pipelines.config import ConfigError, list_recipes, load_config, to_dict


def _split(args: list[str]) -> tuple[str, list[str]]:
    if args and "=" not in args[0]:
        return args[0], args[1:]
    return "tiny", args


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rayzero", description="R1-Zero-style post-training on Ray")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_run = sub.add_parser("run", help="run a recipe: SFT -> GRPO -> distillation")
    p_run.add_argument("args", nargs="*", metavar="[RECIPE] [section.field=value]")
    sub.add_parser("recipes", help="list shipped recipes")
    p_cfg = sub.add_parser("config", help="print the resolved config of a recipe")
    p_cfg.add_argument("args", nargs="*", metavar="[RECIPE] [section.field=value]")
    ns = parser.parse_args(argv)

    from cluster.runtime import ClusterError
    from pipelines.tasks import TaskDataError

    try:
        if ns.cmd == "recipes":
            print("\n".join(list_recipes()))
            return 0
        recipe, overrides = _split(ns.args)
        cfg = load_config(recipe, overrides)
        if ns.cmd == "config":
            print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
            return 0
        from pipelines.driver import run_pipeline

        run_pipeline(cfg)
        return 0
    except (ConfigError, TaskDataError, ClusterError) as e:
        print(f"rayzero: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
