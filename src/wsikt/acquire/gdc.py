"""GDC (Genomic Data Commons) client basics shared by the query and the downloads.

Errors, the retrying HTTP session, Retry-After parsing, safe file names, token files and md5. A
controlled-access token is sent only as the ``X-Auth-Token`` header and never appears in exception
messages or log records. The query is :mod:`wsikt.acquire.gdc_query`, the downloads
:mod:`wsikt.acquire.gdc_download`.
"""

from __future__ import annotations

import email.utils
import hashlib
import logging
import os
import re
from datetime import datetime, timezone
from pathlib import Path

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

logger = logging.getLogger(__name__)

TOKEN_HELP = (
    "controlled-access slides need a GDC token whose user has dbGaP authorisation for this project: "
    "log in at https://portal.gdc.cancer.gov, use 'Download Token', and pass that file as the token file"
)
# Answers worth another try: rate limiting and server-side failures (the downloads retry the same).
RETRY_STATUSES = frozenset([429, *range(500, 600)])
TIMEOUT_S = 60.0
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


class GDCError(RuntimeError):
    """A GDC request or download failed in a way the caller must handle (bad server answer, retries spent)."""


class GDCAccessError(GDCError):
    """The GDC refused access (401/403): the token is missing, expired or lacks authorisation."""


def gdc_session(max_retries: int = 5, backoff_s: float = 0.5, max_wait_s: float = 60.0) -> requests.Session:
    """A requests session whose GET and POST retry connection errors, 429 and 5xx (urllib3's Retry).

    Up to ``max_retries`` retries with exponential backoff (``backoff_s * 2**k``, the first retry at
    once) or the server's ``Retry-After``, both capped at ``max_wait_s``; when the retries are spent
    the last answer is returned, so the caller reports its status. GDC queries are reads, so
    retrying a POST is safe.
    """
    if max_retries < 0:
        raise ValueError(f"max_retries={max_retries} must be >= 0 (config key gdc.max_retries)")
    retry = Retry(
        total=max_retries,
        status_forcelist=RETRY_STATUSES,
        allowed_methods=frozenset({"GET", "POST"}),
        backoff_factor=backoff_s,
        backoff_max=max_wait_s,
        retry_after_max=max_wait_s,
        respect_retry_after_header=True,
        raise_on_status=False,
    )
    session = requests.Session()
    adapter = HTTPAdapter(max_retries=retry)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def retry_after_s(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP date); None if absent/unparseable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def redact(text: str, token: str | None) -> str:
    """Remove the token from a message, in case a library echoed it."""
    return text.replace(token, "<token>") if token else text


def safe_file_name(name: str) -> str:
    """A file name from the API made safe to join to a folder: no separators, '..', absolute paths or control characters.

    Path components are joined with ``_`` (``a/b.svs`` -> ``a_b.svs``) after dropping empty, ``.`` and
    ``..`` ones; leading dots and surrounding spaces are stripped so the result is never hidden or empty.
    """
    cleaned = _CONTROL_RE.sub("", str(name))
    parts = [p.strip() for p in re.split(r"[/\\]", cleaned)]
    parts = [p for p in parts if p not in ("", ".", "..")]
    out = "_".join(parts).lstrip(". ").rstrip(" ")
    if not out or set(out) <= {"."}:
        raise ValueError(f"file name {name!r} is empty after removing path separators, '..' and control characters")
    if len(out.encode("utf-8")) > 255:
        raise ValueError(f"file name {out[:40]!r}... is longer than 255 bytes; rename it in the sample sheet")
    return out


def read_token(path: str | os.PathLike) -> str:
    """Read a GDC token file (whitespace stripped); the error names the file, never its content."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: GDC token file not found; {TOKEN_HELP}")
    token = path.read_text(encoding="utf-8", errors="replace").strip()
    if not token:
        raise ValueError(f"{path}: GDC token file is empty; {TOKEN_HELP}")
    if os.name == "posix" and path.stat().st_mode & 0o077:
        logger.warning("%s: token file is readable by other users; chmod 600 it", path)
    return token


def md5_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex md5 of a file, read in chunks so large slides do not fill memory."""
    h = hashlib.md5(usedforsecurity=False)  # an integrity check, allowed on FIPS systems
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()
