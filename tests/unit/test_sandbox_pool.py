"""Sandboxes side by side (rewards/sandbox_pool.py) and sandboxes used from short-lived threads."""

import threading
import time

import pytest

from rewards.code import close_sandboxes, code_accuracy
from rewards.sandbox import Sandbox, SandboxConfig
from rewards.sandbox_pool import SandboxPool

CFG = SandboxConfig(timeout_s=5.0, cpu_s=5, memory_mb=256)
ADD = "def add(a, b):\n    return a + b\n"


@pytest.fixture(autouse=True)
def _close_sandboxes():
    yield
    close_sandboxes()


def test_a_sandbox_first_used_from_a_thread_that_ended_keeps_running():
    # bwrap --die-with-parent follows the thread that started it: started from a batch's worker thread, the
    # server used to be SIGKILLed when that thread ended, and the next run failed ("sandbox server exited").
    with Sandbox(CFG) as sb:
        t = threading.Thread(target=lambda: sb.run(ADD, "assert add(1, 2) == 3"))
        t.start()
        t.join()
        time.sleep(0.3)  # the parent-death signal, if any, has been delivered by now
        assert sb._proc.poll() is None, "the sandbox died with the thread that started it"
        assert sb.run(ADD, "assert add(2, 2) == 4").status == "passed"
        assert sb.starts == 1


def test_map_returns_results_in_order_and_uses_every_sandbox():
    with SandboxPool(CFG, size=2) as pool:
        progs = [f"def f():\n    return {i}\n" for i in range(8)]
        out = pool.map(lambda sb, i: (sb.run(progs[i], f"assert f() == {i}").status, id(sb)), list(range(8)))
        assert [s for s, _ in out] == ["passed"] * 8
        assert {sb_id for _, sb_id in out} == {id(sb) for sb in pool.sandboxes}
        # the batch's worker thread has ended: its sandbox must still be the one it started
        assert pool.map(lambda sb, i: sb.run(progs[i], f"assert f() == {i}").status, [0, 1]) == ["passed"] * 2
        assert [sb.starts for sb in pool.sandboxes] == [1, 1]


def test_runs_side_by_side_do_not_see_each_other():
    # Each sandbox has its own namespaces and /tmp: a run cannot plant a file for, or signal, a run next to it.
    planter = ("import os, time\nopen('/tmp/planted', 'w').write('x')\ntime.sleep(1.0)\n"
               "def f():\n    return 1\n")
    looker = ("import os, time\ntime.sleep(0.3)\n"
              "def f():\n    return (os.path.exists('/tmp/planted'), len([p for p in os.listdir('/proc') if p.isdigit()]))\n")
    with SandboxPool(CFG, size=2) as pool:
        out = pool.map(lambda sb, job: sb.run(*job), [(planter, "assert f() == 1"), (looker, "assert f() == (False, 2)")])
        assert [r.status for r in out] == ["passed", "passed"], [r.stderr_tail for r in out]


def test_an_error_in_one_item_reaches_the_caller():
    def fn(sb, i):
        if i == 3:
            raise KeyError("item 3")
        return sb.run(ADD, "assert add(1, 1) == 2").status

    with SandboxPool(CFG, size=2) as pool:
        with pytest.raises(KeyError, match="item 3"):
            pool.map(fn, list(range(6)))
        assert pool.map(fn, [0, 1]) == ["passed", "passed"]  # the pool is still usable


def test_code_accuracy_scores_a_batch_in_order_with_malformed_rows_none():
    comps = [f"```python\n{ADD}```", "no program here", "```python\ndef add(a, b):\n    return a - b\n```",
             f"```python\n{ADD}```"] * 3
    tests = ["assert add(1, 2) == 3\nassert add(2, 2) == 4", "assert add(1, 2) == 3", "assert add(1, 2) == 3\nassert add(0, 0) == 0",
             "this is not python ((("] * 3
    assert code_accuracy(comps, tests, config=CFG) == [1.0, 0.0, 0.5, None] * 3


def test_a_pool_needs_a_sandbox():
    with pytest.raises(ValueError, match="at least one sandbox"):
        SandboxPool(CFG, size=0)
