import pytest

from pipelines.config import ConfigError, PipelineConfig, list_recipes, load_config


@pytest.mark.parametrize("recipe", list_recipes())
def test_every_shipped_recipe_loads_and_starts_with_its_command(recipe):
    cfg = load_config(recipe)
    assert isinstance(cfg, PipelineConfig)
    from pipelines.config import recipe_path

    first = recipe_path(recipe).read_text().splitlines()[0]
    assert first == f"# rayzero run {recipe}", "a recipe starts with the command that runs it"


def test_smollm2_recipe_evaluates_grpo_on_a_fixed_heldout_set_every_quarter():
    cfg = load_config("smollm2-135m")  # every rule checked at load
    assert cfg.task.num_heldout >= 300
    g = cfg.grpo
    assert g.eval_every == 0 or 0 < g.eval_every <= g.max_steps / 4, "GRPO's held-out curve: at least every quarter"


def test_tiny_is_the_default_and_overrides_apply():
    cfg = load_config("tiny", ["grpo.num_generations=4", "sft.learning_rate=3e-4", "run.name=x",
                               "grpo.rewards={math_accuracy: 1.0}", "distill.students.student.hidden_size=48"])
    assert cfg.grpo.num_generations == 4
    assert cfg.sft.learning_rate == pytest.approx(3e-4)
    assert cfg.run.name == "x"
    assert dict(cfg.grpo.rewards) == {"math_accuracy": 1.0}
    assert cfg.distill.students["student"].hidden_size == 48
    assert cfg.distill.students["student"].num_layers == 3  # the rest of the nested section keeps the recipe's values


def test_int_is_accepted_where_float_is_expected():
    assert load_config("tiny", ["grpo.learning_rate=1"]).grpo.learning_rate == 1.0


@pytest.mark.parametrize("override, words", [
    ("grpo.num_generation=8", ["grpo.num_generation", "num_generations", "valid fields"]),
    ("grpo.num_generations=eight", ["grpo.num_generations", "integer", "eight"]),
    ("nosuch.x=1", ["nosuch", "valid fields", "grpo"]),
    ("grpo.loss_type=ppo", ["grpo.loss_type", "dapo", "dr_grpo"]),
    ("grpo.rewards={nope: 1.0}", ["nope", "math_accuracy"]),
    ("sft.enabled=maybe", ["sft.enabled", "true/false"]),
    ("grpo.num_generations=1", ["num_generations", ">= 2"]),
    ("grpo", ["section.field=value"]),
])
def test_bad_overrides_name_the_field(override, words):
    with pytest.raises(ConfigError) as err:
        load_config("tiny", [override])
    for w in words:
        assert w in str(err.value)


def test_missing_recipe_lists_the_shipped_ones():
    with pytest.raises(ConfigError) as err:
        load_config("nosuch")
    assert "nosuch" in str(err.value) and "tiny" in str(err.value)


def test_configs_are_frozen():
    cfg = load_config("tiny")
    with pytest.raises(Exception):
        cfg.grpo.max_steps = 3  # type: ignore[misc]


def test_cli_errors_are_one_line_and_exit_2(cli, tmp_path):
    for args, needle in ((["run", "nosuch"], "recipe 'nosuch' not found"),
                         (["run", "tiny", "grpo.bogus=1"], "unknown field 'grpo.bogus'")):
        res = cli(*args, cwd=tmp_path, timeout=120)
        assert res.returncode == 2
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0], res.stderr
    assert not (tmp_path / "runs").exists(), "a bad config fails before any work"


def test_cli_config_prints_the_resolved_config(cli, tmp_path):
    res = cli("config", "micro", "grpo.max_steps=7", cwd=tmp_path, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "max_steps: 7" in res.stdout


def test_bad_dataset_row_is_one_line_and_keeps_existing_runs(cli, tmp_path):
    data = tmp_path / "rows.jsonl"
    rows = ['{"prompt": "%d+1?", "answer": "%d", "completion": "<think>%d+1=%d.</think><answer>%d</answer>"}\n'
            % (i, i + 1, i, i + 1, i + 1) for i in range(40)]
    rows[1] = '{"prompt": "2+2?"}\n'  # 1 of 40 rows without an answer: above task.max_bad_fraction
    data.write_text("".join(rows))
    earlier = tmp_path / "runs" / "earlier" / "sft"
    earlier.mkdir(parents=True)
    (earlier / "manifest.json").write_text("{}")
    res = cli("run", "micro", "run.name=bad", "task.name=jsonl", f"task.path={data}", cwd=tmp_path, timeout=120)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and str(data) in lines[0] and "row 2" in lines[0] and "'answer'" in lines[0], res.stderr
    assert (earlier / "manifest.json").read_text() == "{}", "nothing already written is lost"
    assert not list((tmp_path / "runs" / "bad").glob("*")), "a run that fails on its data writes nothing"


def test_factory_reward_parameters_come_from_the_recipe():
    from rewards.registry import build_rewards

    cfg = load_config("tiny", ["grpo.rewards={math_accuracy: 1.0, repetition_penalty: 0.5}",
                               "grpo.reward_params={repetition_penalty: {ngram_size: 2}}"])
    fns, weights = build_rewards(dict(cfg.grpo.rewards), {k: dict(v) for k, v in cfg.grpo.reward_params.items()})
    assert weights == [1.0, 0.5]
    # A 2-gram penalty fires on "a b a b" where the default 3-gram one would see fewer repeats.
    assert fns[1](["a b a b a b"])[0] < 0
    with pytest.raises(ConfigError, match="reward_params.code_accuracy"):
        load_config("tiny", ["grpo.reward_params={code_accuracy: {ray_actors: 2}}"])
