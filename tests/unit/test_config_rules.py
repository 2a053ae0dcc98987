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
