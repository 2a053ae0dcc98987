"""A stage is one file, and so is a task: a throwaway stage and a throwaway task, each written to a temporary
module and registered at test time (pipelines.stages.register, pipelines.tasks.register), run in the micro
pipeline and show up in report.json, report.md and the published model card, with no other file of the
project touched. One run serves both (SFT on the throwaway task, then the throwaway stage; the rest off)."""

import importlib
import json
import os
import sys
import textwrap
from pathlib import Path

import pytest
import ray
import yaml

from tests.unit.test_tasks_registry import MODULE as DOUBLING_TASK

STAGE = '''
"""`echo`: a throwaway stage that keeps the checkpoint it starts from and reports what it was given."""
import shutil
from dataclasses import dataclass

from pipelines.stages import Resources, Stage, register


@dataclass(frozen=True)
class EchoSection:  # the YAML section `echo:`, read as cfg.echo
    enabled: bool = True
    factor: float = 1.0


class EchoStage(Stage):
    name = "echo"
    section = EchoSection
    positive = ("factor",)
    reported = ("echo_factor",)
    card_tags = ("echo-tag",)
    card_text = "an echo of the SFT checkpoint, unchanged"

    def check_config(self, cfg):
        from pipelines.config.checks import fail

        if cfg.echo.factor > 100:
            fail("echo.factor", cfg.echo.factor, "must be <= 100")

    def resources(self, cfg):
        return Resources.single(self.name, 0.0)

    def run(self, cfg, ctx):  # on the driver: nothing to train, the checkpoint it starts from is its own
        shutil.copytree(ctx.init, ctx.out_dir, dirs_exist_ok=True, ignore=shutil.ignore_patterns("manifest.json"))
        sft = ctx.earlier["sft"]
        return {"accuracy": sft["accuracy"], "params": sft["params"], "echo_factor": cfg.echo.factor}

    def flops(self, m):
        return 1000.0 * m["echo_factor"]

    def summary(self, results):
        return {"echo_factor_seen": results["echo"]["echo_factor"]} if "echo" in results else {}

    def report_tables(self, stages):
        m = stages["echo"]
        return [("echo: what it was given", [("field", "value"), ("factor", f"{m['echo_factor']:g}")])]


STAGE = register(EchoStage())
'''


@pytest.fixture(scope="module")
def extended(tmp_path_factory):
    """The throwaway modules registered, on the path of this process and of Ray's workers (which unpickle the
    config holding the stage's section)."""
    from pipelines.stages import unregister
    from pipelines.tasks import registry

    where = tmp_path_factory.mktemp("extensions")
    (where / "echo_stage.py").write_text(textwrap.dedent(STAGE))
    (where / "doubling_task.py").write_text(textwrap.dedent(DOUBLING_TASK))
    old_path, old_env = list(sys.path), os.environ.get("PYTHONPATH")
    sys.path.insert(0, str(where))
    os.environ["PYTHONPATH"] = os.pathsep.join([str(where), *([old_env] if old_env else [])])
    try:
        yield importlib.import_module("echo_stage").STAGE, importlib.import_module("doubling_task").TASK, where
    finally:
        unregister("echo")  # the registries are process-wide: leave them as the other tests see them
        registry._TASKS.pop("doubling", None)
        for name in ("echo_stage", "doubling_task"):
            sys.modules.pop(name, None)
        sys.path[:] = old_path
        if old_env is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old_env


@pytest.fixture(scope="module")
def run(extended):
    from pipelines.config import load_config
    from pipelines.driver import run_pipeline

    where = extended[2]
    cfg = load_config("micro", [
        f"run.output_dir={where / 'runs'}", "run.num_cpus=2", "run.wandb_mode=disabled",
        "task.name=doubling", "task.params={max_n: 120}", "task.num_cold_start=48", "task.num_train=8",
        "task.num_heldout=8", "sft.epochs=2", "grpo.enabled=false", "distill.enabled=false",
        "echo.factor=2.5", "publish.enabled=true", f"publish.to={where / 'published'}", "publish.stage=echo",
    ])
    log: list[str] = []
    try:
        report = run_pipeline(cfg, say=log.append)
    finally:
        ray.shutdown()
    return cfg, report, "\n".join(log), where / "published"


def test_a_stage_from_its_own_module_runs_and_is_reported_and_carded(run):
    cfg, report, log, published = run
    assert cfg.echo.factor == 2.5 and report["config"]["echo"] == {"enabled": True, "factor": 2.5}
    assert "[2/2] echo: running" in log  # after SFT, before eval (off here): the registry's order
    echo = report["stages"]["echo"]
    assert echo["accuracy"] == report["stages"]["sft"]["accuracy"] and echo["flops"] == 2500.0  # its own FLOPs rule
    assert echo["echo_factor"] == 2.5  # a metric of its own it keeps in report.json
    assert report["summary"]["echo_factor_seen"] == 2.5
    md = (cfg.run_dir / "report.md").read_text()
    assert "## echo: what it was given" in md and "| factor | 2.5 |" in md and "| echo |" in md
    manifest = json.loads((cfg.run_dir / "echo" / "manifest.json").read_text())
    assert manifest["stage"] == "echo" and manifest["inputs"]["init"]  # it started from SFT's checkpoint
    card = (published / "README.md").read_text()
    assert "stage `echo`: an echo of the SFT checkpoint, unchanged." in card
    tags = yaml.safe_load(card.split("---")[1])["tags"]
    assert "echo-tag" in tags and "sft" not in tags  # its own tags, not another stage's
    assert "| **echo** |" in card  # the card's results table, this checkpoint in bold


def test_a_task_from_its_own_module_trains_and_is_reported_and_carded(run):
    cfg, report, log, published = run
    assert report["config"]["task"]["name"] == "doubling" and report["config"]["task"]["params"] == {"max_n": 120}
    assert "data: cold_start=48, train=8, heldout=8" in log
    heldout = [json.loads(line) for line in (cfg.run_dir / "data" / "heldout.jsonl").read_text().splitlines()]
    assert all(r["prompt"].startswith("What is twice ") for r in heldout)  # the task's own rows were trained on
    assert 0.0 <= report["stages"]["sft"]["accuracy"] <= 1.0
    card = (published / "README.md").read_text()
    assert yaml.safe_load(card.split("---")[1])["datasets"] == ["doubling"]  # the task's own name
    assert "What is twice" in card  # the Use section asks one of the task's held-out questions
