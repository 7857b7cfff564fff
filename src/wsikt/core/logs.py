"""One log file per Snakemake job: route Python logging, warnings and stderr of a script there."""

from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def log_to(path: str | None) -> Iterator[logging.Logger]:
    """Send logging records, stderr and stdout of the block to ``path`` (append), then restore.

    Exceptions are logged with their traceback and re-raised, so the job fails and the log says why.
    """
    logger = logging.getLogger("wsikt")
    if path is None:
        logging.basicConfig(level=logging.INFO)
        yield logger
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", buffering=1) as fh:
        handler = logging.StreamHandler(fh)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root = logging.getLogger()
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        old_out, old_err = sys.stdout, sys.stderr
        sys.stdout = sys.stderr = fh
        try:
            yield logger
        except BaseException as exc:
            logger.error("%s: %s", type(exc).__name__, exc, exc_info=True)
            raise
        finally:
            sys.stdout, sys.stderr = old_out, old_err
            root.removeHandler(handler)
