"""The typed, frozen pipeline configuration: one section per YAML top-level key, composed into
`PipelineConfig`. Learning hyper-parameters come from `rl` (the sections extend `SFTParams`, `TrainingFields`,
`GRPOParams`, `TTSParams`); what a section adds is how its stage runs on the cluster.

Resources are spelled one way everywhere: `cpus` / `gpus` are per worker of the kind they sit next to
(`rollout_cpus` for a rollout worker, ...), `num_workers` / `rollout_workers` say how many. Rules that
involve more than one field live in `pipelines/config/rules.py` and run once, at load.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from rl.evaluation import TTSParams
from rl.grpo import GRPOParams
from rl.sft import SFTParams, TrainingFields
from rl.tools import ToolParams


class ConfigError(ValueError):
    """A recipe or override that does not fit the schema or its rules. The message names the field."""


@dataclass(frozen=True)
class RunSection:
    name: str = "tiny"  # the run folder's name under output_dir: letters, digits, '.', '_', '-'
    seed: int = 0
    output_dir: str = "runs"
    ray_address: str = ""  # "" starts a local Ray; "auto" or "ray://host:10001" connects
    num_cpus: int = 0  # CPUs of a local Ray; 0 = all cores
    wandb_mode: str = "offline"  # offline | online | disabled
    wandb_project: str = "rayzero"
    # GiB of one GPU: `rayzero run` refuses a recipe whose estimated memory per GPU exceeds it, before Ray
    # starts (pipelines/memory_plan.py; 0 = no check). Runs without GPUs never check.
    gpu_memory_gib: float = 80.0
    wandb_checkpoints: str = "reference"  # each stage's final checkpoint as a wandb artifact: reference | copy | none


@dataclass(frozen=True)
class ModelSection:
    """The policy to start from. `tiny` builds a Llama-architecture model from the sizes below and a
    tokenizer trained on the task's text at run time; `hf` loads `path`: a local HF folder, or a hub id
    (e.g. Qwen/Qwen2.5-0.5B-Instruct) downloaded once on the driver, before Ray starts, at `revision`
    (pipelines/models.py); `gguf` converts `path` (a .gguf file or package:<pkg>/<file>) once into
    runs/<run>/base/. Distillation students may also be `truncate`: `num_layers` evenly spaced layers of
    the teacher at `path`."""

    kind: str = "tiny"
    path: str = ""
    revision: str = ""  # hf hub id: a branch, tag or commit ("" = main)
    dtype: str = "float32"  # weights of the base model when a stage loads it (rl.params.DTYPES; auto = bf16 on GPU)
    attn_implementation: str = "auto"  # rl.params.ATTN_IMPLEMENTATIONS
    trust_remote_code: bool = False  # hf: run the model repo's own modelling/tokenizer code
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 384
    vocab_size: int = 512  # tokenizer size for `tiny` (at least 264: bytes + special tokens + tags)
    max_position: int = 256

    def __post_init__(self):
        # A relative folder would name another place in Ray workers (they run in their own folders), and a
        # missing one would then look like a hub id: keep the folder the driver sees, absolute.
        if self.kind == "hf" and self.path and not Path(self.path).is_absolute() and Path(self.path).expanduser().exists():
            object.__setattr__(self, "path", str(Path(self.path).expanduser().resolve()))


@dataclass(frozen=True)
class ColdStartSource:
    """Where `task.name: hf` takes its cold-start (SFT) rows from; every field "" = the task's own. Rows
    need a completion: a `completion` column in `columns`, or the task's `completion_template`."""

    dataset: str = ""  # another dataset (hub id or json/parquet/csv); "" = task.dataset
    data_files: Any = ""  # builders: a path or {split: path}; "" = task.data_files (same dataset)
    subset: str = ""
    split: str = ""  # "" = task.train_split (the cold-start rows are then left out of the train rows)
    columns: Mapping[str, str] = field(default_factory=dict)  # {} = task.columns
    answer_format: str = ""  # "" = task.answer_format


@dataclass(frozen=True)
class TaskSection:
    """Where prompts and answers come from (pipelines/tasks/): `arithmetic` (built-in generator), `hf` (any
    `datasets` dataset: a hub id or json/parquet/csv files, with a column mapping; docs/data.md), `jsonl`
    (shorthand for `hf` over one local file), `reasoning_gym`, `human_eval`. The prompt fields apply to
    every task."""

    name: str = "arithmetic"
    path: str = ""  # jsonl: the file, split into cold-start / train / held-out by the sizes below
    num_cold_start: int = 200  # chain-of-thought examples for SFT (hf: at most)
    num_train: int = 4000  # prompts (answers only) for GRPO and distillation (hf: at most)
    num_heldout: int = 300  # never trained on (hf: at most, a fixed sample of the held-out split)
    min_ops: int = 2
    max_ops: int = 3
    max_value: int = 20
    # reasoning_gym: the generator (e.g. chain_sum); hf: a hub id (openai/gsm8k), a builder (json, parquet,
    # csv) reading data_files, or human_eval (the human-eval package's file)
    dataset: str = ""
    params: Mapping[str, Any] = field(default_factory=dict)  # reasoning_gym: the generator's config fields
    data_files: Any = ""  # hf builders: a path, or {split: path}
    subset: str = ""  # hf: the dataset's config name (e.g. main for openai/gsm8k)
    train_split: str = "train"
    heldout_split: str = ""  # "" = the dataset's test (else validation) split; a fixed random cut only for one split
    # rayzero field -> dataset column: prompt, answer, completion, tests, entry_point, and any other column
    # a reward needs (e.g. test_setup_code); a standard field not named maps to a column of its own name
    columns: Mapping[str, str] = field(default_factory=dict)
    answer_format: str = "plain"  # plain | gsm8k (after ####, commas removed) | boxed | regex:<pattern>
    # Cold-start completions written from row fields, e.g. "<think>{solution}</think><answer>{answer}</answer>"
    # ({solution}: the gold text before its final answer; {answer}: the extracted answer)
    completion_template: str = ""
    cold_start: ColdStartSource = ColdStartSource()
    prompt_template: str = "plain"  # plain | r1_zero | boxed | code | a string with {prompt}
    system_prompt: str = ""
    chat_template: bool = False  # render prompts with the tokenizer's chat template (add_generation_prompt)
    # hf/jsonl rows that cannot be used (no prompt, no answer, a gold the format cannot read, a longer prompt)
    # are left out and counted; above this fraction of the rows the data is refused at load
    max_bad_fraction: float = 0.01
    max_prompt_chars: int = 20000  # longer prompts are unusable rows (a 5 MB one stalls tokenizer training); 0 = off


@dataclass(frozen=True)
class SFTSection(SFTParams):
    """Cold-start SFT: the learning hyper-parameters of `rl.sft.SFTParams` plus how the stage runs."""

    enabled: bool = True
    cpus: float = 1.0
    gpus: float = 0.0
    time_budget_s: float = 0.0  # stop training after this wall time; 0 = no budget


@dataclass(frozen=True)
class GRPOSection(GRPOParams):
    """GRPO: the learning hyper-parameters of `rl.grpo.GRPOParams` (TRL's losses) plus rewards, the
    learner (a Ray Train worker group) and the rollout workers."""

    enabled: bool = True
    rewards: Mapping[str, float] = field(
        default_factory=lambda: {"math_accuracy": 1.0, "strict_format": 0.1}
    )
    # Parameters of factory rewards, e.g. {code_accuracy: {mode: all, workers: 8, cpus: 1}} (`workers` > 0
    # scores on a Ray actor pool of that size).
    reward_params: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    time_budget_s: float = 0.0  # stop after max_steps or this much training wall time (0 = no budget)
    # Held-out greedy pass@1 during training, at the start and every eval_every steps' share of the budget
    # (eval_every/max_steps of it; of time_budget_s when time ends GRPO first); 0 = a quarter; -1 = off.
    # Its seconds are not training time (time_budget_s, the equal-time baseline). The end is the stage's eval.
    eval_every: int = 0
    num_workers: int = 1  # learner workers (data parallel)
    cpus: float = 1.0  # per learner worker
    gpus: float = 0.0  # per learner worker (1 = one GPU each; NCCL between them)
    zero_stage: int = 0  # 0 = plain DDP; 1, 2, 3 = DeepSpeed ZeRO stage (config generated, rl/zero.py)
    # DeepSpeed ZeRO-Offload (rl/zero.py): optimizer states + fp32 master weights in CPU memory, stepped there
    # (zero_stage >= 1); offload_params also parks the parameters on the CPU between uses (zero_stage = 3).
    offload_optimizer: bool = False
    offload_params: bool = False
    save_steps: int = 0  # checkpoint every N steps; a rerun after a crash resumes from the latest
    max_failures: int = 0  # learner worker-group restarts, each resuming from the latest checkpoint
    # Rollouts: 0 workers = TRL generates inside the learner (with rollout_engine=vllm: TRL's own vLLM, in
    # grpo.vllm.mode colocate | server, rl/trl_vllm.py); N = a Ray rollout pool (cluster/rollout.py).
    rollout_workers: int = 0
    rollout_engine: str = "hf"  # hf | vllm
    rollout_cpus: float = 1.0  # per rollout worker
    placement: str = "disaggregated"  # colocated | disaggregated (cluster/placement.py)
    sync_every: int = 1  # push learner weights to the rollout workers every N optimizer steps
    sync_backend: str = "object_store"  # object_store | collective (NCCL on GPU, gloo on CPU)
    sync_bucket_mb: int = 256  # weights travel in the engines' dtype, in buckets of at most this many MiB
    overlap: bool = False  # generate step t+1 while training step t (one-step off-policy; needs rollout_workers)
    # After every sync: per-bucket checksums + a 24-token probe scored by engines and learner (docs/gpu.md)
    verify_sync: bool = True
    log_rollouts_every: int = 10  # wandb table + grpo/rollouts.jsonl of sample rollouts every N steps (0 = off)
    # Tool-integrated reasoning (docs/tools.md): rollouts may call a sandboxed Python tool; its output is masked
    # out of the loss; every stage's evaluation then runs with the tool (and once without, for tool_gain).
    tools: ToolParams = ToolParams()

    @property
    def use_gpu(self) -> bool:
        return self.gpus > 0

    @property
    def in_learner_vllm(self) -> bool:
        """TRL's own vLLM generates inside the learner (no rollout pool to run the vLLM engines)."""
        return self.rollout_engine == "vllm" and not self.rollout_workers


@dataclass(frozen=True)
class MixSection:
    """One distillation data mix (rl/traces.py): `long_short` of the traces are long ones sampled from
    `teachers` (weights; names are stages of this run, `sft`/`grpo`/`baseline`, or checkpoint folders),
    the rest short ones from the task's short-CoT source. Mix-Long = long and short; Mix-Large = a large
    and a small teacher."""

    long_short: float = 1.0
    teachers: Mapping[str, float] = field(default_factory=lambda: {"grpo": 1.0})


@dataclass(frozen=True)
class DistillSection(TrainingFields):
    """Teachers sample `samples_per_prompt` solutions for `num_prompts` training prompts through Ray
    rollout workers; verified ones are kept (rejection sampling + filters) and cached per teacher in
    `runs/<run>/traces/`. Every student is trained on every mix (each of `num_traces` traces; 0 = the
    most every mix can fill); the first student on the first mix is the stage's checkpoint. The students'
    training fields are `rl.sft.TrainingFields` (epochs, learning_rate, batch_size, max_length, bf16), as
    for SFT, with distillation's own defaults."""

    epochs: float = 2.0
    batch_size: int = 32
    enabled: bool = True
    samples_per_prompt: int = 4
    num_prompts: int = 2000
    temperature: float = 1.0
    max_new_tokens: int = 64  # longest trace a teacher may write
    keep_per_prompt: int = 2  # at most this many distinct correct traces per prompt
    min_tokens: int = 0  # length filter on kept traces (0 = none)
    max_tokens: int = 0
    require_format: bool = True  # keep only traces with the strict <think>/<answer> format
    dedupe: bool = True
    rollout_workers: int = 1  # Ray rollout actors sampling the teachers
    rollout_cpus: float = 1.0
    rollout_gpus: float = 0.0
    num_traces: int = 0
    mixes: Mapping[str, MixSection] = field(default_factory=lambda: {"main": MixSection()})
    students: Mapping[str, ModelSection] = field(default_factory=lambda: {
        "student": ModelSection(hidden_size=96, num_layers=3, num_heads=4, intermediate_size=256)})
    method: str = "sft"  # sft: on the traces' tokens | logit: match the teacher's token distributions (TRL GKD)
    logit_beta: float = 0.0  # GKD's generalised JSD: 0 = forward KL, 1 = reverse KL
    logit_lmbda: float = 0.0  # GKD: fraction of batches the student samples itself (on-policy)
    cpus: float = 1.0  # the students' training task
    gpus: float = 0.0


@dataclass(frozen=True)
class EvalSection(TTSParams):
    """Greedy pass@1 is measured after every stage; with `samples > 0` the `eval` stage also measures
    each checkpoint in `stages` with test-time scaling (`rl.evaluation.TTSParams`). `benchmarks` adds
    standard test sets (pipelines/tasks/benchmarks.py): built-in names (gsm8k, math500, aime24, aime25,
    amc23, humaneval, mbpp) or mappings with the fields of `task` ({name: ..., dataset: ..., columns: ...}),
    measured greedy (and with pass@k/maj@k over `samples`) wherever the held-out split is."""

    max_new_tokens: int = 64
    batch_size: int = 128
    cpus: float = 1.0
    gpus: float = 0.0
    benchmarks: tuple[Any, ...] = ()
    stages: tuple[str, ...] = ("sft", "grpo", "distill")  # checkpoints the eval stage measures

    @property
    def enabled(self) -> bool:
        return self.samples > 0


@dataclass(frozen=True)
class BaselineSection:
    """SFT alone on the same cold-start data for the wall time SFT+GRPO took (the comparison the
    RL stage must beat)."""

    enabled: bool = False


@dataclass(frozen=True)
class NoToolSection:
    """A tool run's control (pipelines/stages/no_tool.py): the same model trained WITHOUT the tool at the same
    budget (the tool arm's SFT and GRPO step counts, the same problems, the task's no-tool traces), measured
    on the same held-out rows without it; summary.tool_gain = tool arm minus this arm (docs/tools.md)."""

    enabled: bool = False


@dataclass(frozen=True)
class PublishSection:
    """Publish a stage's checkpoint after the run (pipelines/publish/publish.py, also `rayzero publish`):
    `to` is a directory or `hf://<org>/<name>[@revision]`; `stage` "" = the last trained stage."""

    enabled: bool = False
    stage: str = ""
    to: str = ""
    overwrite: bool = False
    base_model: str = ""  # Hub id for the card's `base_model` (default: model.path when it is a Hub id)
    datasets: tuple[str, ...] = ()  # Hub ids / names for the card's `datasets` (default: the task's name)
    adapter: bool = False  # publish the stage's LoRA adapter (<stage>/adapter/) instead of the merged model


@dataclass(frozen=True)
class PipelineConfig:
    run: RunSection = RunSection()
    model: ModelSection = ModelSection()
    task: TaskSection = TaskSection()
    sft: SFTSection = SFTSection()
    grpo: GRPOSection = GRPOSection()
    distill: DistillSection = DistillSection()
    eval: EvalSection = EvalSection()
    baseline: BaselineSection = BaselineSection()
    no_tool: NoToolSection = NoToolSection()
    publish: PublishSection = PublishSection()
    # The sections of stages registered from outside this module (`Stage.section`), by stage name: a YAML
    # top-level key and `cfg.<name>` like the sections above (pipelines/config/loading.py builds them).
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:
        extra = self.__dict__.get("extra") or {}  # (unpickling asks before the fields are set)
        if name in extra:
            return extra[name]
        raise AttributeError(f"'PipelineConfig' has no section '{name}'")

    @property
    def run_dir(self) -> Path:
        return Path(self.run.output_dir) / self.run.name


# Fields that were renamed: an old recipe gets one line naming the new field instead of "unknown field".
RENAMED = {
    ("sft", "num_cpus"): "sft.cpus",
    ("grpo", "cpus_per_worker"): "grpo.cpus",
    ("grpo", "rollout_cpus_per_worker"): "grpo.rollout_cpus",
    ("grpo", "use_gpu"): "grpo.gpus (GPUs per learner worker, e.g. 1)",
    ("distill", "num_cpus"): "distill.cpus",
    ("distill", "rollout_cpus_per_worker"): "distill.rollout_cpus",
    ("eval", "num_cpus"): "eval.cpus",
    ("eval", "max_steps"): "eval.beam_max_rounds",
}


def to_dict(cfg: Any) -> dict:
    """Plain nested dicts/lists (tuples become lists), as YAML and JSON write them: comparing two of
    these compares configs, not their container types. A registered stage's section is a top-level key."""
    out = json.loads(json.dumps(dataclasses.asdict(cfg)))
    if isinstance(cfg, PipelineConfig):
        out.update(out.pop("extra"))
    return out
