"""`rayzero` command line.

    rayzero run [RECIPE] [section.field=value ...]   run a recipe (default: tiny)
    rayzero recipes                                  list shipped recipes
    rayzero config [RECIPE] [overrides ...]          print the resolved config
    rayzero eval CHECKPOINT [--task T] [--limit N] [overrides ...] [--benchmark NAME] [--out F]   (eval_cli.py)
    rayzero publish STAGE_DIR --to DIR|hf://ORG/NAME[@REV] [--overwrite] [--adapter]   (publish/publish.py)
    rayzero submit / jobs / cluster render|plan      remote Ray clusters, and where a recipe's actors land (remote/)

Every subcommand is declared the same way: a module with `add_parser(subparsers)` and `run(args)`, named in
`commands()`. Every expected failure (a bad recipe, bad data, a busy run folder, a cluster that is too small) ends with
one line `rayzero: error: ...` and exit status 2, before any work where it can be known in advance.
"""

from __future__ import annotations

import argparse
import sys
from types import ModuleType

import yaml

from pipelines.config import ConfigError, list_recipes, load_config, to_dict


def _split(args: list[str]) -> tuple[str, list[str]]:
    if args and "=" not in args[0]:
        return args[0], args[1:]
    return "tiny", args


class Intermixed(argparse.ArgumentParser):
    """Options may sit between positionals (`eval CKPT --limit 3 eval.samples=4`, `cluster render k8s --recipe
    micro grpo.x=1 --gpus 2`); a parser with subcommands of its own parses as usual (argparse cannot mix those)."""

    _inner = False

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        if self._inner or any(a.nargs == argparse.PARSER for a in self._get_positional_actions()):
            return super().parse_known_args(args, namespace)
        self._inner = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._inner = False


def commands() -> dict[str, ModuleType]:
    """Every `rayzero` subcommand -> the module that declares it, in `rayzero --help` order.

    A command module has `add_parser(subparsers)`, which adds its subcommands (each with a one-line `help`)
    and their arguments, and `run(args) -> exit status`; it raises the errors `main` turns into one line.
    A new command is such a module and its names here (tests/unit/test_cli.py checks every one has help)."""
    from pipelines import eval_cli
    from pipelines.publish import publish
    from pipelines.remote import jobs_cli

    this = sys.modules[__name__]
    return {"run": this, "recipes": this, "config": this, "eval": eval_cli, "publish": publish,
            "submit": jobs_cli, "jobs": jobs_cli, "cluster": jobs_cli}


def parser() -> argparse.ArgumentParser:
    table = commands()
    top = argparse.ArgumentParser(prog="rayzero", description="R1-Zero-style post-training on Ray")
    sub = top.add_subparsers(dest="cmd", required=True, metavar="COMMAND", parser_class=Intermixed)
    for module in dict.fromkeys(table.values()):
        module.add_parser(sub)
    if set(sub.choices) != set(table):
        raise RuntimeError(f"pipelines.cli.commands() and the command modules disagree: {sorted(set(sub.choices) ^ set(table))}")
    return top


def add_parser(sub: argparse._SubParsersAction) -> None:
    """This module's own commands: running a recipe and looking at recipes."""
    p_run = sub.add_parser("run", help="run a recipe: SFT -> GRPO -> distillation -> eval")
    p_run.add_argument("args", nargs="*", metavar="[RECIPE] [section.field=value]")
    sub.add_parser("recipes", help="list the shipped recipes")
    p_cfg = sub.add_parser("config", help="print the resolved config of a recipe")
    p_cfg.add_argument("args", nargs="*", metavar="[RECIPE] [section.field=value]")


def run(ns: argparse.Namespace) -> int:
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


def main(argv: list[str] | None = None) -> int:
    from cluster.runtime import ClusterError
    from pipelines.driver import RunInterrupted
    from pipelines.publish.publish import PublishError
    from pipelines.run_folder import RunFolderError
    from pipelines.stages import StageError
    from pipelines.tasks import TaskDataError

    args = sys.argv[1:] if argv is None else argv
    ns = parser().parse_args(args)
    ns.argv = list(args)  # the command line as given (`cluster render` writes it into what it renders)
    try:
        return commands()[ns.cmd].run(ns)
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
