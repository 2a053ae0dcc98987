"""A pool of Ray actors that score code rewards in parallel across the cluster's CPUs.

Each actor owns one sandbox fork-server (rewards/sandbox.py). A batch is fanned out one completion per
actor call, so a slow program only holds up its own actor. When an actor dies mid-batch (node lost,
`ray.kill`, OOM), it is replaced and the completions it had in flight are retried once on the
replacement; a completion whose retry also dies is scored None ("cannot be scored"), never 0 or 1.
"""

from __future__ import annotations

import threading
from typing import Any, Literal

import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

from rewards.sandbox import SandboxConfig

_DEAD = (RayActorError, ActorDiedError, ActorUnavailableError)


@ray.remote
class SandboxActor:
    def __init__(self, config: SandboxConfig, mode: str) -> None:
        from rewards.sandbox import Sandbox

        self.sandbox = Sandbox(config)
        self.mode = mode

    def score(self, completion: Any, tests: Any, entry_point: str | None) -> float | None:
        from rewards.code import score_one

        return score_one(self.sandbox, completion, tests, entry_point, self.mode)

    def pid(self) -> int:
        import os

        return os.getpid()

    def __ray_shutdown__(self) -> None:
        self.sandbox.close()


class RewardPool:
    """`num_actors` sandbox actors, each reserving `num_cpus` (fractional in tests on small machines)."""

    def __init__(self, num_actors: int, num_cpus: float = 1.0, config: SandboxConfig | None = None,
                 mode: Literal["fraction", "all"] = "fraction") -> None:
        if num_actors < 1:
            raise ValueError("num_actors must be >= 1")
        self.config = config or SandboxConfig()
        self.mode = mode
        self.num_cpus = num_cpus
        self.replacements = 0
        self._lock = threading.Lock()
        self.actors = [self._new_actor() for _ in range(num_actors)]

    def _new_actor(self):
        return SandboxActor.options(num_cpus=self.num_cpus, max_restarts=0).remote(self.config, self.mode)

    def _replace(self, slot: int, dead) -> None:
        with self._lock:  # several in-flight calls report the same death; replace once
            if self.actors[slot] is dead:
                self.actors[slot] = self._new_actor()
                self.replacements += 1

    def score(self, completions: list, tests: list, entry_point: list | None = None) -> list[float | None]:
        n = len(completions)
        if len(tests) != n or (entry_point is not None and len(entry_point) != n):
            raise ValueError("completions, tests and entry_point must have the same length")
        eps = entry_point if entry_point is not None else [None] * n
        # Ship plain strings: chat-message lists are reduced here so actors get small payloads.
        from rewards.registry import completion_text

        texts = [completion_text(c) for c in completions]
        results: list[float | None] = [None] * n
        inflight: dict[Any, tuple[int, int, Any]] = {}  # ref -> (item, attempt, actor)

        def submit(i: int, attempt: int) -> None:
            slot = i % len(self.actors)
            actor = self.actors[slot]
            inflight[actor.score.remote(texts[i], tests[i], eps[i])] = (i, attempt, actor)

        for i in range(n):
            submit(i, 1)
        while inflight:
            done, _ = ray.wait(list(inflight), num_returns=1)
            ref = done[0]
            i, attempt, actor = inflight.pop(ref)
            try:
                results[i] = ray.get(ref)
            except _DEAD:
                slot = i % len(self.actors)
                self._replace(slot, actor)
                if attempt == 1:
                    submit(i, 2)
                else:
                    results[i] = None
        return results

    def shutdown(self) -> None:
        for a in self.actors:
            ray.kill(a)
        self.actors = []
