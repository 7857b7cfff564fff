"""GDC client against a loopback fake API: paging, resumable verified downloads under faults, token hygiene."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import requests

sys.path.insert(0, str(Path(__file__).parent))
from support.gdc_server import FakeGDC  # noqa: E402

from wsikt.acquire.gdc import GDCAccessError, GDCError, read_token, safe_file_name  # noqa: E402
from wsikt.acquire.gdc_download import download_file  # noqa: E402
from wsikt.acquire.gdc_query import query_slides  # noqa: E402
from wsikt.acquire.tcga_cdr import TCGA_CDR, fetch_tcga_cdr, names_tcga_cdr  # noqa: E402

pytestmark = pytest.mark.timeout(60)

SECRET = "s3cr3t-WRONG-token-xyz"
FAST = dict(backoff_s=0.01, max_wait_s=5.0, timeout=5.0)
N_BRCA, N_LUAD, N_COAD = 11, 6, 4


@pytest.fixture(scope="module")
def gdc(tmp_path_factory) -> FakeGDC:
    """A running fake GDC with slide metadata for three projects, a non-slide file, and downloadable blobs."""
    srv = FakeGDC()
    rng = np.random.default_rng(7)
    for project, n in (("TCGA-BRCA", N_BRCA), ("TCGA-LUAD", N_LUAD), ("TCGA-COAD", N_COAD)):
        for i in range(n):
            fid = f"{rng.integers(0, 16**8):08x}-0000-4000-8000-{i:012d}"
            patient = f"TCGA-{project[-2:]}-{i:04d}"
            srv.add_file(fid, f"{patient}-01Z-00-DX1.{fid.upper()}.svs", project, patient)
    srv.add_file("ffff0000-clinical", "clinical.xml", "TCGA-BRCA", "TCGA-RC-0000",
                 data_type="Clinical Supplement", strategy="", fmt="BCR XML")
    # Downloadable files live in their own project so they never show up in the query tests.
    for i in range(16):
        data = rng.integers(0, 256, size=int(rng.integers(200_000, 600_000)), dtype=np.uint8).tobytes()
        srv.add_file(f"blob-{i:02d}", f"blob-{i:02d}.svs", "TCGA-DL", f"TCGA-DL-{i:04d}", data=data)
    from wsikt.acquire.demo_render import write_pyramid_tiff

    yy, xx = np.mgrid[0:768, 0:768]
    rgb = np.stack([(xx // 3) % 256, (yy // 3) % 256, ((xx + yy) // 6) % 256], axis=-1).astype(np.uint8)
    tif = tmp_path_factory.mktemp("gdc_tiff") / "real.svs"
    write_pyramid_tiff(tif, rgb, mpp=0.5, aperio=True)
    srv.add_file("tiff-real", "TCGA-DL-9999-01Z-00-DX1.svs", "TCGA-DL", "TCGA-DL-9999", data=tif.read_bytes())
    # A stand-in for the TCGA-CDR table, served under the real file id (in no project the queries ask for).
    import pandas as pd

    cdr = tmp_path_factory.mktemp("cdr") / TCGA_CDR.file_name
    pd.DataFrame({"bcr_patient_barcode": ["TCGA-AA-0001"], "type": ["AAAA"], "OS": [1], "OS.time": [400]}).to_excel(cdr)
    srv.add_file(TCGA_CDR.file_id, TCGA_CDR.file_name, "TCGA-CDR", "", data=cdr.read_bytes(), data_type="Clinical Supplement")
    race = rng.integers(0, 256, size=6 << 20, dtype=np.uint8).tobytes()  # 6 write buffers
    srv.add_file("race-00", "TCGA-DL-8888-01Z-00-DX1.svs", "TCGA-DL", "TCGA-DL-8888", data=race)
    srv.thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture(autouse=True)
def _fresh(gdc: FakeGDC):
    gdc.reset_counters()


def _meta(gdc: FakeGDC, file_id: str) -> tuple[bytes, str, int]:
    data = gdc.blobs[file_id]
    return data, hashlib.md5(data).hexdigest(), len(data)


# ----------------------------------------------------------------------------------------------- query


def test_query_pages_through_two_projects(gdc: FakeGDC) -> None:
    df, release = query_slides(gdc.url, ["TCGA-BRCA", "TCGA-LUAD"], page_size=4, timeout=5.0)
    assert release == gdc.release
    assert list(df.columns) == ["slide_id", "patient_id", "cancer", "file_id", "file_name", "md5", "size"]
    assert len(df) == N_BRCA + N_LUAD
    assert df["file_id"].is_unique and list(df["file_id"]) == sorted(df["file_id"])
    assert set(df["cancer"]) == {"BRCA", "LUAD"}
    assert (df["file_name"] == df["slide_id"] + ".svs").all()
    assert all(s.startswith(p) for s, p in zip(df["slide_id"], df["patient_id"]))
    assert "clinical.xml" not in set(df["file_name"])
    # >= 3 pages, stable sort and the documented filter sent
    froms = [b["from"] for b in gdc.files_bodies]
    assert froms == [0, 4, 8, 12, 16]
    body = gdc.files_bodies[0]
    assert body["sort"] == "file_id:asc" and body["format"] == "JSON" and body["size"] == 4
    assert {"file_id", "file_name", "md5sum", "file_size"} <= set(body["fields"].split(","))
    ops = {c["content"]["field"]: c["content"]["value"] for c in body["filters"]["content"]}
    assert ops["cases.project.project_id"] == ["TCGA-BRCA", "TCGA-LUAD"]
    assert ops["data_type"] == "Slide Image" and ops["data_format"] == "SVS"


def test_query_project_filter_excludes_others(gdc: FakeGDC) -> None:
    df, _ = query_slides(gdc.url, ["TCGA-COAD"], page_size=500, timeout=5.0)
    assert len(df) == N_COAD and set(df["cancer"]) == {"COAD"}
    assert len(gdc.files_bodies) == 1


def test_query_server_returning_fewer_hits_than_total_raises(gdc: FakeGDC) -> None:
    gdc.short_pages = True
    with pytest.raises(GDCError, match="promised 17 hits but stopped at 4"):
        query_slides(gdc.url, ["TCGA-BRCA", "TCGA-LUAD"], page_size=4, timeout=5.0)
    assert len(gdc.files_bodies) == 2


def test_query_retries_transient_5xx_429_and_hangups(gdc: FakeGDC) -> None:
    """A 500 on /status, and a 503, a hang-up and a 429 (Retry-After 1) on /files are retried; the same page is asked again."""
    gdc.faults["/status"] = ["500"]
    gdc.faults["/files"] = ["503", "hangup", "429"]
    t0 = time.monotonic()
    df, release = query_slides(gdc.url, ["TCGA-BRCA", "TCGA-LUAD"], page_size=4, **FAST)
    elapsed = time.monotonic() - t0
    assert release == gdc.release and gdc.status_requests == 2
    assert len(df) == N_BRCA + N_LUAD and df["file_id"].is_unique
    assert [b["from"] for b in gdc.files_bodies] == [0, 0, 0, 0, 4, 8, 12, 16]  # page 0 asked 4 times
    assert not gdc.faults["/status"] and not gdc.faults["/files"]
    assert elapsed >= 0.9  # Retry-After: 1 honoured, not the 0.01 s backoff


def test_query_retry_after_is_capped(gdc: FakeGDC) -> None:
    gdc.faults["/files"] = ["429:3600"]
    t0 = time.monotonic()
    df, _ = query_slides(gdc.url, ["TCGA-COAD"], backoff_s=0.01, max_wait_s=0.2, timeout=5.0)
    assert len(df) == N_COAD and time.monotonic() - t0 < 5


def test_query_gives_up_after_max_retries_with_one_line(gdc: FakeGDC) -> None:
    gdc.faults["/files"] = ["500"] * 3
    with pytest.raises(GDCError) as info:
        query_slides(gdc.url, ["TCGA-COAD"], max_retries=2, **FAST)
    msg = str(info.value)
    assert "/files: HTTP 500 from GDC, still after the retries" in msg and "gdc.max_retries" in msg and "\n" not in msg
    assert len(gdc.files_bodies) == 3 and not gdc.faults["/files"]


def test_query_does_not_retry_a_client_error(gdc: FakeGDC) -> None:
    gdc.faults["/status"] = ["400", "400"]
    with pytest.raises(GDCError, match="/status: HTTP 400 from GDC; check the base URL"):
        query_slides(gdc.url, ["TCGA-COAD"], **FAST)
    assert gdc.status_requests == 1


# -------------------------------------------------------------------------------------------- download


def test_download_real_tiff(gdc: FakeGDC, tmp_path: Path) -> None:
    import tifffile

    data, md5, size = _meta(gdc, "tiff-real")
    dest = tmp_path / "slides" / "real.svs"
    seen: list[int] = []
    out = download_file(gdc.url, "tiff-real", dest, md5, size, chunk=65536, progress=lambda d, t: seen.append(d), **FAST)
    assert out["attempts"] == 1 and out["bytes_transferred"] == size and not out["resumed"]
    assert dest.read_bytes() == data and seen[-1] == size
    with tifffile.TiffFile(dest) as tif:
        assert len(tif.pages) >= 2


# (fault script, file id, is a resume case where the server may send at most 1.1 x the file)
FAULTS = [
    (["drop:150000"], "blob-00", True),
    (["short"], "blob-01", True),
    (["drop:100000", "drop:100000"], "blob-02", True),
    (["503"], "blob-03", True),
    (["429"], "blob-04", True),
    (["corrupt"], "blob-05", False),
    (["drop:120000", "bad_range"], "blob-06", False),
    (["drop:120000", "ignore_range"], "blob-07", False),
]


@pytest.mark.parametrize("script,file_id,resume_case", FAULTS, ids=[" ".join(f[0]) for f in FAULTS])
def test_download_survives_fault(gdc: FakeGDC, tmp_path: Path, script, file_id, resume_case) -> None:
    data, md5, size = _meta(gdc, file_id)
    if "ignore_range" in script:
        script = script[:1]
        gdc.modes[file_id].add("ignore_range")
    gdc.faults[file_id] = list(script)
    dest = tmp_path / "x.svs"
    t0 = time.monotonic()
    out = download_file(gdc.url, file_id, dest, md5, size, chunk=32768, **FAST)
    elapsed = time.monotonic() - t0
    assert hashlib.md5(dest.read_bytes()).hexdigest() == md5
    assert not dest.with_name("x.svs.partial").exists()
    assert list(tmp_path.iterdir()) == [dest]
    assert out["attempts"] == len(script) + 1
    assert not gdc.faults[file_id]
    if resume_case:
        assert gdc.bytes_sent[file_id] <= 1.1 * size
    if resume_case and script[0].startswith(("drop", "short")):
        assert out["resumed"]
        assert gdc.data_requests[file_id][-1]["Range"].startswith("bytes=")
    if script == ["429"]:
        assert elapsed >= 0.9  # Retry-After: 1 honoured, not the 0.01 s backoff
    if "ignore_range" in gdc.modes[file_id]:
        assert not out["resumed"] and gdc.bytes_sent[file_id] >= size


def test_retry_after_is_capped(gdc: FakeGDC, tmp_path: Path) -> None:
    data, md5, size = _meta(gdc, "blob-08")
    gdc.faults["blob-08"] = ["429:3600"]
    t0 = time.monotonic()
    download_file(gdc.url, "blob-08", tmp_path / "x.svs", md5, size, backoff_s=0.01, max_wait_s=0.2, timeout=5.0)
    assert time.monotonic() - t0 < 5


def test_existing_partial_is_resumed(gdc: FakeGDC, tmp_path: Path) -> None:
    data, md5, size = _meta(gdc, "blob-09")
    dest = tmp_path / "x.svs"
    dest.with_name("x.svs.partial").write_bytes(data[: size // 2])
    out = download_file(gdc.url, "blob-09", dest, md5, size, **FAST)
    assert out["resumed"] and out["attempts"] == 1 and out["bytes_transferred"] == size - size // 2
    assert gdc.bytes_sent["blob-09"] == size - size // 2
    assert dest.read_bytes() == data


def test_corrupt_every_time_raises_and_leaves_nothing(gdc: FakeGDC, tmp_path: Path) -> None:
    data, md5, size = _meta(gdc, "blob-10")
    gdc.modes["blob-10"].add("corrupt_always")
    dest = tmp_path / "x.svs"
    with pytest.raises(GDCError, match=r"blob-10: download .* failed after 3 attempt\(s\); last error: md5 mismatch"):
        download_file(gdc.url, "blob-10", dest, md5, size, max_retries=2, **FAST)
    assert len(gdc.data_requests["blob-10"]) == 3
    assert not dest.exists() and not dest.with_name("x.svs.partial").exists()


def test_persistent_drops_raise_but_keep_partial_for_rerun(gdc: FakeGDC, tmp_path: Path) -> None:
    data, md5, size = _meta(gdc, "blob-11")
    gdc.faults["blob-11"] = ["drop:50000"] * 3
    dest = tmp_path / "x.svs"
    with pytest.raises(GDCError, match="blob-11: .*failed after 3 attempt"):
        download_file(gdc.url, "blob-11", dest, md5, size, max_retries=2, **FAST)
    assert not dest.exists()
    partial = dest.with_name("x.svs.partial")
    assert 0 < partial.stat().st_size < size
    out = download_file(gdc.url, "blob-11", dest, md5, size, **FAST)  # a rerun picks up where it stopped
    assert out["resumed"] and dest.read_bytes() == data and not partial.exists()
    assert gdc.bytes_sent["blob-11"] <= 1.1 * size


def test_token_sent_as_header(gdc: FakeGDC, tmp_path: Path) -> None:
    data, md5, size = _meta(gdc, "blob-12")
    gdc.modes["blob-12"].add("token")
    download_file(gdc.url, "blob-12", tmp_path / "x.svs", md5, size, token=gdc.good_token, **FAST)
    assert gdc.data_requests["blob-12"][0]["X-Auth-Token"] == gdc.good_token
    assert (tmp_path / "x.svs").read_bytes() == data


def test_403_is_not_retried_and_never_leaks_token(gdc: FakeGDC, tmp_path: Path, caplog) -> None:
    data, md5, size = _meta(gdc, "blob-13")
    gdc.modes["blob-13"].add("token")
    caplog.set_level(logging.DEBUG)
    with pytest.raises(GDCAccessError) as info:
        download_file(gdc.url, "blob-13", tmp_path / "x.svs", md5, size, token=SECRET, **FAST)
    msg = str(info.value)
    assert "blob-13" in msg and "controlled" in msg and "dbGaP" in msg and "token" in msg
    assert SECRET not in msg and SECRET not in repr(info.value)
    assert info.value.__cause__ is None or SECRET not in str(info.value.__cause__)
    assert all(SECRET not in r.getMessage() for r in caplog.records)
    assert SECRET not in caplog.text
    assert len(gdc.data_requests["blob-13"]) == 1
    assert gdc.data_requests["blob-13"][0]["X-Auth-Token"] == SECRET
    assert not any(tmp_path.iterdir())


def test_retry_failures_never_leak_token(gdc: FakeGDC, tmp_path: Path, caplog) -> None:
    data, md5, size = _meta(gdc, "blob-14")
    gdc.faults["blob-14"] = ["503", "503"]
    caplog.set_level(logging.DEBUG)
    with pytest.raises(GDCError) as info:
        download_file(gdc.url, "blob-14", tmp_path / "x.svs", md5, size, token=SECRET, max_retries=1, **FAST)
    assert "HTTP 503" in str(info.value) and SECRET not in str(info.value)
    assert SECRET not in caplog.text


def test_connection_refused_is_retried_then_raises(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(GDCError, match="blob-x: .*failed after 2 attempt.*ConnectionError"):
        download_file(f"http://127.0.0.1:{port}", "blob-x", tmp_path / "x.svs", "0" * 32, 10, max_retries=1, **FAST)
    assert not any(tmp_path.iterdir())


def test_already_complete_dest_is_not_downloaded(gdc: FakeGDC, tmp_path: Path) -> None:
    data, md5, size = _meta(gdc, "blob-15")
    dest = tmp_path / "x.svs"
    dest.write_bytes(data)
    out = download_file(gdc.url, "blob-15", dest, md5, size, **FAST)
    assert out["bytes_transferred"] == 0 and out["attempts"] == 0
    assert "blob-15" not in gdc.data_requests


def test_wrong_dest_is_replaced(gdc: FakeGDC, tmp_path: Path) -> None:
    data, md5, size = _meta(gdc, "blob-15")
    dest = tmp_path / "x.svs"
    dest.write_bytes(data[:-1] + b"\x00")
    out = download_file(gdc.url, "blob-15", dest, md5, size, **FAST)
    assert out["bytes_transferred"] == size and dest.read_bytes() == data


def test_missing_file_is_not_retried(gdc: FakeGDC, tmp_path: Path) -> None:
    with pytest.raises(GDCError, match="nope-404: not found"):
        download_file(gdc.url, "nope-404", tmp_path / "x.svs", "0" * 32, 10, **FAST)


def test_unsafe_file_id_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a GDC file id"):
        download_file("http://127.0.0.1:9", "../status", tmp_path / "x.svs", "0" * 32, 10, **FAST)


DOWNLOADER = textwrap.dedent("""
    import json, logging, sys
    from wsikt.acquire.gdc_download import download_file
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    url, file_id, dest, md5, size = sys.argv[1:]
    print(json.dumps(download_file(url, file_id, dest, md5, int(size), backoff_s=0.05, timeout=10.0)))
""")


def test_two_processes_downloading_one_slide_never_corrupt_it(gdc: FakeGDC, tmp_path: Path) -> None:
    """Two real processes download the same slide into one folder (the second starts mid-download): the second
    waits for the first's lock and finds the file complete; the file is right and downloaded once."""
    data, md5, size = _meta(gdc, "race-00")
    gdc.modes["race-00"].add("slow")
    gdc.slow_s = 0.15  # ~14 s per download: the two overlap even when a loaded machine starts the second slowly
    dest = tmp_path / "slides" / "TCGA-DL-8888-01Z-00-DX1.svs"
    partial = dest.with_name(dest.name + ".partial")
    cmd = [sys.executable, "-c", DOWNLOADER, gdc.url, "race-00", str(dest), md5, str(size)]
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not (partial.exists() and partial.stat().st_size > 0):  # the first has written its first buffer
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()
        time.sleep(0.005)
    second = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    (out1, err1), (out2, err2) = first.communicate(timeout=50), second.communicate(timeout=50)
    assert first.returncode == 0, err1[-2000:]
    assert second.returncode == 0, err2[-2000:]
    assert hashlib.md5(dest.read_bytes()).hexdigest() == md5 and dest.stat().st_size == size
    assert sorted(p.name for p in dest.parent.iterdir()) == [dest.name]  # no .partial, no .lock left
    one, two = json.loads(out1), json.loads(out2)
    assert one["bytes_transferred"] == size and one["attempts"] == 1
    assert "waiting for it" in err2 and two["bytes_transferred"] == 0 and two["attempts"] == 0
    assert gdc.bytes_sent["race-00"] == size and len(gdc.data_requests["race-00"]) == 1


def test_dest_changed_after_rename_is_caught_and_downloaded_again(gdc: FakeGDC, tmp_path: Path, monkeypatch) -> None:
    """A writer that ignores the lock appends to the file right after the rename (the reported corruption):
    the re-verification after the rename catches it instead of reporting success."""
    data, md5, size = _meta(gdc, "blob-08")
    dest = tmp_path / "x.svs"
    real_replace = os.replace
    strays = []

    def replace_then_append(src, dst):
        real_replace(src, dst)
        if not strays:  # once: the other process's buffered bytes land on the renamed file
            strays.append(dst)
            with open(dst, "ab") as fh:
                fh.write(data[:1000])

    monkeypatch.setattr(os, "replace", replace_then_append)
    out = download_file(gdc.url, "blob-08", dest, md5, size, **FAST)
    assert strays == [dest]
    assert hashlib.md5(dest.read_bytes()).hexdigest() == md5
    assert out["attempts"] == 2 and len(gdc.data_requests["blob-08"]) == 2


def test_verified_bytes_are_flushed_before_the_rename(gdc: FakeGDC, tmp_path: Path, monkeypatch) -> None:
    """The verified partial is fsynced before it is renamed onto dest, and the folder after: a crash right
    after the rename cannot leave a short file that looks complete."""
    data, md5, size = _meta(gdc, "blob-09")
    dest = tmp_path / "x.svs"
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))),
                                                 real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("replace", str(a))), real_replace(a, b))[1])
    download_file(gdc.url, "blob-09", dest, md5, size, **FAST)
    partial = str(dest.with_name("x.svs.partial"))
    assert ("fsync", partial) in events and ("replace", partial) in events
    assert events.index(("fsync", partial)) < events.index(("replace", partial))
    assert events.index(("fsync", str(tmp_path))) > events.index(("replace", partial))
    assert dest.read_bytes() == data


# ------------------------------------------------------------------------------------------- TCGA-CDR


def test_tcga_cdr_is_named_by_its_gdc_file_name() -> None:
    assert (TCGA_CDR.file_id, TCGA_CDR.md5, TCGA_CDR.size) == (
        "1b5f413e-a8d1-4d10-92eb-7c4ae739ed81", "a4591b2dcee39591f59e5e25a6ce75fa", 2_945_129)
    assert names_tcga_cdr("resources/tcga/TCGA-CDR-SupplementalTableS1.xlsx")
    assert names_tcga_cdr(Path("/abs/TCGA-CDR-SupplementalTableS1.xlsx"))
    for other in ("resources/tcga/TCGA-CDR-SupplementalTableS1.tsv", "cdr.xlsx", "config/clinical.tsv"):
        assert not names_tcga_cdr(other), other


def test_fetch_tcga_cdr_downloads_and_verifies_the_served_file(gdc: FakeGDC, tmp_path: Path) -> None:
    """The stand-in served under the real id is fetched with the same client and verified against its md5 and size."""
    data, md5, size = _meta(gdc, TCGA_CDR.file_id)
    gdc.faults[TCGA_CDR.file_id] = ["503"]  # the same retries as the slides
    dest = tmp_path / "tcga" / TCGA_CDR.file_name
    out = fetch_tcga_cdr(gdc.url, dest, md5=md5, size=size, **FAST)
    assert dest.read_bytes() == data and out["attempts"] == 2
    assert sorted(p.name for p in dest.parent.iterdir()) == [TCGA_CDR.file_name]
    from wsikt.cohort.labels import read_clinical

    assert list(read_clinical(dest)["bcr_patient_barcode"]) == ["TCGA-AA-0001"]


def test_fetch_tcga_cdr_defaults_reject_a_file_that_is_not_the_real_table(gdc: FakeGDC, tmp_path: Path) -> None:
    """With the real md5 and size (the defaults), the stand-in fails verification and is not kept."""
    dest = tmp_path / TCGA_CDR.file_name
    with pytest.raises(GDCError, match=f"{TCGA_CDR.file_id}: download to .* failed after 2 attempt"):
        fetch_tcga_cdr(gdc.url, dest, max_retries=1, **FAST)
    assert not dest.exists() and not any(p.name.endswith(".lock") for p in tmp_path.iterdir())


# ------------------------------------------------------------------------------------- names and tokens


@pytest.mark.parametrize("raw,expected", [
    ("../../etc/passwd", "etc_passwd"),
    ("/abs/x.svs", "abs_x.svs"),
    ("a/b.svs", "a_b.svs"),
    ("a\\b.svs", "a_b.svs"),
    ("evil\x00.svs", "evil.svs"),
    ("line\nbreak\x7f.svs", "linebreak.svs"),
    (".hidden.svs", "hidden.svs"),
    ("TCGA-A1-A0SB-01Z-00-DX1.B34C267B.svs", "TCGA-A1-A0SB-01Z-00-DX1.B34C267B.svs"),
])
def test_safe_file_name(raw: str, expected: str) -> None:
    out = safe_file_name(raw)
    assert out == expected
    assert "/" not in out and "\\" not in out and "\x00" not in out and ".." not in out
    assert safe_file_name(out) == out


@pytest.mark.parametrize("raw", ["", "..", "../..", "/", "\x00\x01", " / . / "])
def test_safe_file_name_rejects_empty(raw: str) -> None:
    with pytest.raises(ValueError, match="empty after"):
        safe_file_name(raw)


def test_read_token(tmp_path: Path) -> None:
    p = tmp_path / "gdc-token.txt"
    p.write_text(f"  {SECRET}\n")
    p.chmod(0o600)
    assert read_token(p) == SECRET
    with pytest.raises(FileNotFoundError, match="gdc-token.txt.missing: GDC token file not found.*dbGaP"):
        read_token(tmp_path / "gdc-token.txt.missing")
    p.write_text(" \n\t")
    with pytest.raises(ValueError, match="token file is empty"):
        read_token(p)


def test_requests_session_is_used(gdc: FakeGDC, tmp_path: Path) -> None:
    data, md5, size = _meta(gdc, "blob-03")
    with requests.Session() as s:
        s.headers["User-Agent"] = "wsikt-test"
        download_file(gdc.url, "blob-03", tmp_path / "x.svs", md5, size, session=s, **FAST)
    assert gdc.data_requests["blob-03"][0]["User-Agent"] == "wsikt-test"
