"""`rayzero` command line.

    rayzero run [RECIPE] [section.field=value ...]   run a recipe (default: tiny)
    rayzero recipes                                  list shipped recipes
    rayzero config [RECIPE] [overrides ...]          print the resolved config
    rayzero eval CHECKPOINT [--task T] [--limit N] [overrides ...] [--benchmark NAME] [--out F]   (eval_cli.py)
    rayzero publish STAGE_DIR --to DIR|hf://ORG/NAME[@REV] [--overwrite] [--adapter]   (publish/publish.py)
    rayzero submit / jobs / cluster render|plan      remote Ray clusters, and where a recipe's actors land (remote/)

Every expected failure (a bad recipe, bad data, a busy run folder, a cluster that is too small) ends with
one line `rayzero: error: ...` and exit status 2, before any work where it can be known in advance.
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


def _parser() -> argparse.ArgumentParser:
    from pipelines.remote import jobs_cli
    from pipelines.publish import publish

    parser = argparse.ArgumentParser(prog="rayzero", description="R1-Zero-style post-training on Ray")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_run = sub.add_parser("run", help="run a recipe: SFT -> GRPO -> distillation")
    p_run.add_argument("args", nargs="*", metavar="[RECIPE] [section.field=value]")
    sub.add_parser("recipes", help="list shipped recipes")
    p_cfg = sub.add_parser("config", help="print the resolved config of a recipe")
    p_cfg.add_argument("args", nargs="*", metavar="[RECIPE] [section.field=value]")
    jobs_cli.add_parsers(sub)
    publish.add_parser(sub)
    from pipelines import eval_cli

    eval_cli.add_arguments(sub.add_parser("eval", help="evaluate a checkpoint: pass@1/pass@k/maj@k, test-time "
                                                       "scaling, benchmarks"))
    return parser


def main(argv: list[str] | None = None) -> int:
    from cluster.runtime import ClusterError
    from pipelines.driver import RunInterrupted
    from pipelines.remote import jobs_cli
    from pipelines.publish.publish import PublishError
    from pipelines.run_folder import RunFolderError
    from pipelines.stages import StageError
    from pipelines.tasks import TaskDataError

    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["eval"]:  # options and overrides in any order: its own (intermixed) parser
        from pipelines.eval_cli import main as eval_main

        return eval_main(args[1:])
    ns = _parser().parse_args(args)
    try:
        if ns.cmd in jobs_cli.COMMANDS:
            return jobs_cli.run(ns, argv)
        if ns.cmd == "publish":
            from pipelines.publish.publish import main as publish_main

            return publish_main(ns)
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
    except (ConfigError, TaskDataError, ClusterError, PublishError, RunFolderError, StageError) as e:
        print(f"rayzero: error: {e}", file=sys.stderr)
        return 2
    except RunInterrupted as e:
        print(f"rayzero: {e}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("rayzero: interrupted; nothing finished was lost. Run the same command again to resume.", file=sys.stderr)
        return 130
    except Exception:  # a bug or an unforeseen failure: its traceback follows, and Ray's logs stay for it
        from cluster.runtime import keep_session_logs

        kept = keep_session_logs()
        if kept:
            print(f"rayzero: Ray's logs of this run are kept in {kept}/logs", file=sys.stderr)
        raise


if __name__ == "__main__":
    sys.exit(main())
