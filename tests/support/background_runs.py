"""Long snakemake runs started in the background at the session's first test.

The demo run and the SLURM run spend much of their wall time waiting (job start-up, the SLURM
queue, one torch import per per-slide job), so starting them before the unit tests lets that wait
overlap other work. Output goes to log files, not pipes, so a chatty run can never block on a
full pipe while nobody reads it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path


def snakemake_exe() -> str:
    """The snakemake of this Python environment."""
    return str(Path(sys.executable).with_name("snakemake"))


@dataclass
class BackgroundRun:
    """One snakemake process running in ``workdir``; stdout and stderr go to ``log``."""

    workdir: Path
    log: Path
    process: subprocess.Popen
    started: float = field(default_factory=time.monotonic)

    @classmethod
    def start(cls, workdir: Path, args: list[str], env: dict[str, str] | None = None) -> "BackgroundRun":
        log = workdir.parent / f"{workdir.name}.snakemake.log"
        with open(log, "w") as out:  # the child keeps its own handle
            proc = subprocess.Popen([snakemake_exe(), *args], cwd=workdir, env=env or dict(os.environ),
                                    stdout=out, stderr=subprocess.STDOUT, text=True)
        return cls(workdir, log, proc)

    def wait(self, timeout: float) -> tuple[int, str, float]:
        """Exit code, the run's output and its wall time; the process is killed past ``timeout`` (from start)."""
        left = max(1.0, timeout - (time.monotonic() - self.started))
        try:
            rc = self.process.wait(timeout=left)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            rc = -9
        return rc, self.log.read_text(errors="replace"), time.monotonic() - self.started

    def stop(self) -> None:
        """Kill the run if it is still going (a session that ends early leaves no stray snakemake)."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
