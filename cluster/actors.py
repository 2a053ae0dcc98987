"""One pool abstraction for every kind of Ray actor the pipeline runs (rollout engines, reward scorers).

Each actor hosts one object built *inside* the actor by a picklable zero-argument factory, so callers
ship a recipe (a class and its arguments) instead of a live object, and this module stays free of model
and reward code. Calls name a method of the hosted object.

Replacing dead actors lives here, once: when a call fails because its actor died (node lost, OOM,
`ray.kill`), that slot gets a fresh actor, the optional `on_replace(actor)` hook runs (e.g. to load the
latest weights), and the work is retried on the fresh actor. The three call shapes differ only in what
"retried" means:

- `map`: per item; an item retried once and dying again yields None ("cannot be computed"): the code
  reward contract, where None never counts as 0 or 1.
- `sharded`: a batch cut into one contiguous shard per actor; a dead actor's shard is regenerated on
  the replacement (up to `max_retries` times, then the error is raised).
- `call_all`: the same call on every actor (broadcast), retried once on a replacement.

A group whose members depend on each other (the learner ranks of `cluster.learners`, joined in one
torch.distributed group) is not retried call by call: `submit_each` hands out one call per actor without
retries and `restart` replaces every actor at once.

A pool is driven by one thread at a time. It pickles (e.g. into a learner worker): the copy keeps the
same actors and can replace them; replacements it makes belong to the process that made them.
"""

from __future__ import annotations

import os
from collections import deque
from typing import Any, Callable, Sequence

import ray
from ray.actor import ActorHandle
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

DEAD = (RayActorError, ActorDiedError, ActorUnavailableError)
# An actor that spans several bundles (a vLLM engine whose tensor-parallel workers each take one) finds its
# bundle indices here, comma-separated, in its environment (rl.vllm_engine reads the same name).
BUNDLES_ENV = "RAYZERO_BUNDLE_INDICES"


def split_evenly(n: int, parts: int) -> list[slice]:
    """Contiguous slices of range(n) whose sizes differ by at most one, in order."""
    base, extra = divmod(n, parts)
    out, start = [], 0
    for i in range(parts):
        size = base + (i < extra)
        out.append(slice(start, start + size))
        start += size
    return out


def slot_bundles(offset: int, slot: int, per_actor: int = 1) -> list[int]:
    """The placement-group bundle indices actor `slot` of a pool owns: `per_actor` consecutive ones."""
    first = offset + slot * per_actor
    return list(range(first, first + per_actor))


class _Host:
    """The Ray actor behind every pool slot: builds `factory()` and runs its methods."""

    def __init__(self, factory: Callable[[], Any], env: dict[str, str] | None = None) -> None:
        os.environ.update(env or {})  # before the factory runs: what it builds may read it (BUNDLES_ENV)
        self.obj = factory()
        self.name = type(self.obj).__name__

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return getattr(self.obj, method)(*args, **kwargs)

    def pid(self) -> int:
        return os.getpid()

    def __repr__(self) -> str:  # Ray prefixes the actor's log lines with this: "(CodeScorer pid=...)"
        return getattr(self, "name", "Host")

    def close(self) -> None:
        """The hosted object releases what it holds (sandbox servers, collective groups); once only."""
        obj, self.obj = getattr(self, "obj", None), None
        if callable(getattr(obj, "close", None)):
            obj.close()

    def __ray_shutdown__(self) -> None:
        # Ray calls this when the actor exits gracefully, e.g. when a pool is dropped without `shutdown`.
        self.close()


_HOSTS: dict[str, Any] = {}


def host_class(kind: str = "Host"):
    """The Ray actor class of a pool's actors, named `kind`: its processes are titled `ray::<kind>` (so a
    learner process can be told from a rollout one in `ps`), otherwise every kind is the same `_Host`."""
    if kind not in _HOSTS:
        if not kind.isidentifier():
            raise ValueError(f"actor kind {kind!r} must be an identifier")
        _HOSTS[kind] = ray.remote(type(kind, (_Host,), {"__module__": __name__, "__qualname__": kind}))
    return _HOSTS[kind]


class ActorPool:
    """`num_actors` actors, each reserving `num_cpus` CPUs and `num_gpus` GPUs (fractions allowed) and
    hosting `factory()`.

    `placement_group`, when given, pins actor i to bundle `bundle_offset + i` (with `bundles_per_actor` k > 1:
    actor i owns bundles `bundle_offset + i*k ...+ k-1`, sits in the first, and finds all k in `BUNDLES_ENV`); with
    `release_placement_group=True` the pool owns it and `shutdown` removes it, so the reserved CPUs/GPUs
    go back to the stages that follow. `on_replace(actor)` runs on every replacement actor before it is
    given the failed work (the rest of the pool is reachable through `actors`). `kind` names the actors'
    class (`host_class`). The constructor returns once every actor has built its object, so a factory
    that fails, fails here; with `start_timeout_s`, actors not started by then (Ray could not place them)
    raise `ray.exceptions.GetTimeoutError`."""

    def __init__(self, factory: Callable[[], Any], *, num_actors: int = 1, num_cpus: float = 1.0,
                 num_gpus: float = 0.0, placement_group=None, bundle_offset: int = 0,
                 bundles_per_actor: int = 1, release_placement_group: bool = False,
                 on_replace: Callable[[ActorHandle], None] | None = None, kind: str = "Host",
                 start_timeout_s: float | None = None) -> None:
        if num_actors < 1:
            raise ValueError("an actor pool needs num_actors >= 1")
        self.factory, self.num_cpus, self.num_gpus, self.kind = factory, num_cpus, num_gpus, kind
        self.placement_group, self.bundle_offset = placement_group, bundle_offset
        self.bundles_per_actor = int(bundles_per_actor)
        self.release_placement_group = release_placement_group
        self.on_replace = on_replace
        self.replacements = self.restarts = 0
        self.closed = False
        self.actors: list[ActorHandle] = []
        try:
            self.actors = [self._new_actor(slot) for slot in range(num_actors)]
            ray.get([a.pid.remote() for a in self.actors], timeout=start_timeout_s)
        except BaseException:
            self.shutdown()
            raise

    def _new_actor(self, slot: int) -> ActorHandle:
        # No Ray-level restarts: a restarted actor would silently rerun the factory without the hook.
        opts: dict = {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus, "max_restarts": 0}
        env = None
        if self.placement_group is not None:
            from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

            bundles = slot_bundles(self.bundle_offset, slot, self.bundles_per_actor)
            opts["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                placement_group=self.placement_group, placement_group_bundle_index=bundles[0])
            if len(bundles) > 1:
                env = {BUNDLES_ENV: ",".join(map(str, bundles))}
        return host_class(self.kind).options(**opts).remote(self.factory, env)

    def _check_open(self) -> None:
        if self.closed:
            raise RuntimeError("the actor pool was shut down")

    def _replace(self, slot: int, dead: ActorHandle) -> ActorHandle:
        """Give `slot` a fresh actor unless `dead` was already replaced; returns the slot's actor."""
        self._check_open()  # (a call still running when the pool was shut down ends here)
        if self.actors[slot] is dead:
            # "Unavailable" may be a live but unreachable actor: make sure it is gone and its resources
            # (its placement-group bundle) are free for the replacement.
            ray.kill(dead)
            self.actors[slot] = self._new_actor(slot)
            self.replacements += 1
            if self.on_replace is not None:
                self.on_replace(self.actors[slot])
        return self.actors[slot]

    def map(self, method: str, items: Sequence[tuple]) -> list:
        """`[method(*item) for item in items]`, spread over the actors (each takes the next item when it
        finishes one, so a slow item holds up only its own actor). An item whose actor died is retried
        once on that slot's replacement; if that dies too its result is None."""
        self._check_open()
        results: list = [None] * len(items)
        todo, free = deque(range(len(items))), deque(range(len(self.actors)))
        inflight: dict[ray.ObjectRef, tuple[int, int, int, ActorHandle]] = {}  # ref -> (item, slot, attempt, actor)

        def submit(i: int, slot: int, attempt: int) -> None:
            actor = self.actors[slot]
            inflight[actor.call.remote(method, *items[i])] = (i, slot, attempt, actor)

        while todo or inflight:
            while todo and free:
                submit(todo.popleft(), free.popleft(), 1)
            [ref], _ = ray.wait(list(inflight), num_returns=1)
            i, slot, attempt, actor = inflight.pop(ref)
            try:
                results[i] = ray.get(ref)
            except DEAD:
                self._replace(slot, actor)
                if attempt == 1:
                    submit(i, slot, 2)
                    continue
                results[i] = None
            free.append(slot)
        return results

    def sharded(self, method: str, batch: Sequence, args: Callable[[int, list], tuple] | None = None,
                max_retries: int = 3) -> list:
        """Cut `batch` into contiguous near-equal shards, one per actor; actor i runs
        `method(*args(i, shard_i))` (default `method(shard_i)`), which must return one result per item.
        Returns the results concatenated in batch order. A dead actor's shard runs again, with the same
        arguments, on its replacement, at most `max_retries` times per shard (then the error is raised)."""
        self._check_open()
        make_args = args or (lambda i, shard: (shard,))
        parts = split_evenly(len(batch), len(self.actors))
        shards = [list(batch[s]) for s in parts]
        results: list[list] = [[] for _ in parts]
        retries = [0] * len(parts)
        inflight: dict[ray.ObjectRef, tuple[int, ActorHandle]] = {}

        def submit(slot: int) -> None:
            actor = self.actors[slot]
            inflight[actor.call.remote(method, *make_args(slot, shards[slot]))] = (slot, actor)

        for slot, shard in enumerate(shards):
            if shard:  # fewer items than actors: the rest have nothing to do
                submit(slot)
        while inflight:
            [ref], _ = ray.wait(list(inflight), num_returns=1)
            slot, actor = inflight.pop(ref)
            try:
                results[slot] = list(ray.get(ref))
            except DEAD:
                self._replace(slot, actor)  # even for a shard given up: the pool stays whole
                if retries[slot] >= max_retries:
                    raise
                retries[slot] += 1
                submit(slot)
                continue
            if len(results[slot]) != len(shards[slot]):
                raise ValueError(f"{method} returned {len(results[slot])} results for a shard of "
                                 f"{len(shards[slot])} items")
        return [r for shard in results for r in shard]

    def call_all(self, method: str, *args: Any) -> list:
        """`method(*args)` on every actor, results in actor order; a dead actor is replaced and the call
        retried once on the replacement."""
        self._check_open()
        refs = [(slot, a, a.call.remote(method, *args)) for slot, a in enumerate(self.actors)]
        out = []
        for slot, actor, ref in refs:
            try:
                out.append(ray.get(ref))
            except DEAD:
                out.append(ray.get(self._replace(slot, actor).call.remote(method, *args)))
        return out

    def submit_each(self, method: str, args: Sequence[tuple]) -> list[ray.ObjectRef]:
        """Start `method(*args[i])` on actor i, one call per actor, and return the refs: no retries (a dead
        actor's ref raises); for groups whose members cannot be replaced one by one (see `restart`)."""
        self._check_open()
        if len(args) != len(self.actors):
            raise ValueError(f"submit_each needs one argument tuple per actor ({len(self.actors)}), got {len(args)}")
        return [a.call.remote(method, *item) for a, item in zip(self.actors, args)]

    def restart(self) -> None:
        """Kill every actor and start a fresh one in each slot (same resources, same bundle), as when a
        member of a torch.distributed group died and the whole group must start again. `on_replace` runs on
        each new actor; returns once all of them have built their objects."""
        self._check_open()
        for a in self.actors:
            ray.kill(a)
        self.actors = [self._new_actor(slot) for slot in range(len(self.actors))]
        ray.get([a.pid.remote() for a in self.actors])
        self.restarts += 1
        if self.on_replace is not None:
            for a in self.actors:
                self.on_replace(a)

    def shutdown(self, timeout_s: float = 10.0) -> None:
        """Close every hosted object (`close()`, after the call an actor is running; up to `timeout_s`;
        0: kill at once), kill the actors, and remove the placement group if the pool owns it. Safe to call
        twice."""
        self.closed = True
        if self.actors:
            if timeout_s > 0:
                refs = [a.close.remote() for a in self.actors]
                ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
            for a in self.actors:  # killed, not terminated: the placement group goes next, now
                ray.kill(a)
            self.actors = []
        if self.release_placement_group and self.placement_group is not None:
            from ray.util.placement_group import remove_placement_group

            remove_placement_group(self.placement_group)
            self.placement_group = None
