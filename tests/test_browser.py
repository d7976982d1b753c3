"""End to end in a real browser: JupyterLab, the eBPF kernel, live widgets in Chromium.

Starts JupyterLab on 127.0.0.1 with a copy of ``tests/browser/syscalls.ipynb``,
opens it in headless Chromium through Playwright, in JupyterLab 4 and in
Notebook 7, runs all cells with the "Run All" command (``notebook:run-all-cells``),
and checks in the DOM that the map browser's
syscall counts rise while this process makes syscalls and that the event
stream's live view shows this process's events. Screenshots go to
``test-artifacts/``.
"""

from __future__ import annotations

import json
import os
import platform
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from ebpf_magic.setup import kernelspec, launcher

from conftest import loaded_prog_ids

pytestmark = [pytest.mark.kernel, pytest.mark.browser]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-dev-shm-usage"]
NOTEBOOK = Path(__file__).parent / "browser" / "syscalls.ipynb"
ARTIFACTS = Path(__file__).parents[1] / "test-artifacts"
GETPPID = {"x86_64": 110, "aarch64": 173}.get(platform.machine())
CALLS = 2000

# JupyterLab and Notebook 7 both expose their application as window.jupyterapp
# (expose_app_in_browser); the notebook is the shell's current widget.
KERNEL_IDLE = """() => { const s = window.jupyterapp?.shell.currentWidget?.sessionContext;
    const k = s?.session?.kernel;
    return !!k && k.connectionStatus === 'connected' && k.status === 'idle'; }"""
KERNEL_NAME = """() => window.jupyterapp.shell.currentWidget.sessionContext.session.kernel.name"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, token: str) -> dict:
    request = urllib.request.Request(url, headers={"Authorization": f"token {token}"})
    with urllib.request.urlopen(request, timeout=5) as reply:
        return json.loads(reply.read() or b"{}")


@pytest.fixture
def lab(tmp_path):
    """A JupyterLab server with the eBPF kernel, serving a copy of the test notebook."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"{CHROMIUM} is missing (Debian package chromium)")
    pytest.importorskip("playwright", reason="pip install playwright")
    root, prefix = tmp_path / "root", tmp_path / "prefix"
    root.mkdir()
    # The stream follows this process only (the kernel gets none of the server's
    # environment to learn it from).
    (root / NOTEBOOK.name).write_text(NOTEBOOK.read_text().replace(
        '"workload = 0"', f'"workload = {os.getpid()}"'))
    write_settings(tmp_path / "settings")
    kernelspec.install(prefix=str(prefix))
    port, token = free_port(), secrets.token_hex(16)
    env = {**os.environ, "JUPYTER_PATH": str(prefix / "share" / "jupyter"),
           "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
           "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
           "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "settings")}
    log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root",
         "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
         f"--LabApp.workspaces_dir={tmp_path / 'workspaces'}",
         "--LabApp.expose_app_in_browser=True", "--LabApp.news_url=",
         "--JupyterNotebookApp.expose_app_in_browser=True",
         "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                get(f"{base}/api/status", token)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError("JupyterLab did not start:\n" +
                                         (tmp_path / "server.log").read_text()) from None
                time.sleep(0.3)
        yield base, token
    finally:
        try:
            urllib.request.urlopen(urllib.request.Request(
                f"{base}/api/shutdown", method="POST",
                headers={"Authorization": f"token {token}"}), timeout=10)
        except OSError:
            pass
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


def write_settings(path: Path) -> None:
    """Render every cell (no windowing) and ask nothing about news."""
    settings = {"notebook-extension/tracker": {"windowingMode": "none"},
                "apputils-extension/notification": {"fetchNews": "false",
                                                     "checkForUpdates": False}}
    for name, values in settings.items():
        plugin = path / "@jupyterlab" / f"{name}.jupyterlab-settings"
        plugin.parent.mkdir(parents=True, exist_ok=True)
        plugin.write_text(json.dumps(values))


def table(page, selector: str) -> list[dict[str, str]]:
    """The rows of the first HTML table matching ``selector``, as header -> text (a header
    names its column in data-column when it shows more, such as the sort arrow)."""
    return page.eval_on_selector(selector, """t => {
        const head = [...t.querySelectorAll('thead th')].map(
            th => th.dataset.column ?? th.textContent.trim());
        return [...t.querySelectorAll('tbody tr')].map(tr => {
            const cells = [...tr.children].map(c => c.textContent.trim());
            return Object.fromEntries(head.map((h, i) => [h || '#', cells[i]]));
        });
    }""")


def count(rows: list[dict[str, str]], key: int) -> int:
    return next((int(r["value"].replace(",", "")) for r in rows if r.get("key") == str(key)), 0)


def cap_eff(pid: int | str) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^CapEff:\s*(\w+)", status, re.M).group(1), 16)


def shoot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"browser-{name}.png"), full_page=True)


SORT_SELECT = ".bpf-browser .bpf-sort select"
DESCENDING = ".bpf-browser .bpf-descending input"


def column(page, sel: str, name: str) -> list[int]:
    """The numbers in column ``name`` of the table, top to bottom."""
    return [int(r[name].replace(",", "")) for r in table(page, sel)]


def check_sorting_and_choosing(page, counts: str, ui: str) -> None:
    """The map browser as a newcomer meets it: its columns are the map's (no index), the
    sort list shows the order the status states, a header click sorts (a second click
    the other way), and a row click chooses that row's key for the editor."""
    headers = page.eval_on_selector_all(f"{counts} thead th", "ths => ths.map(th => "
                                        "[th.dataset.column, th.textContent.trim()])")
    assert headers == [["key", "key"], ["value", "value \u25bc"]]
    assert page.eval_on_selector(SORT_SELECT, "s => s.value") == "value"
    assert page.eval_on_selector(DESCENDING, "c => c.checked")
    status = page.locator(".bpf-browser", has_text="sorted by").first
    assert "sorted by value descending" in status.inner_text()
    values = column(page, counts, "value")
    assert values == sorted(values, reverse=True)

    page.click(f"{counts} thead th[data-column='key']")
    page.wait_for_function("s => document.querySelector(s).value === 'key'", arg=SORT_SELECT)
    page.wait_for_function(
        """sel => { const k = [...document.querySelectorAll(sel + ' tbody tr')]
                        .map(tr => Number(tr.children[0].textContent));
                    return k.length > 1 && k.every((x, i) => i === 0 || k[i - 1] > x); }""",
        arg=counts, timeout=15_000)
    assert page.eval_on_selector(DESCENDING, "c => c.checked")  # numbers: largest first
    page.click(f"{counts} thead th[data-column='key']")
    page.wait_for_function(
        """sel => { const k = [...document.querySelectorAll(sel + ' tbody tr')]
                        .map(tr => Number(tr.children[0].textContent));
                    return k.length > 1 && k.every((x, i) => i === 0 || k[i - 1] < x); }""",
        arg=counts, timeout=15_000)
    assert not page.eval_on_selector(DESCENDING, "c => c.checked")
    assert "sorted by key ascending" in status.inner_text()
    shoot(page, f"{ui}-3b-sorted-by-key")

    page.click(f"{counts} tbody tr:nth-child(2)")
    chosen = page.eval_on_selector(f"{counts} tbody tr:nth-child(2)", "tr => tr.dataset.key")
    page.wait_for_function("k => document.querySelector('.bpf-browser .bpf-row input').value "
                           "=== k", arg=chosen)


@pytest.mark.skipif(GETPPID is None, reason="getppid's syscall number is known here "
                    "for x86_64 and aarch64 only")
@pytest.mark.timeout(240)
@pytest.mark.parametrize("ui", ["lab", "notebook"])
def test_notebook_runs_bpf_and_widgets_update_live_in_chromium(lab, ui):
    """JupyterLab 4 and Notebook 7 (served by the same server) render the widgets."""
    from playwright.sync_api import sync_playwright

    base, token = lab
    path = {"lab": "lab/tree", "notebook": "notebooks"}[ui]
    before = loaded_prog_ids()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                     args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1600})
        page.set_default_timeout(60_000)
        try:
            page.goto(f"{base}/{path}/{NOTEBOOK.name}?token={token}")
            page.wait_for_function(KERNEL_IDLE)
            assert page.evaluate(KERNEL_NAME) == kernelspec.KERNEL_NAME
            shoot(page, f"{ui}-1-opened")

            page.evaluate("() => window.jupyterapp.commands.execute("
                          "'notebook:run-all-cells')")
            prompts = page.locator(".jp-NotebookPanel .jp-CodeCell .jp-InputPrompt")
            page.wait_for_function(
                """n => { const p = [...document.querySelectorAll(
                    '.jp-NotebookPanel .jp-CodeCell .jp-InputPrompt')];
                    return p.length === n && p.every(e => /\\[\\d+\\]/.test(e.textContent)); }""",
                arg=prompts.count(), timeout=180_000)
            errors = page.locator(".jp-OutputArea-output[data-mime-type="
                                  "'application/vnd.jupyter.stderr']").all_inner_texts()
            assert not [e for e in errors if "Error" in e], errors

            # The map browser: syscall counts by number, refreshed every 0.5 s.
            counts = "table.bpf-table"
            page.wait_for_function(
                f"() => document.querySelectorAll('{counts} tbody tr').length > 1")
            first = table(page, counts)
            shoot(page, f"{ui}-2-first-look")
            for _ in range(CALLS):
                os.getppid()
            page.wait_for_function(
                """([sel, key, n]) => [...document.querySelectorAll(sel + ' tbody tr')]
                    .some(tr => tr.children[0].textContent.trim() === String(key)
                          && Number(tr.children[1].textContent.replace(/,/g, '')) >= n)""",
                arg=[counts, GETPPID, count(first, GETPPID) + CALLS], timeout=15_000)
            second = table(page, counts)
            shoot(page, f"{ui}-3-second-look")
            assert len(second) > 1
            assert count(second, GETPPID) >= count(first, GETPPID) + CALLS
            check_sorting_and_choosing(page, counts, ui)

            # The event stream's live view: this process's getppid calls.
            live = page.locator(".jp-OutputArea-output", has_text="calls (live)")
            live.locator("table tbody tr").first.wait_for()
            events = table(page, ".jp-OutputArea-output:has-text('calls (live)') table")
            assert events and all(e["pid"] == str(os.getpid()) for e in events)
            page.wait_for_function(
                """n => [...document.querySelectorAll('.jp-OutputArea-output')].some(o =>
                    /calls \\(live\\)/.test(o.textContent) && Number((o.textContent.match(
                    /([\\d,]+) received/) || ['', '0'])[1].replace(/,/g, '')) >= n)""",
                arg=CALLS, timeout=15_000)
            live.scroll_into_view_if_needed()
            shoot(page, f"{ui}-4-stream")
            received = re.search(r"([\d,]+) received", live.inner_text())
            assert received and int(received.group(1).replace(",", "")) == CALLS

            text = page.locator(".jp-OutputArea-output", has_text="kernel pid").inner_text()
            kernel_pid, *prog_ids = (int(w) for w in re.findall(r"\d+", text))
            assert set(prog_ids) <= loaded_prog_ids() - before
            assert cap_eff(kernel_pid) == launcher.mask(launcher.wanted()) & cap_eff("self")
        except BaseException:
            shoot(page, f"{ui}-failed")
            raise
        finally:
            browser.close()
    # The fixture shuts the server down after the test; its kernel must take the
    # programs with it.
    for kernel in get(f"{base}/api/kernels", token):
        urllib.request.urlopen(urllib.request.Request(
            f"{base}/api/kernels/{kernel['id']}", method="DELETE",
            headers={"Authorization": f"token {token}"}), timeout=30)
    deadline = time.monotonic() + 20
    while os.path.exists(f"/proc/{kernel_pid}") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not os.path.exists(f"/proc/{kernel_pid}")
    assert not set(prog_ids) & loaded_prog_ids()
