"""A full disk found in the shapes it reaches the driver (pipelines/faults.py), from a real ENOSPC where the
machine allows one (/dev/full: every write fails with ENOSPC)."""

import errno
import os

import pytest

from pipelines.faults import disk_full_error, no_space


def _real_enospc() -> OSError:
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full here")
    try:
        with open("/dev/full", "w") as f:
            f.write("x")
            f.flush()
    except OSError as e:
        return e
    raise AssertionError("/dev/full accepted a write")


class Wrapped(RuntimeError):
    """How Ray hands a worker's exception to the driver: the original as an attribute (RayTaskError.cause,
    Ray Train's worker_failures)."""

    def __init__(self, failures):
        super().__init__("Training failed due to worker errors")
        self.worker_failures = failures


def test_a_full_disk_is_found_through_causes_wrappers_and_messages(tmp_path):
    enospc = _real_enospc()
    assert enospc.errno == errno.ENOSPC
    assert no_space(enospc) is enospc
    try:
        try:
            raise enospc
        except OSError as e:
            raise RuntimeError("while saving the checkpoint") from e
    except RuntimeError as outer:
        assert no_space(outer) is enospc
    assert no_space(Wrapped({0: enospc})) is enospc
    # safetensors' Rust error says it only in its text
    rust = RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)")
    assert no_space(Wrapped({1: rust})) is rust
    assert no_space(RuntimeError("CUDA out of memory")) is None
    assert no_space(OSError(errno.EACCES, "Permission denied")) is None


def test_the_line_names_the_path_its_free_space_and_what_to_free(tmp_path):
    (tmp_path / "runs" / "old" / "grpo.checkpoints").mkdir(parents=True)
    (tmp_path / "runs" / "old" / "grpo.checkpoints" / "w.bin").write_bytes(b"0" * 300_000)
    (tmp_path / "runs" / "me").mkdir()
    err = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "runs" / "me" / "sft.partial" / "x"))
    line = str(disk_full_error(Wrapped({0: err}), tmp_path / "runs", tmp_path / "runs" / "me", "sft"))
    assert "\n" not in line
    assert line.startswith(f"no space left on device writing {tmp_path / 'runs' / 'me' / 'sft.partial' / 'x'} "
                           "(during stage sft; ")
    assert f"largest in {tmp_path / 'runs'}: old/grpo.checkpoints 293.0 KB" in line
    assert "run the same command again to resume" in line
    assert disk_full_error(ValueError("bad"), tmp_path, tmp_path, "sft") is None


def test_the_watchdog_removes_its_session_folder_unless_kept(tmp_path):
    from cluster.lifetime import KEEP_MARKER, remove_session

    ours, kept, other = (tmp_path / "ray" / f"session_2026_{n}" for n in ("ours", "kept", "other"))
    for d in (ours, kept, other):
        (d / "logs").mkdir(parents=True)
    (kept / KEEP_MARKER).touch()
    (tmp_path / "ray" / "session_latest").symlink_to(ours)
    remove_session(str(ours))
    remove_session(str(kept))
    assert not ours.exists() and not (tmp_path / "ray" / "session_latest").is_symlink()
    assert (kept / "logs").is_dir() and (other / "logs").is_dir()
