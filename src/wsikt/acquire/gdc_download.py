"""Download one GDC file resumably and verified, under an exclusive lock so two downloaders never share a file.

Downloads stream to ``<dest>.partial``, resume with HTTP ``Range``, retry with exponential backoff
(honouring ``Retry-After``), verify size and md5, flush the verified bytes to disk, rename atomically
onto ``dest`` and verify ``dest`` again: a file at ``dest`` is always complete and verified. The
whole download holds ``fcntl.flock`` on ``<dest>.lock``, so a second downloader of the same file
(two working directories sharing a slide folder, a job left running by a killed Snakemake) waits
and then finds the file complete.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pandas as pd
import requests
import urllib3

from wsikt.acquire.gdc import TIMEOUT_S, TOKEN_HELP, GDCAccessError, GDCError, md5_file, redact, retry_after_s

logger = logging.getLogger(__name__)

_FILE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
# Network reads are at most this big: a body cut mid-read loses only the bytes of the read in flight.
_READ_BYTES = 64 * 1024


class _Retryable(Exception):
    """Internal: this attempt failed transiently; ``wait_s`` is a server-requested delay, if any."""

    def __init__(self, reason: str, wait_s: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.wait_s = wait_s


def lock_path(dest: str | os.PathLike) -> Path:
    """The lock file of a download: ``<dest>.lock`` next to the target (removed when the download ends)."""
    dest = Path(dest)
    return dest.with_name(dest.name + ".lock")


def _same_file(fd: int, path: Path) -> bool:
    """True if ``path`` still names the file open as ``fd`` (a holder removes its lock file before unlocking)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (st.st_dev, st.st_ino)


@contextlib.contextmanager
def exclusive_lock(path: Path, what: str) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` for the block, waiting for another holder; remove it at the end.

    The holder unlinks the lock file while still holding it; a waiter that then gets the lock on the
    unlinked file sees it is stale and locks the new one, so two processes never both hold it.
    """
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                logger.info("%s: another process is downloading it (%s is locked); waiting for it", what, path)
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError as exc:
                raise GDCError(f"{path}: cannot lock it ({exc.strerror}); put the folder on a file system with file locks") from None
            if _same_file(fd, path):
                break
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    try:
        yield
    finally:
        path.unlink(missing_ok=True)
        os.close(fd)


def _fsync(path: Path) -> None:
    """Flush a file's (or a folder's) data to disk, so a crash after the rename cannot leave a short file."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _verified(path: Path, md5: str, size: int) -> bool:
    """True if ``path`` has exactly ``size`` bytes and the expected md5."""
    return path.is_file() and path.stat().st_size == size and md5_file(path) == md5


def _publish(partial: Path, dest: Path, md5: str, size: int) -> None:
    """Verify ``partial``, flush it to disk, rename it onto ``dest`` and verify ``dest`` again.

    A wrong md5 deletes the partial; a ``dest`` that no longer verifies after the rename (a writer
    that ignored the lock) is deleted. Both are retried as a failed attempt.
    """
    if partial.stat().st_size != size:  # pragma: no cover - _attempt raises on a short or long body
        raise _Retryable(f"size {partial.stat().st_size} != expected {size}")
    got = md5_file(partial)
    if got != md5:
        partial.unlink()
        raise _Retryable(f"md5 mismatch (got {got}, expected {md5}); partial deleted")
    _fsync(partial)
    os.replace(partial, dest)
    _fsync(dest.parent)
    if not _verified(dest, md5, size):
        dest.unlink(missing_ok=True)
        raise _Retryable(f"{dest.name} changed after the rename (another writer ignored {lock_path(dest).name}); deleted")


def download_file(
    base_url: str,
    file_id: str,
    dest: str | os.PathLike,
    md5: str,
    size: int,
    token: str | None = None,
    session: requests.Session | None = None,
    max_retries: int = 5,
    backoff_s: float = 0.5,
    chunk: int = 1 << 20,
    progress: Callable[[int, int], None] | None = None,
    max_wait_s: float = 60.0,
    timeout: float = TIMEOUT_S,
) -> dict[str, Any]:
    """Download one GDC file to ``dest`` resumably and verified; returns bytes_transferred, resumed, attempts.

    Holds an exclusive lock on ``<dest>.lock`` throughout (a second caller waits, then finds ``dest``
    complete). Streams to ``<dest>.partial`` and resumes it with ``Range: bytes=N-``; a 200 answer to a
    range request restarts from 0. Connection errors, truncated bodies, 5xx and 429 are retried up to
    ``max_retries`` times (so at most ``max_retries + 1`` attempts) with backoff ``backoff_s * 2**k``
    or the server's ``Retry-After``, both capped at ``max_wait_s``. An md5 mismatch deletes the
    partial and counts as an attempt. 401/403/404 are not retried. ``chunk`` is the write buffer (a
    killed process loses at most that much progress); network reads are at most 64 KiB so a cut body
    loses little. ``progress(done, size)`` is called after each read.
    """
    dest = Path(dest)
    md5 = md5.lower()
    if not _FILE_ID_RE.match(file_id):
        raise ValueError(f"file_id {file_id!r} is not a GDC file id (letters, digits, '-', '.', '_'); check the sample sheet")
    if size < 0:
        raise ValueError(f"{file_id}: size={size} must be >= 0; check the sample sheet")
    dest.parent.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"file_id": file_id, "bytes_transferred": 0, "resumed": False, "attempts": 0}
    with exclusive_lock(lock_path(dest), file_id):
        if dest.exists():
            if _verified(dest, md5, size):
                logger.info("%s: %s already complete, skipping", file_id, dest)
                return summary
            logger.warning("%s: %s exists but has the wrong size or md5; downloading it again", file_id, dest)
            dest.unlink()
        partial = dest.with_name(dest.name + ".partial")
        url = f"{base_url.rstrip('/')}/data/{file_id}"
        session = session or requests.Session()
        base_headers = {"X-Auth-Token": token} if token else {}
        while True:
            summary["attempts"] += 1
            try:
                _attempt(session, url, file_id, partial, size, base_headers, chunk, progress, summary, timeout)
                _publish(partial, dest, md5, size)
                logger.info("%s: downloaded %s (%d bytes, %d attempt(s))", file_id, dest, size, summary["attempts"])
                return summary
            except _Retryable as exc:
                last = redact(exc.reason, token)
                if summary["attempts"] > max_retries:
                    raise GDCError(
                        f"{file_id}: download to {dest} failed after {summary['attempts']} attempt(s); last error: {last}. "
                        "Rerun later (a .partial is resumed) or check the GDC status page"
                    ) from None
                wait = exc.wait_s if exc.wait_s is not None else backoff_s * 2 ** (summary["attempts"] - 1)
                wait = min(max(wait, 0.0), max_wait_s)
                logger.warning("%s: attempt %d failed (%s); retrying in %.2f s", file_id, summary["attempts"], last, wait)
                time.sleep(wait)


def _body_blocks(resp: requests.Response, amt: int) -> Iterator[bytes]:
    """Yield the raw body as it arrives; a cut connection raises requests.ConnectionError after the last good bytes.

    ``read1`` returns what is already received instead of waiting to fill ``amt``, so bytes before a
    cut are kept for the resume; older urllib3 without ``read1`` falls back to ``iter_content``.
    """
    raw = resp.raw
    if not hasattr(raw, "read1"):
        yield from resp.iter_content(chunk_size=amt)
        return
    while True:
        try:
            block = raw.read1(amt, decode_content=False)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise requests.ConnectionError(type(exc).__name__) from None
        if not block:
            return
        yield block


def _check_status(resp: requests.Response, file_id: str, partial: Path, offset: int, size: int) -> int:
    """The offset the body starts at (``offset`` for a 206, 0 for a 200), or raise for the status.

    401/403/404 and other statuses are final (GDCError with the fix); 416, 429, 5xx and a 206 that
    does not continue ``partial`` are transient (_Retryable, the partial dropped where it cannot be continued).
    """
    status = resp.status_code
    if status in (401, 403):
        raise GDCAccessError(
            f"{file_id}: GDC answered {status}: the token is missing, expired or lacks access to this controlled data; "
            f"{TOKEN_HELP}"
        )
    if status == 404:
        raise GDCError(f"{file_id}: not found on GDC (404); check the file_id in the sample sheet and the data release")
    if status == 416:
        partial.unlink(missing_ok=True)
        raise _Retryable(f"HTTP 416 for bytes={offset}- (partial longer than the server's file?); restarting from 0")
    if status == 429 or status >= 500:
        raise _Retryable(f"HTTP {status}", retry_after_s(resp.headers.get("Retry-After")))
    if status == 206:
        match = re.match(r"bytes (\d+)-(\d+)/(\d+|\*)", resp.headers.get("Content-Range", ""))
        if not match or int(match.group(1)) != offset or (match.group(3) != "*" and int(match.group(3)) != size):
            partial.unlink(missing_ok=True)
            raise _Retryable(f"206 with Content-Range {resp.headers.get('Content-Range')!r} not matching bytes={offset}-; restarting from 0")
        return offset
    if status == 200:
        if offset:
            logger.info("%s: server ignored Range and sent the whole file; restarting from 0", file_id)
        return 0
    raise GDCError(f"{file_id}: unexpected HTTP {status} from GDC data endpoint; check the base URL")


def _append_body(resp: requests.Response, partial: Path, offset: int, size: int, chunk: int,
                 progress: Callable[[int, int], None] | None, summary: dict[str, Any]) -> None:
    """Write the body to ``partial`` from ``offset`` (appending when > 0); raise _Retryable when it is cut or too long."""
    expected = size - offset
    written = 0
    try:
        with open(partial, "ab" if offset else "wb", buffering=max(chunk, 1)) as fh:
            for block in _body_blocks(resp, min(chunk, _READ_BYTES)):
                if written + len(block) > expected:
                    fh.write(block[: expected - written])
                    written = expected
                    raise _Retryable(f"body longer than the expected {expected} bytes")
                fh.write(block)
                written += len(block)
                summary["bytes_transferred"] += len(block)
                if progress is not None:
                    progress(offset + written, size)
    except requests.RequestException as exc:
        raise _Retryable(f"body cut after {written} of {expected} bytes ({type(exc).__name__})") from None
    except _Retryable:
        partial.unlink(missing_ok=True)  # the server sent something else than this file: start over
        raise
    if written < expected:
        raise _Retryable(f"body ended after {written} of {expected} bytes")


def _attempt(
    session: requests.Session,
    url: str,
    file_id: str,
    partial: Path,
    size: int,
    base_headers: dict[str, str],
    chunk: int,
    progress: Callable[[int, int], None] | None,
    summary: dict[str, Any],
    timeout: float,
) -> None:
    """One request: append the body to ``partial`` (resuming it if present); raise _Retryable on transient failure."""
    offset = partial.stat().st_size if partial.exists() else 0
    if offset > size:
        partial.unlink()
        offset = 0
    if offset == size and size > 0:
        return  # a previous run got every byte; only verification is left
    headers = dict(base_headers)
    headers["Accept-Encoding"] = "identity"  # the bytes on disk must be the file's bytes (size, md5, Range offsets)
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        resp = session.get(url, headers=headers, stream=True, timeout=timeout)
    except requests.RequestException as exc:
        raise _Retryable(f"{type(exc).__name__}: {exc}") from None
    with resp:
        start = _check_status(resp, file_id, partial, offset, size)
        if resp.status_code == 206:
            summary["resumed"] = True
        _append_body(resp, partial, start, size, chunk, progress, summary)


def summarise_downloads(sheet: pd.DataFrame, summaries: dict[str, dict[str, Any]], slide_dir_exists: Callable[[str], bool]) -> pd.DataFrame:
    """One row per sheet slide: downloaded, resumed, already present, or missing (failed or not run yet).

    ``summaries`` maps slide_id → the JSON a finished download job wrote; ``slide_dir_exists(path)``
    tells whether the final file is there. Missing slides are the ones to look up in the job logs.
    """
    rows = []
    for row in sheet.itertuples(index=False):
        s = summaries.get(row.slide_id)
        if s is not None:
            status = "already present" if s["bytes_transferred"] == 0 else ("resumed" if s["resumed"] else "downloaded")
            rows.append((row.slide_id, row.file_id, status, int(s["bytes_transferred"]), int(s["attempts"])))
        else:
            status = "present, not verified by a job" if slide_dir_exists(row.path) else "missing (failed or not run)"
            rows.append((row.slide_id, row.file_id, status, 0, 0))
    return pd.DataFrame(rows, columns=["slide_id", "file_id", "status", "bytes_transferred", "attempts"])
