"""Nothing lost, ever (issue 12), through the real CLI on a real local Ray, on one run folder: a second run on
the busy folder is refused, Ctrl-C stops a run with one line and it resumes, so does a SIGTERM mid-GRPO, a
kill -9 of the resumed run's driver leaves no learner or Ray behind and the next resume reports what an
uninterrupted run does, no Ray session folder is left, a truncated checkpoint is noticed and redone (the old
one kept), a stage that produces nothing ends in one line with the finished stages reported; and user
mistakes, a full disk and a signal during data preparation end in one line (issue 25). Each test's Ray lives
in its own RAY_TMPDIR, so the processes a test checks (or cleans up) are its own."""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.e2e.helpers import ctrl_c_as_in_a_terminal

pytestmark = pytest.mark.slow
QUICK = ["run.num_cpus=2", "distill.enabled=false"]
# A micro GRPO step takes ~0.1 s, and a run goes on for a moment after a signal (until its driver raises, or Ray
# notices a killed driver and stops its learner): each interrupted run may save a few checkpoints past the one it
# was signalled at. STEPS leaves room for three interruptions to stop well short of the last step.
STEPS = 30


def _env(ray_tmp: str) -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "RAY_TMPDIR": ray_tmp}


def _cmd(out: Path, name: str, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "pipelines.cli", "run", "micro", f"run.name={name}", f"run.output_dir={out}", *overrides]


@pytest.fixture
def ray_tmp():
    path = tempfile.mkdtemp(prefix="rz-", dir="/tmp")  # short: Ray's socket paths have a length limit
    yield path
    _kill_mentioning(path)  # anything of ours a failed test left behind
    shutil.rmtree(path, ignore_errors=True)


def _procs_mentioning(text: str) -> list[int]:
    found = []
    for pid in (int(p) for p in os.listdir("/proc") if p.isdigit()):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline and pid != os.getpid():
            found.append(pid)
    return found


def _kill_mentioning(text: str) -> None:
    for pid in _procs_mentioning(text):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _next_checkpoint(run: Path, every: int = 2) -> str:
    """The first checkpoint the next resume of `run` will save (`grpo.save_steps=every`)."""
    saved = [int(p.name.rsplit("-", 1)[1]) for p in (run / "grpo.checkpoints").glob("checkpoint-*")]
    return f"checkpoint-{max(saved, default=0) + every}"


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"the run ended before {path.name} appeared"
        assert time.monotonic() < deadline, f"no {path} after {timeout:g}s"
        time.sleep(0.2)


def test_one_run_folder_through_a_busy_refusal_ctrl_c_kill_9_and_a_changed_checkpoint(tmp_path, ray_tmp, micro, cli):
    """One run folder through its life: a second run refused while the first works; Ctrl-C, then a resume
    whose driver is killed with -9 (its learner and local Ray stop with it); the next resume finishes with
    the whole history and reports what an uninterrupted run does; then a truncated checkpoint is noticed
    and redone (the old one kept aside)."""
    args = (*QUICK, f"grpo.max_steps={STEPS}", "grpo.save_steps=2")
    run = tmp_path / "c2"
    log = tmp_path / "first.log"
    with log.open("w") as err:  # a file, not a pipe: nobody reads while we wait
        first = subprocess.Popen(_cmd(tmp_path, "c2", *args), cwd=ROOT, env=_env(ray_tmp), stdout=subprocess.DEVNULL,
                                 stderr=err, start_new_session=True, preexec_fn=ctrl_c_as_in_a_terminal)
    _wait_for(run / "sft.partial", first)  # the first run is at work
    second = subprocess.run(_cmd(tmp_path, "c2", *args), cwd=ROOT, env=_env(ray_tmp), capture_output=True, text=True,
                            timeout=120)
    assert second.returncode == 2
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and f"is in use by pid {first.pid}" in lines[0], second.stderr
    assert first.poll() is None, "the first run goes on"
    _wait_for(run / "grpo.checkpoints" / "checkpoint-2", first)
    os.killpg(first.pid, signal.SIGINT)  # Ctrl-C in the terminal: the whole foreground process group
    first.wait(timeout=120)
    err = log.read_text()
    assert first.returncode == 130, err[-2000:]
    assert "interrupted during stage grpo" in err.strip().splitlines()[-1] and "resume" in err.strip().splitlines()[-1]
    assert not (run / ".rayzero.lock").exists() and (run / "sft" / "manifest.json").exists()

    # Each resume is stopped once it has saved a checkpoint of its own: the interrupted run may have saved past
    # checkpoint-2 before it stopped, and a signal sent before the resumed driver is at work finds no handler.
    _resume_and_sigterm(tmp_path, run, args, ray_tmp, at=_next_checkpoint(run))
    complete = _resume_and_kill_9(tmp_path, run, args, ray_tmp, at=_next_checkpoint(run))

    again = subprocess.run(_cmd(tmp_path, "c2", *args), cwd=ROOT, env=_env(ray_tmp), capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "sft: already finished, skipped" in again.stdout and "config differs" not in again.stdout
    m = json.loads((run / "grpo" / "manifest.json").read_text())["metrics"]
    # From the newest checkpoint saved to the end: the one being saved may have been cut short by the kill.
    assert m["steps"] == STEPS and Path(m["resumed_from"]).name == complete.name
    assert int(complete.name.rsplit("-", 1)[1]) >= 4
    steps = [json.loads(line)["step"] for line in (run / "grpo" / "history.jsonl").open() if "reward" in line]
    assert steps == list(range(1, STEPS + 1)), "the resumed history holds every step"
    # The twice-resumed report has what an uninterrupted run's has (the session's shared micro run): every
    # key, the rewards, the FLOPs, the same plots.
    a = json.loads((run / "report.json").read_text())["stages"]["grpo"]
    b = micro.report["stages"]["grpo"]
    assert set(a) == set(b) and a["steps"] == STEPS
    for key in ("reward_first", "reward_last", "flops", "num_tokens"):
        assert a[key] is not None and b[key] is not None, key
    plots = lambda d: {p.name for p in (d / "plots").glob("*.png")}  # noqa: E731
    assert plots(run) == plots(micro.run_dir) and "reward.png" in plots(run)
    # Every local Ray this folder's runs started (interrupted, killed, finished) left no session folder behind.
    _wait_until(lambda: not list(Path(ray_tmp).glob("ray/session_2*")), 30, "Ray session folders are removed")
    _truncated_checkpoint_is_redone(tmp_path, run, args, ray_tmp, cli)


def _wait_until(done, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"not within {timeout:g}s: {what}"
        time.sleep(0.5)


def _resume_and_sigterm(tmp_path: Path, run: Path, args, ray_tmp: str, at: str) -> None:
    """Resume the run, and SIGTERM its driver only (as `kill <pid>`, systemd or a batch scheduler do) once GRPO
    saved `at`: the same one line and exit status 130 as Ctrl-C, the lock released, nothing left running."""
    log = tmp_path / "sigterm.log"
    with log.open("w") as err:
        proc = subprocess.Popen(_cmd(tmp_path, run.name, *args), cwd=ROOT, env=_env(ray_tmp), stdout=subprocess.DEVNULL,
                                stderr=err)
    _wait_for(run / "grpo.checkpoints" / at, proc)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)
    lines = log.read_text().strip().splitlines()
    assert proc.returncode == 130, lines[-30:]  # before the fix: 1, and Ray's shutdown traceback
    assert "interrupted during stage grpo" in lines[-1] and "resume" in lines[-1], lines[-30:]
    assert not any("Traceback" in line for line in lines), lines[-30:]
    assert not (run / ".rayzero.lock").exists()
    _wait_until(lambda: not _procs_mentioning(ray_tmp), 60, "the SIGTERMed run's learner and local Ray stop")


def _resume_and_kill_9(tmp_path: Path, run: Path, args, ray_tmp: str, at: str) -> Path:
    """Resume the run, and kill -9 its driver (only the driver, as a user's `kill -9 <pid>` does) once GRPO
    started saving `at`: nothing of that run may live on or train on. Returns the newest checkpoint that was
    saved to the end."""
    assert int(at.rsplit("-", 1)[1]) < STEPS, f"the interrupted runs went on to {at}: no step left to kill"
    log = tmp_path / "killed.log"
    with log.open("w") as err:
        killed = subprocess.Popen(_cmd(tmp_path, run.name, *args), cwd=ROOT, env=_env(ray_tmp),
                                  stdout=subprocess.DEVNULL, stderr=err)
    try:
        _wait_for(run / "grpo.checkpoints" / at, killed)
    except AssertionError as e:
        raise AssertionError(f"{e}\n{log.read_text()[-3000:]}") from None
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    deadline = time.monotonic() + 60
    while _procs_mentioning(ray_tmp) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _procs_mentioning(ray_tmp), "the killed driver's learner and local Ray must stop with it"
    saved = sorted(p.name for p in (run / "grpo.checkpoints").glob("checkpoint-*"))
    time.sleep(3)
    assert sorted(p.name for p in (run / "grpo.checkpoints").glob("checkpoint-*")) == saved, "nothing trains on"
    assert f"checkpoint-{STEPS}" not in saved, f"killed at {at}, the run still finished: {saved}"
    from pipelines.stages.grpo_learner import latest_checkpoint

    return latest_checkpoint(run / "grpo.checkpoints")


def _truncated_checkpoint_is_redone(tmp_path, run, args, ray_tmp, cli):
    weights = run / "sft" / "model.safetensors"
    size = weights.stat().st_size
    with weights.open("r+b") as f:
        f.truncate(size // 2)
    again = subprocess.run(_cmd(tmp_path, run.name, *args), cwd=ROOT, env=_env(ray_tmp), capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "sft: redoing it" in again.stdout and "does not match the sha256" in again.stdout
    kept = list(run.glob("sft.stale-*"))
    assert len(kept) == 1 and (kept[0] / "model.safetensors").stat().st_size == size // 2
    assert weights.stat().st_size == size
    # Retrained with the same seed, SFT is bit-identical, so GRPO (trained from those weights) is kept...
    assert "grpo: already finished" in again.stdout
    # ...but a start checkpoint that really changed makes GRPO train again.
    from pipelines.run_folder import read_manifest, write_manifest

    shutil.copy(run / "grpo" / "model.safetensors", weights)
    write_manifest(run / "sft", {k: v for k, v in read_manifest(run / "sft").items() if k not in ("files", "digest")})
    # This run also distills, from traces no prompt can give (at least 16 of at most 16 tokens, ending in a
    # verified answer): a stage that produces nothing ends the run in one line, with the report of the stages
    # that finished.
    for name in ("report.json", "report.md"):
        (run / name).unlink()
    nothing = ("distill.enabled=true", "distill.num_prompts=4", "distill.max_new_tokens=16", "distill.min_tokens=16")
    third = subprocess.run(_cmd(tmp_path, run.name, *args, *nothing), cwd=ROOT, env=_env(ray_tmp), capture_output=True,
                           text=True, timeout=600)
    lines = third.stderr.strip().splitlines()
    assert third.returncode == 2 and "distill: no verified traces" in lines[-1], third.stderr[-3000:]
    assert "the stages that finished (sft, grpo) are reported in" in lines[-1]
    assert not any("Traceback" in line for line in lines), third.stderr[-3000:]
    assert "sft: already finished" in third.stdout
    assert "grpo: redoing it" in third.stdout and "input 'init' changed" in third.stdout
    assert len(list(run.glob("grpo.stale-*"))) == 1
    report = json.loads((run / "report.json").read_text())  # before the fix: none
    assert set(report["stages"]) == {"sft", "grpo"} and report["stages"]["grpo"]["steps"] == STEPS
    assert "grpo" in (run / "report.md").read_text()
    res = cli("eval", str(run / "sft"), "--out", str(tmp_path / "missing" / "r.json"), cwd=tmp_path, timeout=120)
    assert res.returncode == 2 and res.stderr.strip().splitlines() == [
        f"rayzero: error: --out {tmp_path / 'missing' / 'r.json'}: folder {tmp_path / 'missing'} does not exist"]


def test_user_mistakes_end_in_one_line(tmp_path, ray_tmp, cli):
    blocker = tmp_path / "afile"
    blocker.write_text("not a folder")
    cases = [
        (["run", "micro", f"run.output_dir={blocker}/runs"], "run.output_dir: cannot write"),
        (["eval", str(tmp_path)], "not a checkpoint folder"),
    ]
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text("{}")
    cases.append((["eval", str(no_weights)], "no weights"))
    for args, needle in cases:
        res = cli(*args, cwd=tmp_path, timeout=120)
        lines = res.stderr.strip().splitlines()
        assert res.returncode == 2 and len(lines) == 1 and needle in lines[0], (args, res.stderr[-2000:])
    assert blocker.read_text() == "not a folder"


@pytest.fixture
def small_disk(tmp_path):
    """A real 256 KiB file system (tmpfs; mounting needs root): room for the micro run's data and tokenizer,
    not for its SFT checkpoint."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True,
                         text=True)
    if res.returncode:
        pytest.skip(f"cannot mount a small tmpfs here: {res.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_stops_the_run_in_one_line_and_keeps_what_was_written(small_disk, ray_tmp):
    res = subprocess.run(_cmd(small_disk, "full", *QUICK, "sft.epochs=1", "grpo.max_steps=1"), cwd=ROOT,
                         env=_env(ray_tmp), capture_output=True, text=True, timeout=600)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2, res.stderr[-3000:]  # before the fix: 1, after a Ray traceback of ~40-70 lines
    assert lines[-1].startswith("rayzero: error: no space left on device writing ") and "during stage sft" in lines[-1]
    assert f"largest in {small_disk}: " in lines[-1] and "free there" in lines[-1], lines[-1]
    assert not any("Traceback" in line for line in lines), res.stderr[-3000:]
    run = small_disk / "full"
    assert (run / "data" / "manifest.json").exists() and (run / "tokenizer" / "tokenizer.json").exists()
    assert (run / "sft.partial").is_dir() and not (run / ".rayzero.lock").exists()


def test_data_preparation_answers_sigterm_within_seconds(tmp_path):
    """One prompt without spaces makes tokenizer training run for minutes (quadratic in a word's length);
    SIGTERM (or Ctrl-C) stops it within seconds, in one line, and releases the run folder."""
    import random
    import string

    rows = [{"prompt": f"What is {a}+{b}?", "answer": str(a + b),
             "completion": f"<think>{a}+{b}</think><answer>{a + b}</answer>"} for a in range(1, 9) for b in range(1, 9)]
    rows[3]["prompt"] = "Sum up: " + "".join(random.Random(0).choices(string.ascii_letters, k=1_500_000))
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    log = tmp_path / "prep.log"
    with log.open("w") as err:
        proc = subprocess.Popen(_cmd(tmp_path, "long", "task.name=jsonl", f"task.path={data}",
                                     "task.max_prompt_chars=0"), cwd=ROOT,  # the long prompt must reach tokenizer training
                                env=_env(str(tmp_path)), stdout=subprocess.DEVNULL, stderr=err)
    try:
        _wait_for(tmp_path / "long" / "data" / "heldout.jsonl", proc)  # the tokenizer is trained right after
        time.sleep(3)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)  # before the fix: still training minutes later
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines = log.read_text().strip().splitlines()
    assert proc.returncode == 130 and len(lines) == 1, lines[-20:]
    assert lines[0].startswith("rayzero: interrupted while preparing the data"), lines
    assert not (tmp_path / "long" / ".rayzero.lock").exists()
    assert not (tmp_path / "long" / "data" / "manifest.json").exists()  # the next run prepares the data again
