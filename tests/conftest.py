"""Shared test fixtures: an isolated workbench home, the real app server, a real browser."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DBDEMOS = REPO.parent / "shared" / "data" / "databricks-docs-qa"
CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(autouse=True)
def wb_home(tmp_path, monkeypatch):
    """Every test gets its own WORKBENCH_HOME; the converted model cache stays shared (slow to build)."""
    home = tmp_path / "wbhome"
    monkeypatch.setenv("WORKBENCH_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    for var in ("WORKBENCH_RUNS_DIR", "WORKBENCH_CACHE_DIR", "WORKBENCH_DATA_DIR", "WORKBENCH_POLICY",
                "WORKBENCH_VOLUME", "SPACE_ID"):
        monkeypatch.delenv(var, raising=False)
    return home


@pytest.fixture
def dbdemos_dir():
    if not (SHARED_DBDEMOS / "training_dataset_question.parquet").is_file():
        pytest.skip(f"dbdemos data not found at {SHARED_DBDEMOS}")
    return SHARED_DBDEMOS


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_cli(*args, env=None, timeout=600, input=None) -> subprocess.CompletedProcess:
    """Run `python -m workbench ARGS` as a user types it."""
    return subprocess.run([sys.executable, "-m", "workbench", *map(str, args)], cwd=REPO, env=env or os.environ.copy(),
                          capture_output=True, text=True, timeout=timeout, input=input)


class AppServer:
    def __init__(self, env: dict, extra_args=()):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log = Path(env["WORKBENCH_HOME"]) / "app.log"
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen([sys.executable, "app.py", "--port", str(self.port), *extra_args], cwd=REPO,
                                     env=env, stdout=self.log.open("w"), stderr=subprocess.STDOUT)
        deadline = time.time() + 180
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"app exited early:\n{self.log.read_text()[-4000:]}")
            try:
                urllib.request.urlopen(self.url, timeout=2)
                return
            except Exception:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"app did not start in time:\n{self.log.read_text()[-4000:]}")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@pytest.fixture
def app_server(wb_home):
    """The real app (`python app.py`) on a free port, with this test's WORKBENCH_HOME."""
    server = AppServer(os.environ.copy())
    yield server
    server.stop()


@pytest.fixture(scope="session")
def _browser():
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail("Debian chromium is missing: run `bash scripts/test.sh` (it installs it) or apt-get install chromium")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"])
        yield browser
        browser.close()


@pytest.fixture
def page(_browser, request):
    """A fresh browser page; a screenshot lands in test-artifacts/ when the test fails."""
    context = _browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = context.new_page()
    pg.set_default_timeout(30_000)
    from playwright.sync_api import expect
    # assertions wait up to 20 s, not Playwright's 5: a shared 2-core CI machine once took longer than 5 s to show
    # a finished answer; a passing assertion still returns at once, only a failing one waits the whole time
    expect.set_options(timeout=20_000)
    yield pg
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        out = REPO / "test-artifacts"
        out.mkdir(exist_ok=True)
        try:
            pg.screenshot(path=str(out / f"{request.node.name}.png"), full_page=True)
        except Exception as e:  # the page may be gone; the test failure is what matters
            print(f"screenshot failed: {e}")
    context.close()


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)
