"""Trainer callbacks shared by the SFT, GRPO and distillation stages."""

from __future__ import annotations

import time

from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback


def quiet(trainer):
    """Drop the callback that prints every log dict to stdout: metrics go to the tracker, and the
    stage's progress bar shows progress."""
    trainer.remove_callback(PrinterCallback)
    return trainer


class TimeBudget(TrainerCallback):
    """Stops training once `seconds` of wall time have passed (0 = no budget). Used for the
    equal-wall-time SFT baseline and to bound GRPO's share of a pipeline's wall time."""

    def __init__(self, seconds: float):
        self.seconds, self.start = seconds, None

    def on_train_begin(self, args, state, control, **kw):
        self.start = time.monotonic()

    def on_step_end(self, args, state, control, **kw):
        if self.seconds > 0 and self._agree(time.monotonic() - self.start >= self.seconds):
            control.should_training_stop = True

    @staticmethod
    def _agree(stop: bool) -> bool:
        """Data-parallel ranks must stop at the same step (or the others hang in the next all-reduce):
        stop when any rank's clock ran out."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return stop
        import torch

        flag = torch.tensor([float(stop)])
        if dist.get_backend() == "nccl":
            flag = flag.cuda()
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())


class Progress(TrainerCallback):
    """A progress bar per stage. Inside Ray workers it uses `tqdm_ray`, which the driver renders as
    one clean bar instead of interleaved carriage returns from worker logs."""

    def __init__(self, desc: str):
        self.desc, self.bar = desc, None

    def on_train_begin(self, args, state, control, **kw):
        self.bar = make_bar(self.desc, state.max_steps)

    def on_step_end(self, args, state, control, **kw):
        if self.bar is not None:
            self.bar.update(1)

    def on_train_end(self, args, state, control, **kw):
        if self.bar is not None:
            self.bar.close()


def make_bar(desc: str, total: int):
    try:
        import ray

        if ray.is_initialized():
            from ray.experimental.tqdm_ray import tqdm as ray_tqdm

            return ray_tqdm(total=total, desc=desc)
    except ImportError:  # pragma: no cover
        pass
    from tqdm import tqdm

    return tqdm(total=total, desc=desc)
