"""A loopback fake of the GDC API (/status, POST /files, GET /data/{id}) with per-request fault scripts.

Faults are queued per file id (or per endpoint: ``"/status"``, ``"/files"``) and consumed one per request:
``NNN`` / ``NNN:S`` (answer HTTP NNN, with Retry-After S; ``429`` alone sends Retry-After 1),
``hangup`` (close the connection without an answer), and for ``/data`` only
``drop:N`` (reset the connection after N body bytes), ``short`` (close cleanly after half the body,
Content-Length still promising all of it), ``corrupt`` (flip one byte), ``bad_range`` (answer a
range request with 206 starting at 0).
File-level modes: ``ignore_range`` (always 200 with the whole file), ``corrupt_always``, ``token``
(controlled: needs ``X-Auth-Token == server.good_token``), ``slow`` (a pause of ``server.slow_s``
before each 64 KiB of body, so concurrent downloads overlap).
"""

from __future__ import annotations

import json
import re
import socket
import struct
import threading
import time
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class FakeGDC(ThreadingHTTPServer):
    """State of the fake: file metadata and bytes, fault scripts, and per-file counters."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.release = "Data Release 99.0 - fake"
        self.hits: list[dict[str, Any]] = []
        self.blobs: dict[str, bytes] = {}
        self.modes: dict[str, set[str]] = defaultdict(set)
        self.faults: dict[str, list[str]] = defaultdict(list)
        self.bytes_sent: dict[str, int] = defaultdict(int)
        self.data_requests: dict[str, list[dict[str, str]]] = defaultdict(list)
        self.files_bodies: list[dict[str, Any]] = []
        self.status_requests = 0
        self.short_pages = False
        self.slow_s = 0.02
        self.good_token = "good-token-0123"
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        """Base URL of the fake API."""
        return f"http://127.0.0.1:{self.server_address[1]}"

    def add_file(self, file_id: str, file_name: str, project: str, patient: str, data: bytes | None = None,
                 md5: str = "0" * 32, data_type: str = "Slide Image", strategy: str = "Diagnostic Slide",
                 fmt: str = "SVS") -> None:
        """Register one file (metadata for /files; bytes for /data when given)."""
        import hashlib

        if data is not None:
            self.blobs[file_id] = data
            md5 = hashlib.md5(data).hexdigest()
        self.hits.append({
            "file_id": file_id, "file_name": file_name, "md5sum": md5,
            "file_size": len(data) if data is not None else 1000,
            "data_type": data_type, "experimental_strategy": strategy, "data_format": fmt,
            "cases": [{"submitter_id": patient, "project": {"project_id": project}}],
        })

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Stay quiet about the connections the fault scripts break on purpose."""

    def reset_counters(self) -> None:
        """Forget faults and counters between tests."""
        self.faults.clear()
        self.modes.clear()
        self.bytes_sent.clear()
        self.data_requests.clear()
        self.files_bodies.clear()
        self.status_requests = 0
        self.short_pages = False


def _get(obj: dict[str, Any], dotted: str) -> list[Any]:
    """Values of a dotted field in a hit, flattening lists (cases.project.project_id)."""
    values = [obj]
    for key in dotted.split("."):
        nxt = []
        for v in values:
            v = v.get(key) if isinstance(v, dict) else None
            if isinstance(v, list):
                nxt.extend(v)
            elif v is not None:
                nxt.append(v)
        values = nxt
    return values


def _match(hit: dict[str, Any], flt: dict[str, Any] | None) -> bool:
    """Evaluate the subset of GDC filter ops we need: and, or, in, =."""
    if not flt:
        return True
    op, content = flt["op"], flt["content"]
    if op == "and":
        return all(_match(hit, c) for c in content)
    if op == "or":
        return any(_match(hit, c) for c in content)
    values = _get(hit, content["field"])
    wanted = content["value"] if isinstance(content["value"], list) else [content["value"]]
    if op in ("in", "="):
        return any(v in wanted for v in values)
    raise ValueError(f"unsupported op {op}")


class _Handler(BaseHTTPRequestHandler):
    server: FakeGDC

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - keep test output quiet
        pass

    def _send_json(self, obj: Any, status: int = 200) -> None:
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _scripted_error(self, key: str) -> bool:
        """Answer the next scripted status/hangup fault of ``key`` (a file id or endpoint); False if there is none."""
        srv = self.server
        with srv.lock:
            queue = srv.faults[key]
            fault = queue.pop(0) if queue and re.fullmatch(r"\d{3}(:\d+)?|hangup", queue[0]) else ""
        if fault == "hangup":
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return True
        if not fault:
            return False
        status, _, wait = fault.partition(":")
        body = json.dumps({"message": f"scripted {status}"}).encode()
        self.send_response(int(status))
        if wait or status == "429":
            self.send_header("Retry-After", wait or "1")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        return True

    def do_GET(self) -> None:  # noqa: N802
        if self.path == "/status":
            with self.server.lock:
                self.server.status_requests += 1
            if self._scripted_error("/status"):
                return
            self._send_json({"status": "OK", "tag": "fake", "data_release": self.server.release})
            return
        m = re.fullmatch(r"/data/([A-Za-z0-9._-]+)", self.path)
        if not m or m.group(1) not in self.server.blobs:
            self._send_json({"message": "not found"}, 404)
            return
        self._serve_data(m.group(1))

    def do_POST(self) -> None:  # noqa: N802
        if self.path != "/files":
            self._send_json({"message": "not found"}, 404)
            return
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
        self.server.files_bodies.append(body)
        if self._scripted_error("/files"):
            return
        hits = [h for h in self.server.hits if _match(h, body.get("filters"))]
        field, _, order = body.get("sort", "file_id:asc").partition(":")
        hits.sort(key=lambda h: h[field], reverse=order == "desc")
        start, size = int(body.get("from", 0)), int(body.get("size", 10))
        page = hits[start:start + size]
        if self.server.short_pages and start > 0:
            page = []  # a broken server: promises `total` but stops returning hits
        self._send_json({"data": {"hits": page, "pagination": {
            "total": len(hits), "from": start, "size": size, "count": len(page)}}, "warnings": {}})

    def _serve_data(self, file_id: str) -> None:
        srv = self.server
        data = srv.blobs[file_id]
        modes = srv.modes[file_id]
        with srv.lock:
            srv.data_requests[file_id].append({k: v for k, v in self.headers.items()})
        if "token" in modes and self.headers.get("X-Auth-Token") != srv.good_token:
            self._send_json({"message": "forbidden"}, 403)
            return
        if self._scripted_error(file_id):
            return
        with srv.lock:
            fault = srv.faults[file_id].pop(0) if srv.faults[file_id] else ""
        if fault == "corrupt" or "corrupt_always" in modes:
            data = bytearray(data)
            data[len(data) // 3] ^= 0xFF
            data = bytes(data)
        start = 0
        rng = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
        if rng and "ignore_range" not in modes:
            start = int(rng.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if fault == "bad_range":
                start = 0
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        payload = data[start:]
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        limit = len(payload)
        if fault.startswith("drop:"):
            limit = min(limit, int(fault.partition(":")[2]))
        elif fault == "short":
            limit = len(payload) // 2
        sent = 0
        try:
            while sent < limit:
                if "slow" in modes:
                    time.sleep(srv.slow_s)
                piece = payload[sent:min(limit, sent + 65536)]
                with srv.lock:  # counted before the write: the client may finish before this thread runs again
                    srv.bytes_sent[file_id] += len(piece)
                try:
                    self.wfile.write(piece)
                except OSError:
                    with srv.lock:
                        srv.bytes_sent[file_id] -= len(piece)
                    raise
                sent += len(piece)
            self.wfile.flush()
        except OSError:
            return
        if fault.startswith("drop:"):
            # abortive close: RST instead of FIN (after a pause so the client has read what was sent)
            time.sleep(0.2)
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            self.connection.close()
        elif fault == "short":
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_WR)
