"""Between two runs in the sandbox server (rewards/_sandbox_server.py, which this file is prepended to): kill every
process of the namespace but the server, reap them, wipe the writable tmpfs mounts and remove SysV IPC objects,
so nothing a run starts or leaves behind survives into the next run. stdlib only (runs under /usr/bin/python3).
"""

import ctypes
import os
import shutil
import signal

WRITABLE = ("/tmp", "/dev/shm")
_libc = ctypes.CDLL(None, use_errno=True)


def _wipe(path):
    def unlock(_func, p, _exc):  # a run may chmod 000 its own dirs; we are the same uid, so undo it
        try:
            os.chmod(os.path.dirname(p), 0o700)
            os.chmod(p, 0o700)
            if os.path.isdir(p) and not os.path.islink(p):
                shutil.rmtree(p, onerror=unlock_once)
            else:
                os.unlink(p)
        except OSError:
            pass

    def unlock_once(_func, p, _exc):
        try:
            os.chmod(p, 0o700)
            shutil.rmtree(p, ignore_errors=True) if os.path.isdir(p) else os.unlink(p)
        except OSError:
            pass

    for name in os.listdir(path):
        p = os.path.join(path, name)
        if os.path.isdir(p) and not os.path.islink(p):
            shutil.rmtree(p, onerror=unlock)
        else:
            try:
                os.unlink(p)
            except OSError:
                pass
    if os.listdir(path):  # something resisted deletion: never hand a dirty sandbox to the next run
        raise RuntimeError(f"could not wipe {path}")


def _remove_sysv_ipc():
    # SysV objects outlive processes; RLIMIT_MSGQUEUE=0 already blocks POSIX queues, /dev/shm is wiped.
    for kind, fn in (("shm", "shmctl"), ("msg", "msgctl"), ("sem", "semctl")):
        try:  # raw reads: a text-mode open per file per run is a measurable share of a short run
            fd = os.open(f"/proc/sysvipc/{kind}", os.O_RDONLY)
        except OSError:
            continue
        try:
            chunks = []
            while chunk := os.read(fd, 65536):
                chunks.append(chunk)
        finally:
            os.close(fd)
        rows = b"".join(chunks).splitlines()[1:]
        for row in rows:
            ident = int(row.split()[1])
            if kind == "sem":
                _libc.semctl(ident, 0, 0)  # IPC_RMID == 0
            else:
                getattr(_libc, fn)(ident, 0, None)


def _cleanup():
    """Kill every process in the namespace but us, reap them, wipe what runs could write."""
    try:
        os.kill(-1, signal.SIGKILL)  # from PID 1: every process in this PID namespace except itself
    except ProcessLookupError:
        pass
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            break
    for path in WRITABLE:
        _wipe(path)
    _remove_sysv_ipc()
