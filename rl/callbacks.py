"""Trainer callbacks shared by the SFT, GRPO and distillation stages.

Besides progress lines and time budgets, three feed experiment tracking without tying `rl/` to a tracker:
`MetricHistory` writes every logged metric dict to a JSONL file (the plots are drawn from files, not
from wandb), `Throughput` adds tokens/s to GRPO's own metrics (so every `report_to` backend gets it), and
`RolloutSamples` hands a sample of the latest rollouts (prompt, completion, each reward) to a sink every
N steps.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Callable

from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback

from rl import trl_compat as compat
from rl.progress import ProgressLine


def quiet(trainer):
    """Drop the callback that prints every log dict to stdout: metrics go to the tracker, and the
    stage's progress bar shows progress."""
    trainer.remove_callback(PrinterCallback)
    return trainer


class TimeBudget(TrainerCallback):
    """Stops training once `seconds` of training wall time have passed (0 = no budget). Used for the
    equal-wall-time SFT baseline and to bound GRPO's share of a pipeline's wall time. Seconds handed to
    `pause` (a held-out evaluation during training) are not training time: they do not count."""

    def __init__(self, seconds: float):
        self.seconds, self.start, self.paused = seconds, None, 0.0

    def on_train_begin(self, args, state, control, **kw):
        self.start, self.paused = time.monotonic(), 0.0

    def elapsed(self) -> float:
        """Training seconds so far (0 before training began)."""
        return 0.0 if self.start is None else time.monotonic() - self.start - self.paused

    def pause(self, seconds: float) -> None:
        self.paused += seconds

    def on_step_end(self, args, state, control, **kw):
        if self.seconds > 0 and _agree(self.elapsed() >= self.seconds):
            control.should_training_stop = True


def _agree(flag: bool) -> bool:
    """Data-parallel ranks must take the same branch at the same step (or the others hang in the next
    collective): true when any rank's flag is."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flag
    import torch

    t = torch.tensor([float(flag)])
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


class Progress(TrainerCallback):
    """A stage's training progress as a few whole lines (`rl.progress.ProgressLine`): steps done, the
    latest logged reward or loss, elapsed seconds. Only the main process prints."""

    SHOWN = ("reward", "loss")  # the first figures of TRL's / HF's logs worth a glance

    def __init__(self, desc: str):
        self.desc, self.bar = desc, None

    def on_train_begin(self, args, state, control, **kw):
        if state.is_world_process_zero:
            self.bar = ProgressLine(self.desc, state.max_steps)
            self.bar.done = state.global_step  # resumed from a checkpoint: count from there

    def on_log(self, args, state, control, logs=None, **kw):
        if self.bar is None:
            return
        if logs:
            self.bar.note(**{k: float(logs[k]) for k in self.SHOWN if isinstance(logs.get(k), (int, float))})
        if state.global_step > self.bar.done:  # the step held back by on_step_end, now with its own figures
            self.bar.update(state.global_step - self.bar.done)

    def on_step_end(self, args, state, control, **kw):
        # The trainer logs a step's metrics after on_step_end: a step about to be logged is counted (and its
        # line printed) in on_log, so the reward shown is that step's, not the previous logged one's.
        if self.bar is not None and not control.should_log:
            self.bar.update(state.global_step - self.bar.done)

    def on_train_end(self, args, state, control, **kw):
        if self.bar is not None:
            self.bar.close()


class HeldoutEval(TrainerCallback):
    """Held-out accuracy while a trainer trains: at the start (a fresh run's step 0) and each time training
    progress passes another `fraction` of its budget, where progress is the larger of steps / max_steps and
    training seconds / `budget.seconds` (whichever ends training); never at the step training stops (the
    stage measures its final model itself). Every rank takes part (ZeRO-3 weights are gathered for the
    policy, `trl_compat.model_for_generation`); `evaluate(model) -> {"accuracy", ...}` runs on the main
    process only, in eval mode. Each point is appended to the trainer's log history as {"step",
    "heldout/accuracy", "heldout/eval_s"} (so `MetricHistory`, checkpoints and a resumed run keep it),
    printed as one line and handed to `on_point(step, point)`. Its seconds are paused out of `budget`:
    evaluating does not eat into the training time."""

    KEY = "heldout/accuracy"

    def __init__(self, trainer, evaluate: Callable, *, fraction: float, budget: TimeBudget | None = None,
                 desc: str = "heldout", on_point: Callable[[int, dict], None] | None = None):
        self.trainer, self.evaluate, self.fraction = trainer, evaluate, fraction
        self.budget, self.desc, self.on_point = budget, desc, on_point
        self.next_mark = fraction

    def _progress(self, state) -> float:
        steps = state.global_step / state.max_steps if state.max_steps > 0 else 0.0
        seconds = self.budget.elapsed() / self.budget.seconds if self.budget and self.budget.seconds > 0 else 0.0
        return max(steps, seconds)

    def on_train_begin(self, args, state, control, **kw):
        done = self._progress(state)  # a resumed run continues its schedule; its points are in log_history
        self.next_mark = (math.floor(done / self.fraction + 1e-9) + 1) * self.fraction
        if state.global_step == 0:
            self._measure(state)

    def on_step_end(self, args, state, control, **kw):
        if control.should_training_stop:
            return
        due = self._progress(state) >= self.next_mark - 1e-9
        if self.budget is not None and self.budget.seconds > 0:
            due = _agree(due)  # the time part differs between ranks' clocks
        if due:
            self._measure(state)
            self.next_mark = (math.floor(self._progress(state) / self.fraction + 1e-9) + 1) * self.fraction

    def _measure(self, state) -> None:
        start = time.monotonic()
        result = None
        from rl.zero import forward_alone

        with compat.model_for_generation(self.trainer) as model:
            if state.is_world_process_zero:
                was_training = model.training
                model.eval()
                try:
                    with forward_alone(self.trainer.model_wrapped):
                        result = self.evaluate(model)
                finally:
                    model.train(was_training)
        _barrier()  # the other ranks wait here, so every rank pauses its clock by the same amount
        seconds = time.monotonic() - start
        if self.budget is not None:
            self.budget.pause(seconds)
        if result is None:
            return
        point = {self.KEY: float(result["accuracy"]), "heldout/eval_s": round(seconds, 2), "step": state.global_step}
        state.log_history.append(point)
        print(f"{self.desc}: held-out accuracy {100 * point[self.KEY]:.1f} % at step {state.global_step}/"
              f"{state.max_steps} ({seconds:.0f}s, not counted as training time)", flush=True)
        if self.on_point is not None:
            self.on_point(state.global_step, point)


class MetricHistory(TrainerCallback):
    """Writes the trainer's log history to `path` (one JSON object per logged step, as the trainer logged
    it), appending as training logs. History restored from a resumed checkpoint is written too, so the
    file always holds the whole curve. Only the main process writes."""

    def __init__(self, path: str | Path):
        self.path, self.written = Path(path), None

    def on_log(self, args, state, control, logs=None, **kw):
        if not state.is_world_process_zero:
            return
        if self.written is None:  # first log of this process: start the file from the full history
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text("")
            self.written = 0
        with self.path.open("a") as f:
            for entry in state.log_history[self.written:]:
                f.write(json.dumps({k: _finite(v) for k, v in entry.items()}) + "\n")
        self.written = len(state.log_history)


def _finite(v):
    return None if isinstance(v, float) and not math.isfinite(v) else v


class Throughput(TrainerCallback):
    """Adds `tokens_per_s` (prompt + completion tokens of all workers, per second of step wall time:
    generation, scoring and the update) to a TRL GRPO trainer's metrics, which TRL averages and logs
    with its own (`train/tokens_per_s` in wandb)."""

    def __init__(self, trainer):
        self.trainer, self.start, self.tokens = trainer, 0.0, 0

    def on_step_begin(self, args, state, control, **kw):
        self.start, self.tokens = time.monotonic(), state.num_input_tokens_seen

    def on_step_end(self, args, state, control, **kw):
        elapsed = time.monotonic() - self.start
        done = state.num_input_tokens_seen - self.tokens
        if elapsed > 0 and done > 0:
            compat.log_metric(self.trainer, "tokens_per_s", done / elapsed)


class RolloutSamples(TrainerCallback):
    """Every `every` optimizer steps, calls `sink(step, rows)` with the latest generation batch of a TRL
    GRPO trainer: rows {prompt, completion, <reward name>: value, ..., advantage}, at most `max_rows`.
    TRL's own `log_completions` logs at every logging step and prints to stdout; this keeps its columns
    on its own schedule."""

    def __init__(self, trainer, every: int, sink: Callable[[int, list[dict]], None], max_rows: int = 64):
        self.trainer, self.every, self.sink, self.max_rows = trainer, every, sink, max_rows

    def on_step_end(self, args, state, control, **kw):
        if self.every <= 0 or state.global_step % self.every or not state.is_world_process_zero:
            return
        logs = compat.latest_rollouts(self.trainer)
        prompts, completions = list(logs["prompt"]), list(logs["completion"])
        rewards = {name: list(values) for name, values in logs["rewards"].items()}
        advantages = list(logs["advantages"])
        rows = []
        for i in range(min(len(prompts), self.max_rows)):
            row = {"prompt": _text(prompts[i]), "completion": _text(completions[i])}
            row.update({name: _finite(float(v[i])) if i < len(v) else None for name, v in rewards.items()})
            row["advantage"] = _finite(float(advantages[i])) if i < len(advantages) else None
            rows.append(row)
        if rows:
            self.sink(state.global_step, rows)


def _text(x) -> str:
    """Plain text of a prompt/completion (conversational ones are lists of {role, content})."""
    if isinstance(x, str):
        return x
    if isinstance(x, list):
        return "\n".join(m.get("content", "") if isinstance(m, dict) else str(m) for m in x)
    return str(x)
