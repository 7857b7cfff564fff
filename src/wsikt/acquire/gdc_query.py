"""List TCGA diagnostic slides on the GDC as a sample sheet, retrying transient failures like the downloads."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd
import requests

from wsikt.acquire.gdc import RETRY_STATUSES, TIMEOUT_S, GDCError, gdc_session, safe_file_name

logger = logging.getLogger(__name__)

SLIDE_FIELDS = (
    "file_id",
    "file_name",
    "md5sum",
    "file_size",
    "cases.submitter_id",
    "cases.project.project_id",
)
SAMPLE_COLUMNS = ("slide_id", "patient_id", "cancer", "file_id", "file_name", "md5", "size")


def slide_filters(projects: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """GDC filter for diagnostic SVS slide images of the given projects (e.g. ``["TCGA-BRCA"]``)."""
    return {
        "op": "and",
        "content": [
            {"op": "in", "content": {"field": "cases.project.project_id", "value": list(projects)}},
            {"op": "=", "content": {"field": "data_type", "value": "Slide Image"}},
            {"op": "=", "content": {"field": "experimental_strategy", "value": "Diagnostic Slide"}},
            {"op": "=", "content": {"field": "data_format", "value": "SVS"}},
        ],
    }


def _json(resp: requests.Response, what: str) -> Any:
    """Decode a JSON response, raising a GDCError naming the endpoint when status or body is wrong."""
    if resp.status_code in RETRY_STATUSES:
        raise GDCError(
            f"{what}: HTTP {resp.status_code} from GDC, still after the retries; "
            "rerun later or raise gdc.max_retries (GDC status: https://status.gdc.cancer.gov)"
        )
    if resp.status_code != 200:
        raise GDCError(f"{what}: HTTP {resp.status_code} from GDC; check the base URL and retry later")
    try:
        return resp.json()
    except ValueError:
        raise GDCError(f"{what}: response is not JSON; check that the base URL points at the GDC API") from None


def _request(session: requests.Session, method: str, url: str, timeout: float, **kwargs: Any) -> Any:
    """One JSON request through ``session`` (which retries), with one-line errors naming the URL."""
    try:
        resp = session.request(method, url, timeout=timeout, **kwargs)
    except requests.RequestException as exc:
        raise GDCError(f"{url}: cannot reach GDC ({type(exc).__name__}); check the network and base URL") from None
    with resp:
        return _json(resp, url)


def data_release(base_url: str, session: requests.Session | None = None, timeout: float = TIMEOUT_S) -> str:
    """The GDC data release string from ``/status``, recorded so a slide list can be reproduced."""
    session = session or gdc_session()
    url = f"{base_url.rstrip('/')}/status"
    body = _request(session, "GET", url, timeout)
    release = body.get("data_release") if isinstance(body, dict) else None
    if not release:
        raise GDCError(f"{url}: no 'data_release' in the status answer; check the base URL")
    return str(release)


def _slide_id(file_name: str) -> str:
    """Slide id = file name without its ``.svs`` suffix (TCGA names contain dots, so not Path.stem)."""
    if file_name.lower().endswith(".svs"):
        return file_name[:-4]
    return Path(file_name).stem


def _hit_row(hit: dict[str, Any]) -> dict[str, Any]:
    """One sample-sheet row from one ``/files`` hit, checking the fields we rely on."""
    file_id = str(hit.get("file_id", ""))
    cases = hit.get("cases") or []
    if not file_id or not cases or "file_name" not in hit or "md5sum" not in hit or "file_size" not in hit:
        raise GDCError(f"GDC hit {file_id or hit!r}: missing file_id/file_name/md5sum/file_size/cases; the API answer changed")
    project = str(cases[0].get("project", {}).get("project_id", ""))
    name = safe_file_name(str(hit["file_name"]))
    return {
        "slide_id": _slide_id(name),
        "patient_id": str(cases[0].get("submitter_id", "")),
        "cancer": project.removeprefix("TCGA-"),
        "file_id": file_id,
        "file_name": name,
        "md5": str(hit["md5sum"]).lower(),
        "size": int(hit["file_size"]),
    }


def _page_hits(page: Any, url: str) -> tuple[list[dict[str, Any]], int]:
    """The hits and the promised total of one ``/files`` answer."""
    try:
        return page["data"]["hits"], int(page["data"]["pagination"]["total"])
    except (KeyError, TypeError, ValueError):
        raise GDCError(f"{url}: answer lacks data.hits/data.pagination.total; the API answer changed") from None


def query_slides(
    base_url: str,
    projects: list[str] | tuple[str, ...],
    session: requests.Session | None = None,
    page_size: int = 500,
    timeout: float = TIMEOUT_S,
    max_retries: int = 5,
    backoff_s: float = 0.5,
    max_wait_s: float = 60.0,
) -> tuple[pd.DataFrame, str]:
    """List diagnostic SVS slides of ``projects`` as a sample-sheet frame, plus the GDC data release.

    Pages through ``POST /files`` with ``size``/``from`` and a stable ``file_id`` sort until the
    promised ``total`` is reached; a page that brings no new hits before then raises instead of looping.
    Each request retries connection errors, 429 and 5xx (:func:`~wsikt.acquire.gdc.gdc_session` with
    ``max_retries``, ``backoff_s``, ``max_wait_s``); a ``session`` you pass is used as it is.
    """
    if not projects:
        raise ValueError("query_slides: no projects given; pass e.g. ['TCGA-BRCA']")
    if page_size < 1:
        raise ValueError(f"query_slides: page_size={page_size} must be >= 1")
    session = session or gdc_session(max_retries, backoff_s, max_wait_s)
    release = data_release(base_url, session, timeout)
    url = f"{base_url.rstrip('/')}/files"
    body: dict[str, Any] = {
        "filters": slide_filters(projects),
        "fields": ",".join(SLIDE_FIELDS),
        "format": "JSON",
        "size": page_size,
        "sort": "file_id:asc",
    }
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    total: int | None = None
    while total is None or len(rows) < total:
        body["from"] = len(rows)
        hits, page_total = _page_hits(_request(session, "POST", url, timeout, json=body), url)
        if total is None:
            total = page_total
        elif page_total != total:
            raise GDCError(f"{url}: total changed from {total} to {page_total} while paging (new data release?); rerun the query")
        new = 0
        for hit in hits:
            row = _hit_row(hit)
            if row["file_id"] in seen:
                continue
            seen.add(row["file_id"])
            rows.append(row)
            new += 1
        if len(rows) < total and new == 0:
            raise GDCError(
                f"{url}: server promised {total} hits but stopped at {len(rows)} (empty or repeated page at from={body['from']}); "
                "rerun later or lower page_size"
            )
    logger.info("GDC release %s: %d slide(s) for %s", release, len(rows), ",".join(projects))
    return pd.DataFrame(rows, columns=list(SAMPLE_COLUMNS)), release
