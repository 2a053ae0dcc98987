"""The run folder's guarantees without Ray: one owner at a time (a stale lock is taken over), stage
manifests that notice a changed or truncated checkpoint, data cached per task config and checked before
it is cached, and nothing a stage wrote ever deleted."""

import json
import os
import subprocess
import sys

import pytest

from pipelines.config import load_config
from pipelines.data import prepare_data
from pipelines.run_folder import RunFolder, RunFolderError, RunLock, why_not_finished, write_manifest
from pipelines.tasks import TaskDataError


def test_a_second_owner_is_refused_naming_the_first(tmp_path):
    with RunLock(tmp_path, command="rayzero run micro") as first:
        assert first.took_over is None
        with pytest.raises(RunFolderError) as err:
            RunLock(tmp_path).acquire()
        msg = str(err.value)
        assert f"pid {os.getpid()}" in msg and "rayzero run micro" in msg and "\n" not in msg
    with RunLock(tmp_path):  # released: free again
        pass


def test_a_lock_held_by_another_process_is_refused_and_a_dead_owners_is_taken_over(tmp_path):
    code = ("import sys, time; from pipelines.run_folder import RunLock; l = RunLock(sys.argv[1], 'holder'); "
            "l.acquire(); print('locked', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(RunFolderError, match=f"pid {proc.pid}"):
            RunLock(tmp_path).acquire()
    finally:
        proc.kill()  # our own child: dies without releasing, as after kill -9
        proc.wait()
    lock = RunLock(tmp_path)
    lock.acquire()
    try:
        assert lock.took_over and lock.took_over["pid"] == proc.pid
    finally:
        lock.release()


def _stage(folder, name="sft", content=b"weights"):
    d = folder / name
    d.mkdir(parents=True)
    (d / "model.safetensors").write_bytes(content)
    (d / "config.json").write_text("{}")
    return write_manifest(d, {"stage": name, "metrics": {"accuracy": 0.5}, "inputs": {"data": "abc"}})


def test_a_truncated_or_changed_checkpoint_is_not_finished(tmp_path):
    _stage(tmp_path)
    stage = tmp_path / "sft"
    assert why_not_finished(stage, {"data": "abc"}) is None
    assert "input 'data' changed" in why_not_finished(stage, {"data": "xyz"})
    with (stage / "model.safetensors").open("r+b") as f:
        f.truncate(3)
    assert "model.safetensors does not match the sha256" in why_not_finished(stage, {"data": "abc"})
    (stage / "model.safetensors").unlink()
    assert "is missing" in why_not_finished(stage, {"data": "abc"})


def test_set_aside_keeps_everything(tmp_path):
    _stage(tmp_path)
    moved = RunFolder(tmp_path).set_aside(tmp_path / "sft")
    assert not (tmp_path / "sft").exists() and (moved / "model.safetensors").read_bytes() == b"weights"
    _stage(tmp_path)
    again = RunFolder(tmp_path).set_aside(tmp_path / "sft")
    assert again != moved and moved.exists() and again.exists()


def _rows(path, n, bad_row=None):
    lines = []
    for i in range(n):
        row = {"prompt": f"{i}+1?", "answer": str(i + 1), "completion": f"<think>{i}+1={i + 1}.</think><answer>{i + 1}</answer>"}
        lines.append(json.dumps(row).encode())
    if bad_row is not None:
        lines[bad_row] = b'{"prompt": "caf\xe9", "answer": "1"}'  # latin-1, not UTF-8
    path.write_bytes(b"\n".join(lines) + b"\n")


def test_bad_data_is_refused_before_caching_and_a_fixed_file_then_works(tmp_path):
    bad, good = tmp_path / "bad.jsonl", tmp_path / "good.jsonl"
    _rows(bad, 40, bad_row=7)
    _rows(good, 40)
    out = [f"run.output_dir={tmp_path / 'runs'}", "task.name=jsonl", "task.num_cold_start=8", "task.num_train=8",
           "task.num_heldout=8"]
    cfg = load_config("micro", out + [f"task.path={bad}"])
    with pytest.raises(TaskDataError) as err:
        prepare_data(cfg, say=lambda _: None)
    assert f"{bad} row 8: not UTF-8" in str(err.value)
    assert not (cfg.run_dir / "data").exists(), "nothing cached from a bad file"
    sizes, digest = prepare_data(load_config("micro", out + [f"task.path={good}"]), say=lambda _: None)
    assert sizes == {"cold_start": 8, "train": 8, "heldout": 8} and digest


def test_data_of_another_task_config_is_rebuilt_and_the_old_kept(tmp_path):
    base = [f"run.output_dir={tmp_path}"]
    notes = []
    _, first = prepare_data(load_config("micro", base), say=notes.append)
    _, same = prepare_data(load_config("micro", base), say=notes.append)
    assert same == first and not notes, "an unchanged task reuses its cached data"
    _, other = prepare_data(load_config("micro", base + ["task.max_value=6"]), say=notes.append)
    assert other != first and any("moved to data.stale-" in n for n in notes)
    assert list(tmp_path.glob("micro/data.stale-*/heldout.jsonl")), "the old splits are kept aside"


def test_grpo_resumes_from_the_newest_checkpoint_that_was_saved_to_the_end(tmp_path):
    from pipelines.stages.grpo_learner import latest_checkpoint

    assert latest_checkpoint(tmp_path) is None
    for step in (2, 4, 6, 8):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "model.safetensors").write_bytes(b"w")
    for step in (2, 4):
        (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text('{"global_step": %d}' % step)
    (tmp_path / "checkpoint-6" / "trainer_state.json").write_text('{"global_st')  # cut short mid-write
    # checkpoint-8 stopped before trainer_state.json (the Trainer writes it last); 10 sorts after 8 as a number
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint-4"
    (tmp_path / "checkpoint-10").mkdir()
    (tmp_path / "checkpoint-10" / "trainer_state.json").write_text('{"global_step": 10}')
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint-10"
