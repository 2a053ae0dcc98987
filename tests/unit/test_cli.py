"""One pattern for every `rayzero` subcommand: `pipelines.cli.commands()` names each one and its module;
`rayzero --help` lists every one with a one-line description, and `rayzero <cmd> [<sub>] --help` works for
each, nested ones included."""

import argparse

import pytest

from pipelines import cli


def _help(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as e:
        cli.main([*argv, "--help"])
    assert e.value.code == 0, argv
    return capsys.readouterr().out


def _leaves(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return [path]
    return [path] * bool(path) + [leaf for name, p in subs[0].choices.items() for leaf in _leaves(p, (*path, name))]


def _groups(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], list[str]]]:
    """(path, subcommand names) of `parser` and of every subcommand that has subcommands of its own."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return []
    return [(path, list(subs[0].choices))] + [g for name, p in subs[0].choices.items() for g in _groups(p, (*path, name))]


def test_help_lists_every_command_on_one_line(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")  # argparse wraps at the terminal's width: an 80-column terminal
    assert list(cli.commands()) == ["run", "recipes", "config", "eval", "publish", "submit", "jobs", "cluster"]
    groups = _groups(cli.parser())
    assert [path for path, _ in groups] == [(), ("jobs",), ("cluster",)]
    for path, names in groups:
        lines = _help(capsys, *path).splitlines()
        for name in names:
            (i,) = [i for i, line in enumerate(lines) if line.split()[:1] == [name]]
            description = lines[i].split(None, 1)[1:]
            assert description and len(description[0].split()) >= 2, f"`{name}` has no one-line description: {lines[i]!r}"
            following = lines[i + 1].split()[:1] if i + 1 < len(lines) else []
            assert following in ([], *([n] for n in names)), f"`{' '.join((*path, name))}`'s help wraps: {lines[i + 1]!r}"


def test_every_command_and_subcommand_answers_help(capsys):
    leaves = _leaves(cli.parser())
    assert {leaf[0] for leaf in leaves} == set(cli.commands())
    assert ("jobs", "logs") in leaves and ("cluster", "plan") in leaves
    for leaf in leaves:
        assert f"usage: rayzero {' '.join(leaf)}" in _help(capsys, *leaf).replace("\n", " ")


def test_a_command_module_the_table_does_not_name_is_refused(monkeypatch):
    """A command module that adds a subcommand missing from the table (or the reverse) fails at once."""
    table = cli.commands()
    monkeypatch.setattr(cli, "commands", lambda: {k: v for k, v in table.items() if k != "jobs"})
    with pytest.raises(RuntimeError, match=r"disagree: \['jobs'\]"):
        cli.parser()


def test_options_and_overrides_mix_in_any_order():
    """Every subcommand takes options between its positionals, nested ones included."""
    ns = cli.parser().parse_args(["eval", "ckpt", "--limit", "3", "eval.samples=4", "--out", "x.json", "task.num_heldout=5"])
    assert (ns.checkpoint, ns.args, ns.limit, ns.out) == ("ckpt", ["eval.samples=4", "task.num_heldout=5"], 3, "x.json")
    ns = cli.parser().parse_args(["cluster", "render", "k8s", "--recipe", "micro", "grpo.x=1", "--gpus", "2", "sft.y=2"])
    assert (ns.kind, ns.overrides, ns.recipe, ns.gpus) == ("k8s", ["grpo.x=1", "sft.y=2"], "micro", 2)
