#!/usr/bin/env python3
"""Open every executed notebook in JupyterLab, in headless Chromium, and check what a reader sees.

    make lab-check                      # the committed notebooks/*.ipynb
    make lab-check NB_DIR=runs/<run>    # a batch run's executed copies

No cell is run: JupyterLab renders the outputs saved in each .ipynb (the "Python (merlib)" kernel
starts, because ipywidgets restores saved progress bars only once a kernel session is ready). For
each notebook the rendered DOM is checked (figures show an <img>, no "<Figure size ...>" text, no
Traceback, no progress bar stuck at 0%) and the .ipynb JSON is read and cross-checked (image/png
outputs per cell against the <img> elements rendered there). One line per notebook, exit 1 when
any has a problem, and a full-page screenshot per notebook in docs/screenshots/<stem>.png (for
--dir other than notebooks/: <dir>/screenshots/).

Debian's chromium is installed with apt when /usr/bin/chromium is missing, and the playwright
package (pinned in requirements.txt) with pip when it cannot be imported. Playwright's own browser
download is not used. The JupyterLab server is started here, with throwaway settings (no
autosave, all cells attached, no news check) and stopped here; nothing else is touched.

The pure parts (free port, notebook list, the problem rules on dicts) are unit-tested in
tests/test_lab_check.py without a browser.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE_MIME = "application/vnd.jupyter.widget-state+json"
IMAGE_MIME = "image/png"
FIGURE_TEXT = "<Figure size"
# "  0%|" as tqdm draws it; not "10.0%|" or "100%|".
STUCK_TEXT = re.compile(r"(?<![\d.])0%\|")
STUCK_WIDGET_TEXT = re.compile(r"(?<![\d.])0%")
UNRENDERED_WIDGET = ("Loading widget...", "Error displaying widget")

# Throwaway JupyterLab user settings: every cell attached to the DOM (so every output is checked
# and the screenshot is whole), never autosave (the checked notebooks stay as they are), no news.
LAB_SETTINGS = {
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
        "fetchNews": "false", "checkForUpdates": False},
    "@jupyterlab/extensionmanager-extension/plugin.jupyterlab-settings": {"enabled": False},
}


# ---------------------------------------------------------------- pure helpers (unit-tested)

def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def list_notebooks(directory: Path) -> list[Path]:
    """The .ipynb files directly in `directory`, sorted, without checkpoints."""
    return sorted(p for p in Path(directory).glob("*.ipynb")
                  if p.is_file() and ".ipynb_checkpoints" not in p.parts)


def pinned_version(requirements_text: str, name: str) -> str | None:
    """The exact pin of `name` in a requirements file's text, or None."""
    want = re.sub(r"[-_.]+", "-", name).lower()
    for line in requirements_text.splitlines():
        line = line.split("#", 1)[0].strip()
        pkg, sep, version = line.partition("==")
        if sep and re.sub(r"[-_.]+", "-", pkg.strip()).lower() == want:
            return version.strip()
    return None


def _text(value) -> str:
    return "".join(value) if isinstance(value, list) else (value or "")


def displayed_text(text: str) -> str:
    """Text as a notebook shows it: a carriage return overwrites its line from the start."""
    return "\n".join(line.rsplit("\r", 1)[-1] for line in text.replace("\r\n", "\n").split("\n"))


def _short(text: str, limit: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _widget_state(nb: dict) -> dict:
    return nb.get("metadata", {}).get("widgets", {}).get(WIDGET_STATE_MIME, {}).get("state", {})


def _widget_models(state: dict, model_id: str, seen: set | None = None) -> list[dict]:
    """The model `model_id` and every model it holds as a child, from saved widget state."""
    seen = set() if seen is None else seen
    if model_id in seen or model_id not in state:
        return []
    seen.add(model_id)
    model = state[model_id]
    found = [model]
    for child in model.get("state", {}).get("children", []) or []:
        if isinstance(child, str) and child.startswith("IPY_MODEL_"):
            found += _widget_models(state, child[len("IPY_MODEL_"):], seen)
    return found


def widget_progress_stuck(models: list[dict]) -> bool:
    """A progress widget (with its label models) at its minimum while a label shows 0%.

    tqdm without a total draws value 0 of max 1 and no percentage: that is not stuck."""
    labels = " ".join(_text(m.get("state", {}).get("value")) for m in models
                       if "Progress" not in m.get("model_name", ""))
    for m in models:
        if "Progress" in m.get("model_name", ""):
            st = m.get("state", {})
            at_min = float(st.get("value", 0) or 0) <= float(st.get("min", 0) or 0)
            if at_min and STUCK_WIDGET_TEXT.search(labels):
                return True
    return False


def notebook_problems(nb: dict) -> list[str]:
    """Problems visible from the .ipynb JSON alone, one string each, prefixed by the cell."""
    problems = []
    state = _widget_state(nb)
    for index, cell in enumerate(nb.get("cells", [])):
        if cell.get("cell_type") != "code":
            continue
        where = f"cell {index}"
        for out in cell.get("outputs", []):
            kind = out.get("output_type")
            if kind == "error":
                problems.append(f"{where}: error output {out.get('ename', '?')}: "
                                f"{_short(out.get('evalue', ''))}")
                continue
            if kind == "stream":
                text = displayed_text(_text(out.get("text")))
                if "Traceback" in text:
                    problems.append(f"{where}: Traceback in {out.get('name', 'stream')}")
                if FIGURE_TEXT in text:
                    problems.append(f"{where}: figure printed as text")
                if STUCK_TEXT.search(text):
                    problems.append(f"{where}: progress bar stuck at 0%")
                continue
            data = out.get("data", {})
            plain = displayed_text(_text(data.get("text/plain")))
            if WIDGET_MIME in data:
                model_id = data[WIDGET_MIME].get("model_id", "")
                if model_id and model_id not in state:
                    problems.append(f"{where}: widget state not saved ({_short(plain)})")
                elif model_id and widget_progress_stuck(_widget_models(state, model_id)):
                    problems.append(f"{where}: progress bar stuck at 0%")
                continue
            if IMAGE_MIME in data:
                continue
            if FIGURE_TEXT in plain:
                problems.append(f"{where}: figure saved as text {_short(plain)!r}, no image/png")
            if "Traceback" in plain:
                problems.append(f"{where}: Traceback in output")
            if STUCK_TEXT.search(plain):
                problems.append(f"{where}: progress bar stuck at 0%")
    return problems


def expected_images(nb: dict) -> dict[int, int]:
    """Cell index -> number of image/png outputs saved in it (cells with none left out)."""
    counts = {}
    for index, cell in enumerate(nb.get("cells", [])):
        n = sum(1 for out in cell.get("outputs", []) if IMAGE_MIME in out.get("data", {}))
        if n:
            counts[index] = n
    return counts


def widget_cells(nb: dict) -> set[int]:
    """Indices of the cells that saved a widget output (tqdm.auto's progress bars, say)."""
    return {index for index, cell in enumerate(nb.get("cells", []))
            if any(WIDGET_MIME in out.get("data", {}) for out in cell.get("outputs", []))}


def dom_problems(outputs: list[dict], page_text: str = "", widgets: set[int] = frozenset()) -> list[str]:
    """Problems in the rendered outputs.

    Each output is a dict as the page script below returns it: cell (index), mime (the
    data-mime-type JupyterLab rendered), text (innerText), imgs (<img> count), progress (list of
    {"percent": bar width in %, "text": the text of the widget row around it}). `widgets`: cells
    whose .ipynb holds widget outputs; a 0% text there is the widget's saved text/plain, which
    JupyterLab shows instead of the widget in an untrusted notebook, and the message says so."""
    problems = []
    for out in outputs:
        where = f"cell {out.get('cell', '?')}"
        text = out.get("text", "") or ""
        mime = out.get("mime") or ""
        if FIGURE_TEXT in text:
            problems.append(f"{where}: shows {_short(text)!r} instead of an image")
        if "Traceback" in text:
            label = "stderr" if mime == "application/vnd.jupyter.stderr" else "output"
            problems.append(f"{where}: Traceback in {label}")
        if STUCK_TEXT.search(text):
            why = " [a tqdm widget shown as its saved text/plain]" if (
                out.get("cell") in widgets and mime == "text/plain") else ""
            problems.append(f"{where}: progress bar stuck at 0% ({_short(text)!r}){why}")
        for bar in out.get("progress", []) or []:
            if float(bar.get("percent", 0) or 0) <= 0 and STUCK_WIDGET_TEXT.search(bar.get("text", "")):
                problems.append(f"{where}: progress bar stuck at 0% ({_short(bar.get('text', ''))!r})")
        if any(marker in text for marker in UNRENDERED_WIDGET):
            problems.append(f"{where}: widget not rendered ({_short(text)!r})")
    in_outputs = any(FIGURE_TEXT in (out.get("text") or "") for out in outputs)
    if FIGURE_TEXT in page_text and not in_outputs:
        problems.append(f"{FIGURE_TEXT!r} text on the page")
    return problems


def cross_check(expected: dict[int, int], outputs: list[dict]) -> list[str]:
    """image/png outputs saved per cell against the <img> elements rendered in that cell."""
    rendered: dict[int, int] = {}
    for out in outputs:
        rendered[out.get("cell")] = rendered.get(out.get("cell"), 0) + int(out.get("imgs", 0) or 0)
    problems = []
    for cell in sorted(set(expected) | {c for c, n in rendered.items() if n}):
        want, got = expected.get(cell, 0), rendered.get(cell, 0)
        if want != got:
            problems.append(f"cell {cell}: {want} image/png output(s) saved, {got} <img> rendered")
    return problems


def report_line(name: str, problems: list[str]) -> str:
    if not problems:
        return f"{name}: OK"
    unique = list(dict.fromkeys(problems))
    return f"{name}: FAIL ({len(unique)}) " + "; ".join(unique)


def default_screenshot_dir(notebook_dir: Path, root: Path = ROOT) -> Path:
    """docs/screenshots for the committed notebooks, <dir>/screenshots for a run's copies."""
    notebook_dir = Path(notebook_dir).resolve()
    if notebook_dir == (root / "notebooks").resolve():
        return root / "docs" / "screenshots"
    return notebook_dir / "screenshots"


# ---------------------------------------------------------------- installing what is missing

def ensure_chromium() -> str | None:
    """None when /usr/bin/chromium is there (installed now if need be), else why not."""
    if CHROMIUM.exists():
        return None
    if shutil.which("apt-get") is None:
        return f"{CHROMIUM} is missing and there is no apt-get to install Debian's chromium"
    if os.geteuid() != 0:
        return f"{CHROMIUM} is missing; installing Debian's chromium needs root (apt-get install chromium)"
    print("lab-check: installing Debian's chromium (apt-get update; apt-get install -y chromium)",
          flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    lock = ["-o", "DPkg::Lock::Timeout=300"]
    t0 = time.monotonic()
    for cmd in (["apt-get", *lock, "update", "-qq"],
                ["apt-get", *lock, "install", "-y", "-qq", "chromium"]):
        done = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if done.returncode != 0:
            tail = " | ".join(done.stdout.strip().splitlines()[-2:])
            return f"'{' '.join(cmd)}' failed ({done.returncode}): {tail}"
    if not CHROMIUM.exists():
        return f"apt-get installed chromium but {CHROMIUM} is still missing"
    print(f"lab-check: chromium installed in {time.monotonic() - t0:.0f} s", flush=True)
    return None


def ensure_playwright() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
        return None
    except ImportError:
        pass
    version = pinned_version((ROOT / "requirements.txt").read_text(), "playwright")
    if version is None:
        return "playwright is not installed and requirements.txt has no playwright pin"
    print(f"lab-check: installing playwright=={version}", flush=True)
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", f"playwright=={version}",
                           "-c", str(ROOT / "requirements.lock")])
    if done.returncode != 0:
        return f"pip install playwright=={version} failed ({done.returncode})"
    import importlib
    importlib.invalidate_caches()
    return None


# ---------------------------------------------------------------- the JupyterLab server

def write_lab_settings(settings_dir: Path) -> None:
    for rel, values in LAB_SETTINGS.items():
        path = settings_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values, indent=1))


def start_lab(port: int, scratch: Path, log_path: Path) -> subprocess.Popen:
    jupyter = Path(sys.executable).parent / "jupyter"
    settings = scratch / "lab-settings"
    write_lab_settings(settings)
    env = dict(os.environ,
               JUPYTERLAB_SETTINGS_DIR=str(settings),
               JUPYTERLAB_WORKSPACES_DIR=str(scratch / "lab-workspaces"),
               JUPYTER_RUNTIME_DIR=str(scratch / "runtime"))
    cmd = [str(jupyter), "lab", "--no-browser", "--ServerApp.token=", "--ServerApp.password=",
           f"--port={port}", "--ServerApp.port_retries=0", "--ServerApp.ip=127.0.0.1",
           f"--ServerApp.root_dir={ROOT}"]
    if os.geteuid() == 0:  # CI and this machine run as root; the server refuses otherwise
        cmd.append("--allow-root")
    log = open(log_path, "w")
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)


def wait_for_lab(proc: subprocess.Popen, base: str, timeout: float) -> str | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return f"jupyter lab exited with {proc.returncode} before answering"
        try:
            with urllib.request.urlopen(f"{base}/api/status", timeout=2) as r:
                if r.status == 200:
                    return None
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    return f"jupyter lab did not answer on {base} within {timeout:.0f} s"


def stop_lab(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()  # SIGTERM: the server shuts its kernels down, then exits
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


# ---------------------------------------------------------------- the page

# Shut down the kernel sessions on this server (the page's own, from earlier pages too), from the
# page itself: the server wants the page's _xsrf cookie echoed in a header for a DELETE.
END_SESSIONS_JS = r"""
async () => {
  const m = document.cookie.match(/(?:^|;\s*)_xsrf=([^;]*)/);
  const headers = m ? {'X-XSRFToken': decodeURIComponent(m[1])} : {};
  const sessions = await (await fetch('/api/sessions')).json();
  let ended = 0;
  for (const s of sessions) {
    const r = await fetch('/api/sessions/' + s.id, {method: 'DELETE', headers});
    if (r.ok) ended += 1;
  }
  return [sessions.length, ended];
}
"""

# Everything the rules need, as plain data: one record per rendered output.
COLLECT_JS = r"""
() => {
  const panel = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden)');
  if (!panel) return null;
  const cells = [...panel.querySelectorAll('.jp-Notebook > .jp-Cell, .jp-WindowedPanel-viewport > .jp-Cell')];
  const outputs = [];
  cells.forEach((cell, index) => {
    cell.querySelectorAll('.jp-OutputArea-output').forEach(o => {
      if (o.parentElement && o.parentElement.closest('.jp-OutputArea-output')) return;
      const typed = o.matches('[data-mime-type]') ? o : o.querySelector('[data-mime-type]');
      const progress = [...o.querySelectorAll('.widget-hprogress, .widget-vprogress, .widget-progress')].map(p => {
        const bar = p.querySelector('.progress-bar');
        const size = bar ? (p.matches('.widget-vprogress') ? bar.style.height : bar.style.width) : '0';
        const row = p.closest('.widget-hbox') || o;
        return {percent: parseFloat(size) || 0, text: row.innerText};
      });
      outputs.push({cell: index, mime: typed ? typed.getAttribute('data-mime-type') : null,
                    text: o.innerText, imgs: o.querySelectorAll('img').length, progress});
    });
  });
  return {cells: cells.length, outputs, text: panel.innerText};
}
"""

# Rendered when: the notebook and its cells are attached, its kernel session exists and is idle
# (ipywidgets restores saved widgets only then), no widget says "Loading widget..." and every
# <img> has decoded.
READY_JS = r"""
async ([expectedCells, path]) => {
  const panel = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden)');
  if (!panel) return 'no notebook panel';
  const cells = panel.querySelectorAll('.jp-Notebook .jp-Cell');
  if (cells.length < expectedCells) return `cells ${cells.length}/${expectedCells}`;
  const sessions = await (await fetch('/api/sessions')).json();
  if (!sessions.some(s => s.path === path)) return 'no kernel session yet';
  const status = panel.querySelector('.jp-Notebook-ExecutionIndicator');
  const kernel = status ? status.getAttribute('data-status') : 'idle';
  if (!['idle', 'busy'].includes(kernel)) return `kernel ${kernel}`;
  const loading = [...panel.querySelectorAll('.jp-OutputArea-output')]
      .filter(o => (o.innerText || '').includes('Loading widget...')).length;
  if (loading) return `${loading} widget(s) loading`;
  const imgs = [...panel.querySelectorAll('.jp-OutputArea-output img')];
  if (imgs.some(i => !i.complete)) return 'images decoding';
  return '';
}
"""


# How much taller than its window the notebook is: the bottom of its last cell, not the
# scrollHeight (JupyterLab pads the end of a notebook with blank space to scroll into).
OVERFLOW_JS = r"""
() => {
  const panel = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden)');
  const scroller = panel.querySelector('.jp-WindowedPanel-outer') || panel.querySelector('.jp-Notebook');
  const cells = panel.querySelectorAll('.jp-Notebook .jp-Cell');
  const last = cells[cells.length - 1];
  const box = scroller.getBoundingClientRect();
  const bottom = last ? last.getBoundingClientRect().bottom - box.top + scroller.scrollTop : scroller.scrollHeight;
  return Math.max(0, Math.ceil(bottom) + 24 - scroller.clientHeight);
}
"""


def check_notebook(page, base: str, rel: str, nb: dict, shot: Path, timeout: float,
                   width: int, max_height: int) -> list[str]:
    url = f"{base}/lab/tree/{rel}?reset"  # reset: only this notebook, not the last page's tabs
    page.set_viewport_size({"width": width, "height": 900})
    page.goto(url, wait_until="domcontentloaded", timeout=timeout * 1000)
    expected_cells = len(nb.get("cells", []))
    deadline = time.monotonic() + timeout
    why, stable, problems = "not started", 0, []
    while time.monotonic() < deadline:
        why = page.evaluate(READY_JS, [expected_cells, rel])
        dialog = page.query_selector(".jp-Dialog")
        if dialog is not None:  # e.g. "Select Kernel" when the merlib kernelspec is missing
            problems.append(f"JupyterLab dialog: {_short(dialog.inner_text(), 120)!r}")
            break
        stable = stable + 1 if why == "" else 0
        if stable >= 3:  # ready three polls running (~1.5 s): nothing left arriving
            break
        time.sleep(0.5)
    if stable < 3 and not problems:
        problems.append(f"not rendered within {timeout:.0f} s ({why})")

    data = page.evaluate(COLLECT_JS)
    if data is None:
        problems.append("no notebook panel on the page")
    else:
        if data["cells"] != expected_cells:
            problems.append(f"{data['cells']} cells rendered, {expected_cells} in the .ipynb")
        problems += dom_problems(data["outputs"], data["text"], widget_cells(nb))
        problems += cross_check(expected_images(nb), data["outputs"])

    # Fold the file browser away (Ctrl+B), so that the notebook has the page's width.
    if page.query_selector("#jp-left-stack:not(.lm-mod-hidden)") is not None:
        page.keyboard.press("Control+b")
        page.wait_for_timeout(300)

    # The notebook scrolls inside its panel: make the window tall enough to show all of it.
    extra = page.evaluate(OVERFLOW_JS) if data is not None else 0
    height = min(900 + extra, max_height)
    page.set_viewport_size({"width": width, "height": height})
    page.wait_for_timeout(500)
    shot.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shot), full_page=True)
    if 900 + extra > max_height:
        print(f"lab-check: {rel}: screenshot cut at {max_height} px "
              f"(notebook is {900 + extra} px tall)", flush=True)
    return problems


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", default="notebooks",
                    help="folder of executed notebooks, relative to the repo root (default notebooks)")
    ap.add_argument("--screenshots", default=None,
                    help="where to write <stem>.png (default docs/screenshots for notebooks/, "
                         "else <dir>/screenshots)")
    ap.add_argument("--timeout", type=float, default=120, help="seconds per notebook to render")
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--max-height", type=int, default=16000,
                    help="tallest screenshot in px (Chromium cannot capture much more)")
    args = ap.parse_args(argv)

    nb_dir = (ROOT / args.dir).resolve()
    try:
        nb_dir.relative_to(ROOT)
    except ValueError:
        print(f"lab-check: {args.dir} is outside the repository ({ROOT}); JupyterLab serves only the repo")
        return 2
    notebooks = list_notebooks(nb_dir)
    if not notebooks:
        print(f"lab-check: no .ipynb in {nb_dir}")
        return 2
    shots = Path(args.screenshots).resolve() if args.screenshots else default_screenshot_dir(nb_dir)

    for need in (ensure_chromium, ensure_playwright):
        why = need()
        if why:
            print(f"lab-check: cannot run: {why}")
            return 2
    from playwright.sync_api import sync_playwright

    t0 = time.monotonic()
    before = {p: file_digest(p) for p in notebooks}
    failed = False
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="lab-check-") as tmp:
        scratch = Path(tmp)
        log_path = scratch / "jupyter-lab.log"
        proc = start_lab(port, scratch, log_path)
        try:
            why = wait_for_lab(proc, base, timeout=120)
            if why:
                tail = log_path.read_text(errors="replace").strip().splitlines()[-5:]
                print(f"lab-check: {why}\n" + "\n".join(tail))
                return 2
            with sync_playwright() as pw:
                try:  # Playwright takes the profile folder itself, as a fresh --user-data-dir
                    browser = pw.chromium.launch_persistent_context(
                        str(scratch / "chromium-profile"), executable_path=str(CHROMIUM),
                        headless=True, args=CHROMIUM_ARGS,
                        viewport={"width": args.width, "height": 900})
                except Exception as e:  # noqa: BLE001 - any failure to start is reported the same way
                    print(f"lab-check: cannot start {CHROMIUM}: {_short(str(e), 200)}")
                    return 2
                try:
                    for path in notebooks:
                        rel = path.relative_to(ROOT).as_posix()
                        shot = shots / f"{path.stem}.png"
                        try:
                            nb = json.loads(path.read_text())
                        except (OSError, ValueError) as e:
                            print(report_line(rel, [f"unreadable .ipynb: {e}"]), flush=True)
                            failed = True
                            continue
                        problems = notebook_problems(nb)
                        page = browser.new_page()
                        try:
                            problems += check_notebook(page, base, rel, nb, shot, args.timeout,
                                                       args.width, args.max_height)
                        except Exception as e:  # noqa: BLE001 - a page that never loads is a finding
                            problems.append(f"browser: {type(e).__name__}: {_short(str(e), 160)}")
                        finally:
                            try:
                                page.evaluate(END_SESSIONS_JS)
                            except Exception:  # noqa: BLE001 - the server's own shutdown ends any kernel left
                                pass
                            page.close()
                        failed |= bool(problems)
                        print(report_line(rel, problems), flush=True)
                finally:
                    browser.close()
        finally:
            stop_lab(proc)
    changed = [p.relative_to(ROOT).as_posix() for p in notebooks if file_digest(p) != before[p]]
    if changed:
        print(f"lab-check: notebooks changed while open (autosave?): {', '.join(changed)}")
        failed = True
    print(f"lab-check: {len(notebooks)} notebook(s) in {time.monotonic() - t0:.0f} s; "
          f"screenshots in {shots.relative_to(ROOT) if shots.is_relative_to(ROOT) else shots}; "
          f"{'FAIL' if failed else 'OK'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
