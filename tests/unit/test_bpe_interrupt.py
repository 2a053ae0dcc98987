"""Tokenizer training answers Ctrl-C within seconds and leaves no process behind (rl/bpe.py): trained in
Rust on the main thread, one long word (a prompt without spaces) kept it busy for minutes with Ctrl-C
unanswered."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import ROOT

SCRIPT = """
import random, string, sys
from rl.modeling import train_tokenizer
word = "".join(random.Random(0).choices(string.ascii_letters, k=1_500_000))  # minutes of BPE training
print("training", flush=True)
try:
    train_tokenizer([word, "What is 1+2?"], 320)
    print("finished", flush=True)
except KeyboardInterrupt:
    print("interrupted", flush=True)
    sys.exit(130)
"""


def _children(pid: int) -> list[int]:
    found = []
    for entry in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry))
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def test_tokenizer_training_stops_within_seconds_on_ctrl_c(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT], cwd=tmp_path, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert proc.stdout.readline().strip() == "training"
        time.sleep(3)  # well inside the training (the child has started and works)
        children = _children(proc.pid)
        proc.send_signal(signal.SIGINT)
        start = time.monotonic()
        out, _ = proc.communicate(timeout=10)  # on the code before rl/bpe.py: still training minutes later
        assert time.monotonic() - start < 5
        assert proc.returncode == 130 and out.strip() == "interrupted"
        assert children and not any(map(_alive, children)), "the training child is stopped with it"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


HANG_SCRIPT = """
import rl.bpe as bpe
bpe.POLL_S = 0.001  # the first wait times out before the child has read its job, as on a loaded machine
texts = [f"Mia has {i % 40} pens. She buys {i % 9} more. How many pens does Mia have now?" for i in range(8000)]
print(len(bpe.train_bpe(texts, 320, ["<pad>"])) > 0, flush=True)
"""


def test_a_job_larger_than_the_pipe_reaches_the_child_when_the_first_wait_times_out(tmp_path):
    # ~640 KB of job: on the code that passed it through communicate(input=...), the child waited on its
    # stdin forever (the retried communicate never wrote the rest); here it trains in a few seconds.
    proc = subprocess.Popen([sys.executable, "-c", HANG_SCRIPT], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert out.strip() == "True"
