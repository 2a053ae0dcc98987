"""The stage registry: a stage registered from outside the package runs before `eval`, brings its own config
section (a YAML key of its name, `cfg.<name>`, its bounds and rules checked at load, written back by to_dict),
and a second stage of a taken name is refused. (tests/e2e/test_extensions.py runs one in the pipeline.)"""

from dataclasses import dataclass

import pytest

from pipelines.config import ConfigError, load_config, to_dict
from pipelines.config.loading import from_dict
from pipelines.stages import STAGES, Resources, Stage, names, register, stage_named, unregister


@dataclass(frozen=True)
class ProbeSection:
    enabled: bool = False
    rounds: int = 1


class ProbeStage(Stage):
    name = "probe"
    section = ProbeSection
    positive = ("rounds",)

    def check_config(self, cfg):
        from pipelines.config.checks import fail

        if cfg.probe.rounds > 9:
            fail("probe.rounds", cfg.probe.rounds, "must be <= 9")

    def resources(self, cfg):
        return Resources.single(self.name, 1.0)


@pytest.fixture
def probe():
    stage = register(ProbeStage())
    yield stage
    unregister("probe")


def test_a_registered_stage_runs_before_eval_and_leaves_the_registry_as_found(probe):
    assert names()[-2:] == ("probe", "eval") and stage_named("probe") is probe
    assert register(ProbeStage()) is not probe and names().count("probe") == 1  # a module imported again
    assert probe.fields() == ("probe.gpus", "probe.cpus") and probe.card_text == "" and probe.flops({}) is None
    unregister("probe")
    assert "probe" not in names() and names()[-1] == "eval" and len(STAGES) == len(set(names()))


def test_a_second_stage_of_a_taken_name_is_refused():
    class Impostor(ProbeStage):
        name = "grpo"

    with pytest.raises(ValueError, match="stage 'grpo' is registered twice"):
        register(Impostor())
    assert type(stage_named("grpo")).__name__ == "GRPOStage"


def test_its_section_is_read_checked_and_written_like_the_schemas(probe):
    cfg = load_config("micro", ["probe.enabled=true", "probe.rounds=3"])
    assert cfg.probe == ProbeSection(True, 3) and probe.enabled(cfg)
    assert load_config("micro").probe == ProbeSection()  # not in the recipe: its defaults
    written = to_dict(cfg)
    assert written["probe"] == {"enabled": True, "rounds": 3} and "extra" not in written
    assert from_dict(written) == cfg  # a run's config.yaml reads back the same
    for overrides, message in ((["probe.enabled=true", "probe.rounds=0"], "probe.rounds=0: must be > 0"),
                               (["probe.enabled=true", "probe.rounds=12"], "probe.rounds=12: must be <= 9"),
                               (["probe.round=2"], "unknown field 'probe.round' (did you mean probe.rounds?)")):
        with pytest.raises(ConfigError) as e:
            load_config("micro", overrides)
        assert message in str(e.value), str(e.value)
    load_config("micro", ["probe.rounds=12"])  # its rules apply only while it is enabled


def test_without_the_stage_its_section_is_unknown():
    with pytest.raises(ConfigError, match="unknown field 'probe'"):
        load_config("micro", ["probe.rounds=2"])


def test_the_interrupt_line_says_what_the_stage_keeps():
    from pipelines.driver import _resume_hint

    cfg = load_config("micro", ["grpo.save_steps=1"])
    assert _resume_hint(cfg, stage_named("grpo")) == (
        "interrupted during stage grpo; finished stages are kept; GRPO resumes from its last checkpoint (every 1 "
        "steps). Run the same command again to resume.")
    assert _resume_hint(cfg, stage_named("sft")) == (
        "interrupted during stage sft; finished stages are kept. Run the same command again to resume.")
