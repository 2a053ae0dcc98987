"""One micro pipeline run shared by the e2e tests (started once per pytest session, or per xdist worker, through
the real CLI): the micro recipe with its GRPO learner on DeepSpeed ZeRO-3 over 2 CPU workers saving every
step and feeding a disaggregated Ray rollout pool of one worker (the ZeRO-3 shards gathered for every weight
sync; distillation afterwards needs the CPUs that pool gives back), a rollout table every step, a user's own
reward (`package.module:function`) beside the recipe's, and the recipe's `publish` section on. Its SFT stage is also where tests/e2e/test_grpo_cluster.py's GRPO variants
start from.

GRPO deletes its checkpoints once the stage finished, so a raw ZeRO-3 checkpoint (`checkpoint-2`:
`global_step2/` shards; step 1 trains at learning rate 0, the warmup) is copied aside as soon as
`checkpoint-3` exists (by then step 2's save is complete on every rank: step 3 needed all of them).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.e2e.test_grpo_cluster import _start_and_wait_for_checkpoint

CUSTOM_REWARD = "tests.e2e.custom_reward:short_answer"
ZERO3 = ["run.num_cpus=2", "grpo.num_workers=2", "grpo.cpus=0.75", "grpo.zero_stage=3", "grpo.rollout_workers=1",
         "grpo.rollout_cpus=0.5", "grpo.max_steps=3", "grpo.save_steps=1", "grpo.log_rollouts_every=1",
         # a user's own reward (weight 0: the learning is the recipe's), imported and called in the Ray learners
         f"grpo.rewards={{math_accuracy: 1.0, strict_format: 0.1, '{CUSTOM_REWARD}': 0.0}}"]


@dataclass(frozen=True)
class MicroRun:
    run_dir: Path  # runs/micro
    zero_checkpoints: Path  # a folder holding checkpoint-2 of the ZeRO-3 learner (raw shards)
    published: Path  # where the recipe's publish section put the last trained stage
    log: str  # the CLI's output
    report: dict


_RUNS: dict[Path, MicroRun] = {}


def micro_run(tmp_path_factory) -> MicroRun:
    base = tmp_path_factory.getbasetemp()
    if base not in _RUNS:
        out = base / "shared-micro"
        out.mkdir(exist_ok=True)
        run, published, log = out / "micro", out / "published-by-driver", out / "cli.log"
        args = [*ZERO3, "publish.enabled=true", f"publish.to={published}"]
        with log.open("w") as f:  # a file, not a pipe: nobody reads while we wait for the checkpoint
            # checkpoint-2 saved to the end (its trainer_state.json): copy it before the stage ends and removes
            # grpo.checkpoints/ (checkpoint-3, the last, may live for less than a poll interval)
            proc = _start_and_wait_for_checkpoint(run, args, 2, stdout=f, stderr=subprocess.STDOUT, text=True)
            zero = run / "grpo.zero3-checkpoints"
            shutil.copytree(run / "grpo.checkpoints" / "checkpoint-2", zero / "checkpoint-2")
            proc.wait(timeout=600)
        text = log.read_text()
        assert proc.returncode == 0, text[-3000:]
        _RUNS[base] = MicroRun(run, zero, published, text, json.loads((run / "report.json").read_text()))
    return _RUNS[base]
