"""Open an HTML report in headless Chromium: console errors, decoded images, a non-blank screenshot."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import cv2

CHROMIUM = Path("/usr/bin/chromium")
_PROBE = """<script>
window.addEventListener('load', () => { const out = document.createElement('pre'); out.id = 'img-probe';
 out.textContent = Array.from(document.images).map(i => i.complete + ':' + i.naturalWidth).join(' ');
 document.body.appendChild(out); console.log('probe done'); });</script></body>"""


def check_in_browser(html_path: Path, workdir: Path) -> Path:
    """Assert the page loads without console errors and every image decodes; return a checked screenshot."""
    html = html_path.read_text()
    flags = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={workdir / 'profile'}", "--enable-logging=stderr", "--v=0", "--hide-scrollbars"]
    # A copy with a probe script: after load, write every image's decoded width into the DOM.
    probe = workdir / "probe.html"
    probe.write_text(html.replace("</body>", _PROBE))
    dom = subprocess.run([*flags, "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()],
                         capture_output=True, text=True, timeout=120)
    m = re.search(r'<pre id="img-probe">([^<]*)</pre>', dom.stdout)
    assert m, dom.stderr[-2000:]
    widths = [int(x.split(":")[1]) for x in m.group(1).split()]
    assert len(widths) == html.count("<img ") and all(w > 0 for w in widths), m.group(1)
    console = [line for line in dom.stderr.splitlines() if "CONSOLE" in line]
    bad = [line for line in console if "probe done" not in line]
    assert not bad, bad
    shot = workdir / "report_screenshot.png"
    res = subprocess.run([*flags, f"--screenshot={shot}", "--window-size=1280,4000", html_path.as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert shot.exists(), res.stderr[-2000:]
    img = cv2.imread(str(shot))
    assert img.shape[:2] == (4000, 1280)
    assert float(img.astype(float).var()) > 200.0, "screenshot looks blank"
    assert (img[:600].astype(float) < 128).mean() > 0.002, "no dark text in the first screen"
    return shot
