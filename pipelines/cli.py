"""`rayzero` command line.

    rayzero run [RECIPE] [section.field=value ...]   run a recipe (default: tiny)
    rayzero recipes                                  list shipped recipes
    rayzero config [RECIPE] [overrides ...]          print the resolved config
    rayzero submit / jobs / cluster render           remote Ray clusters (pipelines/jobs_cli.py)
    rayzero eval CHECKPOINT [TASK] [overrides ...]   held-out accuracy with test-time scaling
    rayzero publish STAGE_DIR --to DIR|hf://ORG/NAME[@REV] [--overwrite]   (pipelines/publish.py)
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
    from pipelines import jobs_cli

    jobs_cli.add_parsers(sub)
    from pipelines import publish

    publish.add_parser(sub)
    p_eval = sub.add_parser("eval", help="evaluate a checkpoint: pass@1/pass@k/maj@k and test-time scaling")
    p_eval.add_argument("checkpoint")
    p_eval.add_argument("args", nargs="*", metavar="[TASK] [section.field=value]")
    p_eval.add_argument("--out", default="", help="also write the results as JSON here")
    ns = parser.parse_args(argv)

    from cluster.runtime import ClusterError
    from pipelines.tasks import TaskDataError

    try:
        if ns.cmd in jobs_cli.COMMANDS:
            return jobs_cli.run(ns, argv)
        if ns.cmd == "publish":
            return publish.main(ns)
        if ns.cmd == "recipes":
            print("\n".join(list_recipes()))
            return 0
        if ns.cmd == "eval":
            from pipelines.evaluate import eval_command

            return eval_command(ns.checkpoint, ns.args, ns.out)
        recipe, overrides = _split(ns.args)
        cfg = load_config(recipe, overrides)
        if ns.cmd == "config":
            print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
            return 0
        from pipelines.driver import run_pipeline

        run_pipeline(cfg)
        return 0
    except (ConfigError, TaskDataError, ClusterError, publish.PublishError) as e:
        print(f"rayzero: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
