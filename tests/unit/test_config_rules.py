"""Every rule at load, one line naming the field: the clumsy inputs of issue 12 (and the cross-field
rules of the stage sections) are refused by `load_config`, before Ray starts or anything is written."""

import pytest

from pipelines.config import ConfigError, load_config

REFUSED = [
    (["run.name="], "run.name"),
    (["run.name=."], "run.name"),
    (["run.name=.."], "run.name"),
    (["run.name=../../x"], "run.name"),
    (["run.name=a/b"], "run.name"),
    (["run.name=/abs"], "run.name"),
    (["grpo.num_workers=3", "grpo.cpus=0.5"], "must be divisible by num_workers=3"),
    (["grpo.rollout_engine=vllm", "grpo.rollout_workers=1"], "vLLM is not installed"),
    (["grpo.rollout_engine=vllm"], "vLLM is not installed"),  # TRL's in-learner vLLM (no rollout workers)
    (["grpo.rollout_engine=vllm", "grpo.vllm.tensor_parallel_size=2"], "grpo.vllm.tensor_parallel_size=2 must divide"),
    (["grpo.rollout_engine=vllm", "grpo.vllm.sleep_level=1"], "grpo.vllm.sleep_level=1 must be 0 or 2"),
    (["grpo.rollout_engine=vllm", "grpo.vllm.enforce_eager=true"], "grpo.vllm.enforce_eager=True cannot be set"),
    (["grpo.rollout_engine=vllm", "grpo.vllm.mode=server", "grpo.vllm.gpu_memory_utilization=0.8"],
     "grpo.vllm.gpu_memory_utilization=0.8 is set on the server's command line"),
    (["grpo.rollout_engine=vllm", "grpo.vllm.mode=server", "grpo.vllm.server_port=0"], "grpo.vllm.server_port=0"),
    (["grpo.vllm.mode=server"], "grpo.vllm.mode='server': is for TRL's in-learner vLLM"),
    (["grpo.vllm.mode=remote"], "grpo.vllm.mode='remote' is not one of: colocate, server"),
    (["grpo.rewards={}"], "grpo.rewards"),
    (["model.num_heads=7"], "model.num_heads=7"),
    (["sft.batch_size=0"], "sft.batch_size=0"),
    (["grpo.learning_rate=.nan"], "grpo.learning_rate"),
    (["grpo.learning_rate=-1e-4"], "grpo.learning_rate"),
    (["model.vocab_size=5"], "model.vocab_size=5"),
    (["task.num_train=1"], "task.num_train=1"),
    (["task.num_heldout=-1"], "task.num_heldout=-1"),
    (["task.num_cold_start=0"], "task.num_cold_start=0"),
    (["grpo.placement=colocated"], "grpo.rollout_workers"),
    (["grpo.overlap=true"], "grpo.overlap"),
    (["grpo.save_steps=-1"], "grpo.save_steps"),
    (["grpo.dynamic_sampling=true", "grpo.num_workers=4", "grpo.prompts_per_step=2", "grpo.num_generations=4"], "whole groups for dynamic_sampling"),
    (["distill.mixes={m: {long_short: 1.0, teachers: {grpo: 1.0}}}", "grpo.enabled=false"], "teacher 'grpo'"),
    (["distill.students={s: {kind: gguf}}"], "distill.students.s.kind"),
    (["eval.samples=4", "eval.ks=[8]"], "eval.ks"),
    (["grpo.rewards={code_accuracy: 1}", "grpo.reward_params={code_accuracy: {ray_actors: 2}}"], "use workers"),
    (["grpo.rewards={math_accuracy: 1, overlong_penalty: 0.5}", "grpo.reward_params={overlong_penalty: {max_len: 2}}"],
     "unknown parameter(s) ['max_len']"),
    (["grpo.reward_params={strict_format: {x: 2}}"], "takes no parameters"),
    (["grpo.lora.r=8", "grpo.zero_stage=3"], "grpo.lora.r=8"),
    (["grpo.offload_optimizer=true"], "grpo.offload_optimizer=True: needs DeepSpeed"),
    (["grpo.offload_params=true", "grpo.zero_stage=2"], "grpo.offload_params=True: needs grpo.zero_stage=3"),
    (["grpo.offload_params=true", "grpo.offload_optimizer=true"], "grpo.offload_optimizer=True"),
    (["grpo.micro_batch_size=3"], "grpo.micro_batch_size=3"),
    (["sft.max_length=0"], "sft.max_length=0"),
    (["publish.enabled=true", "publish.to=out", "publish.adapter=true"], "publish.adapter=True: stage 'distill' trains no LoRA"),
    (["publish.enabled=true", "publish.to=out", "publish.adapter=true", "publish.stage=grpo"], "set grpo.lora.r > 0"),
    (["sft.num_cpus=2"], "use sft.cpus"),
    (["grpo.use_gpu=true"], "use grpo.gpus"),
    # stage contracts (issue 25): combinations that could only fail once Ray is up
    (["sft.enabled=false"], "sft.enabled=False: model.kind=tiny is built and trained by SFT; without it GRPO has no checkpoint"),
    (["grpo.rewards={math_accuracy: 0, strict_format: 0.0}"], "every weight is 0"),
    (["distill.mixes={m: {teachers: {/no/such/teacher: 1}}}"], "teacher '/no/such/teacher' is neither a stage"),
    (["distill.mixes={m: {long_short: 0.5}}", "task.name=reasoning_gym", "task.dataset=chain_sum"],
     "distill.mixes.m.long_short=0.5: short traces come from a 'short_completion' column"),
    (["distill.students={s: {kind: truncate, num_layers: 1, path: /no/such}}"], "distill.students.s.path='/no/such'"),
    (["baseline.enabled=true", "distill.mixes={m: {teachers: {baseline: 1}}}"], "teacher 'baseline' runs after distill"),
    (["eval.samples=2", "eval.ks=[1]", "eval.stages=[baseline]"], "eval.stages=['baseline']: none of these stages is enabled"),
    (["eval.stages=[sft, rlhf]"], "eval.stages='rlhf': not one of: sft, grpo, distill, baseline"),  # stages that leave a model
    (["publish.enabled=true", "publish.to=out", "publish.stage=baseline"], "publish.stage='baseline': stage 'baseline' is not enabled"),
    (["publish.enabled=true", "publish.to=out", "sft.enabled=false", "grpo.enabled=false", "distill.enabled=false"],
     "publish.enabled=True: no stage trains a model"),
    # the closest valid name (difflib)
    (["grpo.learnin_rate=1e-3"], "unknown field 'grpo.learnin_rate' (did you mean grpo.learning_rate?)"),
    (["grpp.max_steps=1"], "unknown field 'grpp' (did you mean grpo?)"),
    (["grpo.rewards={math_acuracy: 1}"], "(did you mean math_accuracy?)"),
    (["task.name=arithmetc"], "(did you mean arithmetic?)"),
    (["grpo.tis_cap=0.5"], "grpo.tis_cap=0.5 must be 0 (off) or >= 1"),
    (["grpo.verify_sync=maybe"], "grpo.verify_sync"),
    (["grpo.eval_every=-2"], "grpo.eval_every=-2: must be 1..grpo.max_steps=2"),
    (["grpo.eval_every=3"], "grpo.eval_every=3: must be 1..grpo.max_steps=2"),
]


@pytest.mark.parametrize("overrides,needle", REFUSED, ids=[" ".join(o) for o, _ in REFUSED])
def test_clumsy_input_is_refused_at_load_naming_the_field(overrides, needle):
    with pytest.raises(ConfigError) as err:
        load_config("micro", overrides)
    msg = str(err.value)
    assert needle in msg and "\n" not in msg, msg


def test_directory_or_missing_file_as_task_path(tmp_path):
    with pytest.raises(ConfigError, match="is a directory"):
        load_config("micro", ["task.name=jsonl", f"task.path={tmp_path}"])
    with pytest.raises(ConfigError, match="file not found"):
        load_config("micro", ["task.name=jsonl", f"task.path={tmp_path / 'nope.jsonl'}"])


def test_shipped_recipes_and_sane_variants_load():
    for overrides in ([], ["grpo.num_workers=2"], ["grpo.rollout_workers=1", "grpo.overlap=true"],
                      ["grpo.placement=colocated", "grpo.rollout_workers=1"], ["task.num_train=2"],
                      ["run.name=my-run_2.b"], ["grpo.enabled=false", "distill.mixes={m: {long_short: 0.0}}"],
                      ["grpo.zero_stage=1", "grpo.offload_optimizer=true"],
                      ["grpo.zero_stage=3", "grpo.offload_optimizer=true", "grpo.offload_params=true"],
                      ["publish.enabled=true", "publish.to=out", "publish.adapter=true", "publish.stage=grpo", "grpo.lora.r=4"],
                      ["grpo.eval_every=-1"], ["grpo.eval_every=2"]):
        load_config("micro", overrides)


def test_cli_config_refuses_in_one_line(cli, tmp_path):
    res = cli("config", "micro", "model.num_heads=7", cwd=tmp_path, timeout=120)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "model.num_heads=7" in lines[0], res.stderr


def test_model_runs_without_sft_are_accepted():
    """The stage contract refuses only what cannot work: a model to start from, or no stage that needs one."""
    load_config("micro", ["sft.enabled=false", "grpo.enabled=false", "distill.mixes={m: {long_short: 0.0}}"])


RECIPES = [  # (recipe text, the one line: file, line/column, what)
    ("base: micro\ngrpo:\n  max_steps: 3\nsft:\n  epochs: 1\ngrpo:\n  learning_rate: 1e-3\n",
     "r.yaml: line 6: duplicate key 'grpo' (first at line 2)"),
    ("base: micro\ngrpo:\n  lora: {r: 2, r: 4}\n", "r.yaml: line 3: duplicate key 'r' (first at line 3)"),
    ("base: micro\ngrpo: {max_steps: 3\nsft: x\n", "r.yaml: line 3, column 4: not valid YAML"),
    ("", "r.yaml: the recipe is empty"),
    ("# nothing but a comment\n", "r.yaml: the recipe is empty"),
    ("base: micro\ngrpo:\n  max_step: 3\n", "unknown field 'grpo.max_step' (did you mean grpo.max_steps?)"),
]


@pytest.mark.parametrize("text,needle", RECIPES, ids=[n for _, n in RECIPES])
def test_recipe_file_problems_name_the_file_and_line(tmp_path, text, needle):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(str(path))
    msg = str(err.value)
    assert needle in msg and "\n" not in msg, msg


def test_recipe_paths_that_are_folders_missing_or_mistyped(tmp_path):
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(str(tmp_path))
    with pytest.raises(ConfigError, match="nope.yaml: file not found"):
        load_config(str(tmp_path / "nope.yaml"))
    with pytest.raises(ConfigError, match=r"recipe 'mcro' not found \(did you mean micro\?\)"):
        load_config("mcro")


def test_a_refused_run_leaves_nothing_behind(cli, tmp_path):
    """Bad data is refused after the run folder was checked writable: the folders that run created go too."""
    rows = [{"prompt": f"{i}+1?", "answer": str(i + 1)} for i in range(40)]
    del rows[4]["answer"]  # 1 of 40 rows: above task.max_bad_fraction
    data = tmp_path / "mine.jsonl"
    data.write_text("".join(__import__("json").dumps(r) + "\n" for r in rows))
    res = cli("run", "micro", "task.name=jsonl", f"task.path={data}", f"run.output_dir={tmp_path / 'runs' / 'deep'}",
              cwd=tmp_path, timeout=300)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "row 5" in lines[0] and "task.max_bad_fraction" in lines[0], res.stderr
    assert not (tmp_path / "runs").exists(), "a refused run leaves no (empty) run folder"
    res = cli("eval", str(tmp_path / "no" / "such" / "checkpoint"), cwd=tmp_path, timeout=300)
    assert res.returncode == 2 and "checkpoint: does not exist" in res.stderr, res.stderr
