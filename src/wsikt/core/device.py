"""Which device a job computes on: 'auto' is a CUDA GPU when there is one, with one process per GPU.

On a node with several GPUs and no scheduler-set ``CUDA_VISIBLE_DEVICES`` (a workstation running
``profiles/local`` with ``resources: gpu=N``), each process claims a free GPU by holding an
exclusive ``flock`` on a per-GPU lock file in a directory only the user can read. The lock is
released when the process exits, however it exits, so a killed job never leaves a GPU claimed.
"""

from __future__ import annotations

import fcntl
import logging
import os
import tempfile
from pathlib import Path

import torch

log = logging.getLogger("wsikt.core.device")

_CLAIMED: dict[int, int] = {}  # GPU index → file descriptor of its held lock, open for the process's life


def gpu_lock_dir() -> Path:
    """A directory for GPU lock files that only this user can read: $XDG_RUNTIME_DIR or /tmp/wsikt-<uid>."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    path = Path(base) / "wsikt" if base else Path(tempfile.gettempdir()) / f"wsikt-{os.getuid()}"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.stat().st_uid != os.getuid():
        raise PermissionError(f"{path} belongs to another user; set XDG_RUNTIME_DIR to a directory of yours")
    os.chmod(path, 0o700)
    return path


def claim_gpu(n_gpus: int, lock_dir: Path | None = None) -> int:
    """Index of a GPU no other wsikt process of this user holds; blocks on one when all are held."""
    lock_dir = lock_dir or gpu_lock_dir()
    fds = []
    for i in range(n_gpus):
        fd = os.open(lock_dir / f"gpu{i}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fds.append(fd)
            continue
        for other in fds:
            os.close(other)
        _CLAIMED[i] = fd
        return i
    for other in fds[1:]:
        os.close(other)
    i = os.getpid() % n_gpus
    log.info("all %d GPUs are held by other wsikt processes; waiting for GPU %d", n_gpus, i)
    fd = os.open(lock_dir / f"gpu{i}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    if fds:
        os.close(fds[0])
    _CLAIMED[i] = fd
    return i


def resolve_device(device: str) -> torch.device:
    """'auto' → a CUDA GPU when available (a free one of several), else the CPU; anything else as given."""
    if device != "auto":
        return torch.device(device)
    if not torch.cuda.is_available():
        return torch.device("cpu")
    n = torch.cuda.device_count()
    if n == 1:
        return torch.device("cuda")
    return torch.device("cuda", next(iter(_CLAIMED)) if _CLAIMED else claim_gpu(n))
