"""The fork-server answers an assert run as soon as every test has reported, and cleans up after the answer
is sent (rewards/_sandbox_server.py `settle`): what a run leaves running after its last test is still killed
before the next run starts, and a server that cannot clean up is replaced without costing the next run."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

import rewards.sandbox as sandbox_module
from rewards.sandbox import Sandbox
from tests.unit.test_sandbox import CFG, only_server_left, procs_of, run_io, wait_until

pytestmark = pytest.mark.skipif(not Path("/usr/bin/bwrap").exists(), reason="bubblewrap not installed")


# A wall limit far above what a run takes even on a loaded machine, so that "answered before it" can only mean
# the server did not wait for the run to end (its last statement sleeps past the limit).
SLOW_CFG = dataclasses.replace(CFG, timeout_s=30.0)


@pytest.fixture
def sandbox():
    sb = Sandbox(SLOW_CFG)
    yield sb
    sb.close()
    assert wait_until(lambda: not procs_of(sb)), f"left behind after close: {procs_of(sb)}"


def test_a_run_is_answered_once_its_tests_reported_and_what_it_left_running_dies(sandbox):
    # After the last test, setup statements (assignments are not tests) plant a file, then sleep far past the wall limit: the
    # verdict is complete before it, so the answer does not wait for the limit, and the sleeper is killed
    # (and its file wiped) before the next run.
    tests = ("assert f(1) == 2\nassert f(2) == 3\n"
             "_ = open('/tmp/planted', 'w').write('x')\nimport time\n_ = time.sleep(120)\n")
    r = sandbox.run("def f(x):\n    return x + 1\n", tests)
    assert r.tests == ["passed", "passed"] and r.status == "passed"
    assert r.duration_s < SLOW_CFG.timeout_s, r  # answered without waiting for the run's wall limit
    assert only_server_left(sandbox)
    r = run_io(sandbox, "import os\nprint(sorted(os.listdir('/tmp')), len([p for p in os.listdir('/proc') if p.isdigit()]))",
               "['run'] 2")
    assert r.status == "passed", r  # only the server and this run exist; nothing was planted


def test_a_run_whose_tests_did_not_all_report_still_waits_for_its_fate():
    with Sandbox(CFG) as sb:
        r = sb.run("def f(x):\n    return x + 1\n", "assert f(1) == 2\nimport time\n_ = time.sleep(120)\nassert f(2) == 3\n")
        assert r.tests == ["passed", "timeout"] and r.status == "timeout"
        assert only_server_left(sb)


def test_a_server_that_cannot_clean_up_is_replaced_and_the_next_run_is_sent_again(monkeypatch):
    # Fault injection: this server's cleanup fails after a run that left /tmp/run/FAIL behind (a real failure
    # is a wipe something resisted). The run that left it got its answer; the next one, not at fault, is
    # answered by a fresh server instead of failing with the old one's exit.
    src = sandbox_module._SERVER_SRC.replace(
        "def _cleanup():\n", "def _cleanup():\n    if os.path.exists('/tmp/run/FAIL'):\n        raise RuntimeError('injected')\n", 1)
    assert src != sandbox_module._SERVER_SRC
    monkeypatch.setattr(sandbox_module, "_SERVER_SRC", src)
    with Sandbox(CFG) as sb:
        assert run_io(sb, "open('FAIL', 'w').write('x')\nprint('ok')", "ok").status == "passed"
        assert sb.starts == 1
        r = sb.run("def f(x):\n    return x + 1\n", "assert f(1) == 2\n")
        assert r.status == "passed", r
        assert sb.starts == 2
