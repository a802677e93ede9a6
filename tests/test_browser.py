"""Real-browser UI tests: JupyterLab runs notebook 2 and its live Q-value plot renders;
JupyterLab runs notebook 1 and the program explorer answers clicks on its buttons; in every
notebook no figure or widget is wider than its output column, and no table loses markup.

JupyterLab is served on localhost from a temporary copy of ``notebooks/`` and driven by
Playwright with Debian's Chromium (``apt-get install chromium``; no browser download). The
notebooks run with ``EVORL_BUDGET=ci`` so all cells finish in seconds. Full-page screenshots
are saved to ``test-output/jupyterlab_notebook02.png`` and ``jupyterlab_explorer.png``.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = "02_training_and_overestimation.ipynb"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WIDGET_ERRORS = ("Error displaying widget", "Failed to load model class", "Error rendering output")

pytestmark = pytest.mark.timeout(300)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def jupyter_server(tmp_path_factory):
    if not os.path.exists(CHROMIUM):
        pytest.skip("Chromium not installed: apt-get install -y chromium")
    pytest.importorskip("jupyterlab")
    base = tmp_path_factory.mktemp("jupyterlab")
    root = base / "notebooks"
    shutil.copytree(REPO / "notebooks", root, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    home = base / "home"
    for d in ("home", "config", "data", "ipython"):
        (base / d).mkdir()
    # Start the notebook's kernel without asking, keep every cell in the page (no windowing:
    # the width and table checks read all outputs), and no news pop-up over the page.
    settings = base / "settings"
    for plugin, value in {"notebook-extension/tracker": {"autoStartDefaultKernel": True,
                                                         "windowingMode": "none"},
                          "apputils-extension/notification": {"fetchNews": "false"}}.items():
        target = settings / "@jupyterlab" / f"{plugin}.jupyterlab-settings"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(value))
    port, token = _free_port(), secrets.token_hex(16)
    env = dict(
        os.environ,
        EVORL_BUDGET="ci",
        HOME=str(home),
        JUPYTER_CONFIG_DIR=str(base / "config"),
        JUPYTER_DATA_DIR=str(base / "data"),  # the venv's kernelspec stays on sys.prefix
        IPYTHONDIR=str(base / "ipython"),
        JUPYTER_PLATFORM_DIRS="1",
        PYTHONUNBUFFERED="1",
    )
    log = open(base / "jupyter.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--port={port}",
         "--ip=127.0.0.1", f"--ServerApp.token={token}", f"--ServerApp.root_dir={root}",
         "--ServerApp.port_retries=0", f"--LabApp.user_settings_dir={settings}"]
        + (["--allow-root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []),
        env=env, cwd=root, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"jupyter lab exited: {(base / 'jupyter.log').read_text()}")
            try:
                with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2):
                    break
            except (urllib.error.URLError, OSError):
                if time.monotonic() > deadline:
                    raise RuntimeError("jupyter lab did not answer within 60 s") from None
                time.sleep(0.3)
        yield url, token
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


# JS predicate: every code cell has an execution count (none queued "[*]" or unrun "[ ]"),
# or a cell raised (Run All then stops, leaving later cells unrun: fail fast, not on timeout).
ALL_EXECUTED = """() => {
  const prompts = [...document.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputPrompt')];
  const done = prompts.length > 0
    && prompts.every(p => /^\\[\\d+\\]:?$/.test(p.textContent.trim()));
  const raised = document.querySelector(
    ".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.error']") !== null;
  return done || (raised && !prompts.some(p => p.textContent.includes('*')));
}"""

# JS: per plotly plot, the number of drawn line paths with a non-empty "d" attribute.
DRAWN_LINES = """() => [...document.querySelectorAll('.js-plotly-plot')].map(plot => ({
  lines: [...plot.querySelectorAll('.scatterlayer path.js-line')]
           .filter(p => (p.getAttribute('d') || '').length > 1).length,
  traces: plot.querySelectorAll('.scatterlayer .trace').length,
}))"""


# JS: the code cells' prompts, e.g. ["[1]:", "[*]:", "[ ]:"].
PROMPTS = """() => [...document.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputPrompt')]
  .map(p => p.textContent.trim())"""


def run_all(page, timeout: float = 180.0) -> None:
    """Run every cell and wait until all ran. JupyterLab may still ask which kernel to start
    (accept its preselected one) or drop a Run All issued before the kernel was ready: so
    re-issue Run All while no cell has started, and accept any dialog on the way."""
    accept = page.locator(".jp-Dialog .jp-Dialog-button.jp-mod-accept")
    idle = page.locator(
        ".jp-NotebookPanel-toolbar .jp-Notebook-ExecutionIndicator[data-status='idle']")
    deadline, last_run, idle_since = time.monotonic() + timeout, -1e9, None
    while not page.evaluate(ALL_EXECUTED):
        assert time.monotonic() < deadline, f"cells not all run: {page.evaluate(PROMPTS)}"
        if accept.count() and accept.first.is_visible():
            accept.first.click()
        if idle.count() == 0:
            idle_since = None
        elif idle_since is None:
            idle_since = time.monotonic()
        started = any(p not in ("[ ]:", "[ ]") for p in page.evaluate(PROMPTS))
        # Run All only once the kernel is idle and the widget manager had a moment to connect
        # (output of a widget created earlier says "model not found")
        ready = idle_since is not None and time.monotonic() - idle_since > 3
        if ready and not started and time.monotonic() - last_run > 15:
            page.keyboard.press("Escape")  # close any open menu first
            page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
            page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
            last_run = time.monotonic()
        page.wait_for_timeout(500)


@contextlib.contextmanager
def notebook_page(server, notebook: str, screenshot: Path):
    """A Chromium page on ``notebook`` in JupyterLab with every cell run; a full-page
    screenshot is saved when the block ends, whether it passed or not."""
    sync_api = pytest.importorskip("playwright.sync_api")
    url, token = server
    screenshot.parent.mkdir(exist_ok=True)
    with sync_api.sync_playwright() as pw:
        with tempfile.TemporaryDirectory(prefix="chromium-profile-") as user_data:
            context = pw.chromium.launch_persistent_context(
                user_data, executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True,
                viewport={"width": 1400, "height": 1000},
            )
            try:
                page = context.pages[0] if context.pages else context.new_page()
                # a workspace of its own: JupyterLab would otherwise restore the tabs an
                # earlier test left open, and their unrun cells would be counted too
                page.goto(f"{url}/lab/workspaces/{Path(notebook).stem}/tree/{notebook}"
                          f"?token={token}", timeout=60_000)
                page.wait_for_selector(".jp-Notebook .jp-CodeCell", timeout=60_000)
                run_all(page)
                try:
                    yield page
                finally:
                    page.screenshot(path=str(screenshot), full_page=True)
            finally:
                context.close()


def page_errors(page) -> tuple[str, list[str]]:
    """The page's text and the texts of the error outputs of its cells."""
    return page.locator("body").inner_text(), page.locator(
        ".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.error']"
    ).all_inner_texts()


# JS: every figure or widget that reaches past the right edge of its cell's output column,
# and the output column's width (JupyterLab at 1400 px with the file browser open: ~970 px).
OVERFLOWS = """() => {
  const outs = [...document.querySelectorAll('.jp-Notebook .jp-OutputArea-output')];
  const found = [];
  for (const o of outs) {
    const col = o.getBoundingClientRect();
    if (col.width === 0) continue;
    for (const e of o.querySelectorAll('.js-plotly-plot .main-svg, .widget-box, img')) {
      const r = e.getBoundingClientRect();
      if (r.width > 0 && r.right > col.right + 2)
        found.push({what: e.tagName + '.' + (e.getAttribute('class') || ''),
                    width: Math.round(r.width), column: Math.round(col.width),
                    over: Math.round(r.right - col.right)});
    }
    for (const t of o.querySelectorAll('.js-plotly-plot .legendtext')) {  // legends not cut
      const svg = t.closest('svg').getBoundingClientRect(), r = t.getBoundingClientRect();
      if (r.width > 0 && (r.right > svg.right + 1 || r.right > col.right + 2))
        found.push({what: 'legend "' + t.textContent + '"', over: Math.round(r.right - svg.right)});
    }
  }
  return {found, columns: outs.map(o => Math.round(o.getBoundingClientRect().width))
                                 .filter(w => w > 0)};
}"""

# JS: elements inside table cells that are not text markup or typeset math: an equation
# such as "<s_t, s_{t+1}>" written into HTML unescaped becomes an unknown element and
# vanishes.
STRAY_TAGS = """() => [...document.querySelectorAll('.jp-OutputArea-output td *')]
  .filter(e => !e.closest('mjx-container'))  // typeset math (MathJax's own elements)
  .map(e => e.tagName).filter(t => !['CODE', 'B', 'I', 'EM', 'STRONG', 'SPAN', 'SUB', 'SUP',
                                     'BR', 'A', 'DIV', 'P'].includes(t))"""


def assert_fits(page) -> None:
    """No figure or widget in the notebook is wider than its output column."""
    page.wait_for_timeout(500)
    seen = page.evaluate(OVERFLOWS)
    assert seen["columns"], "no outputs to measure"
    assert not seen["found"], f"wider than the output column: {seen['found']}"


@pytest.mark.parametrize("notebook", ["03_running_an_evolution.ipynb",
                                      "04_analysing_a_run.ipynb",
                                      "05_reproducing_the_paper.ipynb"])
def test_notebook_outputs_fit_their_column_and_tables_show_their_equations(jupyter_server,
                                                                          notebook):
    screenshot = REPO / "test-output" / f"jupyterlab_{Path(notebook).stem}.png"
    with notebook_page(jupyter_server, notebook, screenshot) as page:
        page.wait_for_timeout(1000)
        text, errors = page_errors(page)
        stray = page.evaluate(STRAY_TAGS)
        cells = page.locator(".jp-OutputArea-output td").all_inner_texts()
        typeset = page.locator(".jp-OutputArea-output td mjx-container").count()
        assert_fits(page)
    assert not errors, f"cells raised errors: {errors}"
    for message in WIDGET_ERRORS:
        assert message not in text, f"widget error in page: {message!r}"
    assert not stray, f"markup from table cells rendered as elements: {stray}"
    if notebook.startswith("03"):  # the dashboard's top programs, typeset by MathJax
        assert typeset > 0, "the dashboard's equations were not typeset"
    if notebook.startswith("04"):  # its tables show equations, angle brackets included
        assert any("Q(s_t, a_t)" in c or "δ^2" in c for c in cells), cells[:20]
        assert any("<s_" in c for c in cells), [c for c in cells if "s_" in c]


def test_notebook02_runs_in_jupyterlab_and_plots(jupyter_server):
    screenshot = REPO / "test-output" / "jupyterlab_notebook02.png"
    with notebook_page(jupyter_server, NOTEBOOK, screenshot) as page:
        # Let the widget views draw the last updates.
        page.wait_for_function(f"() => ({DRAWN_LINES})().some(p => p.lines > 0)",
                               timeout=30_000)
        page.wait_for_timeout(1000)
        plots = page.evaluate(DRAWN_LINES)
        text, errors = page_errors(page)
        # Show the live Q-value plot (the one with the most lines) in the shot.
        if plots:
            best = max(range(len(plots)), key=lambda i: plots[i]["lines"])
            page.locator(".js-plotly-plot").nth(best).scroll_into_view_if_needed()
            page.wait_for_timeout(500)
        assert_fits(page)

    assert screenshot.exists()
    assert not errors, f"cells raised errors: {errors}"
    for message in WIDGET_ERRORS:
        assert message not in text, f"widget error in page: {message!r}"
    assert plots, "no plotly plot rendered"
    assert any(p["lines"] > 0 for p in plots), f"no plot drew lines with data: {plots}"
    # The live QValueMonitor FigureWidget: Q(s0) and return lines for 4 algorithms.
    assert max(p["lines"] for p in plots) >= 8, f"live Q-value plot incomplete: {plots}"


# JS: the explorer's parts, read from the page (its history line, status line, curve lines).
EXPLORER_STATE = """() => {
  const html = [...document.querySelectorAll('.widget-html-content')].map(e => e.textContent);
  return {
    history: html.filter(t => t.startsWith('history:')).pop() || '',
    status: html.filter(t => t.includes('normalized score') || t.includes('training')
                             || t.includes('failed') || t.includes('error')).pop() || '',
    lines: [...document.querySelectorAll('.js-plotly-plot')].map(plot =>
      [...plot.querySelectorAll('.scatterlayer path.js-line')]
        .filter(p => (p.getAttribute('d') || '').length > 1).length),
  };
}"""


def test_notebook01_program_explorer_answers_clicks(jupyter_server):
    screenshot = REPO / "test-output" / "jupyterlab_explorer.png"
    with notebook_page(jupyter_server, "01_programs_as_graphs.ipynb", screenshot) as page:
        def wait(predicate: str, timeout: float = 30_000) -> None:
            page.wait_for_function(
                f"() => {{ const s = ({EXPLORER_STATE})(); return {predicate}; }}",
                timeout=timeout)

        def button(name: str):
            return page.locator("button.widget-button", has_text=name).first

        button("Mutate").scroll_into_view_if_needed()
        wait("s.history.includes('→')")  # the notebook mutated DQNReg once
        before = page.evaluate(EXPLORER_STATE)
        button("Mutate").click()
        wait(f"s.history.split('→').length === {before['history'].count('→') + 2}")
        after_mutate = page.evaluate(EXPLORER_STATE)
        button("Back").click()
        wait(f"s.history === {json.dumps(before['history'])}")
        button("Evaluate").click()
        wait("s.status.includes('normalized score')", timeout=60_000)
        page.wait_for_timeout(1000)
        evaluated = page.evaluate(EXPLORER_STATE)
        text, errors = page_errors(page)
        button("Evaluate").scroll_into_view_if_needed()
        assert_fits(page)

    assert not errors, f"cells raised errors: {errors}"
    for message in WIDGET_ERRORS:
        assert message not in text, f"widget error in page: {message!r}"
    assert after_mutate["history"].count("→") == before["history"].count("→") + 1
    # the evaluation plotted its episodes live: more drawn lines than before it ran
    assert sum(evaluated["lines"]) > sum(before["lines"]), (before, evaluated)
