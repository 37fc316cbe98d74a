"""`python -m workbench data ...` run as a user types it (real subprocesses, real files)."""
from __future__ import annotations

import functools
import hashlib
import http.server
import json
import os
import threading

import pytest

from conftest import free_port, run_cli
from workbench.data import dataset as data
from workbench.data import dbdemos
from workbench.data.loading import DBDEMOS_FILES

pytestmark = pytest.mark.integration


def test_inspect_reports_rows_mapping_cleaning_split_and_tokens(dbdemos_dir):
    out = run_cli("data", "inspect", "dbdemos", "--dbdemos-dir", dbdemos_dir, "--json", "--tokens")
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert r["rows"] == 4769 and r["mapping"] == {"instruction": "question", "output": "answer"}
    assert {s["step"]: s["edited"] for s in r["cleaning_preview"]}["drop_generator_chatter"] == 85
    assert r["split"]["train"] + r["split"]["eval"] == 4769 and r["leakage"]["leaked_rows"] == 0
    assert 100 < r["tokens"]["median_total"] < r["tokens"]["p95_total"] and r["tokens"]["over_max_length"] > 0
    text = run_cli("data", "inspect", "sample")
    assert text.returncode == 0 and "Source: sample — 78 rows" in text.stdout and "No leakage" in text.stdout


def test_leakage_command_flags_the_shipped_eval_set(dbdemos_dir):
    out = run_cli("data", "leakage", "dbdemos", "--dbdemos-dir", dbdemos_dir,
                  dbdemos_dir / "databricks_doc_eval_set.parquet")
    assert out.returncode == 3 and "LEAKAGE: 171 of 171 evaluation rows" in out.stdout


def test_clean_dry_run_then_write_then_split(tmp_path, dbdemos_dir):
    dry = run_cli("data", "clean", "dbdemos", "--dbdemos-dir", dbdemos_dir, "--dry-run")
    assert dry.returncode == 0 and "strip_quotes: 2,674 edited" in dry.stdout and "nothing written" in dry.stdout
    assert not list(tmp_path.iterdir())
    dest = tmp_path / "clean.jsonl"
    out = run_cli("data", "clean", "dbdemos", "--dbdemos-dir", dbdemos_dir, "--out", dest,
                  "--steps", "strip_quotes,drop_duplicate_questions")
    assert out.returncode == 0, out.stderr
    rows = data.read_jsonl(dest)
    assert set(rows[0]) == set(data.RECORD_COLUMNS) and len(rows) < 4769
    assert not any(r["instruction"].startswith('"') and r["instruction"].endswith('"') for r in rows)
    split = run_cli("data", "split", dest, "--out-dir", tmp_path / "split", "--eval-fraction", "0.2", "--steps", "")
    assert split.returncode == 0, split.stderr
    train, eval_ = data.read_jsonl(tmp_path / "split" / "train.jsonl"), data.read_jsonl(tmp_path / "split" / "eval.jsonl")
    assert len(train) + len(eval_) == len(rows) and 0.15 < len(eval_) / len(rows) < 0.25
    assert "No leakage" in split.stdout


def test_preview_marks_the_loss_tokens():
    out = run_cli("data", "preview", "sample", "--row", "1")
    assert out.returncode == 0, out.stderr
    assert "<|im_start|>assistant\n[[Use the UNPIVOT clause" in out.stdout and "<|im_end|>]]" in out.stdout
    bad = run_cli("data", "preview", "sample", "--row", "500")
    assert bad.returncode == 1 and "--row 500 is out of range; the data has rows 0 to 77" in bad.stderr


def test_clean_never_overwrites_the_source(tmp_path):
    src = tmp_path / "qa.csv"
    src.write_text("question,answer\n\"What is Delta?\",A table format with a transaction log.\n", encoding="utf-8")
    before = hashlib.sha256(src.read_bytes()).hexdigest()
    out = run_cli("data", "clean", src, "--out", src)
    assert out.returncode == 1 and "never overwrites your data" in out.stderr and "Traceback" not in out.stderr
    assert hashlib.sha256(src.read_bytes()).hexdigest() == before


@pytest.fixture
def mirror(tmp_path, dbdemos_dir):
    """The dbdemos files served over real HTTP from 127.0.0.1 (this machine has no internet; the code path is the
    same urllib download it does against raw.githubusercontent.com)."""
    root = tmp_path / "mirror"
    folder = root / dbdemos.FOLDER
    folder.mkdir(parents=True)
    (root / "LICENSE").symlink_to(dbdemos_dir / "LICENSE")
    for name in ("NOTICE", "databricks_doc_eval_set.parquet") + DBDEMOS_FILES:
        (folder / name).symlink_to(dbdemos_dir / name)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_fetch_needs_the_licence_accepted_then_downloads(tmp_path, mirror):
    env = dict(os.environ, WORKBENCH_DBDEMOS_URL=mirror)
    dest = tmp_path / "dl"
    refused = run_cli("data", "fetch-dbdemos", "--dest", dest, env=env)
    assert refused.returncode == 1 and "Databricks License" in refused.stdout and "--accept-licence" in refused.stderr
    assert not dest.exists()
    shown = run_cli("data", "fetch-dbdemos", "--show-licence", env=env)
    assert shown.returncode == 0 and "Databricks" in shown.stdout and "DBRX" in shown.stdout
    out = run_cli("data", "fetch-dbdemos", "--dest", dest, "--accept-licence", env=env)
    assert out.returncode == 0, out.stderr
    assert len(data.load_dbdemos(dest)) == 4769 and (dest / "LICENSE").is_file()


@pytest.mark.parametrize("url", ["http://127.0.0.1:{port}", "http://192.0.2.1"])  # refused / unroutable (TEST-NET-1)
def test_fetch_offline_says_what_to_do(tmp_path, url):
    env = dict(os.environ, WORKBENCH_DBDEMOS_URL=url.format(port=free_port()))
    out = run_cli("data", "fetch-dbdemos", "--dest", tmp_path / "dl", "--accept-licence", "--timeout", "2", env=env)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "seems to be offline" in out.stderr and "choose that folder as the dbdemos source" in out.stderr


def test_data_tab_download_needs_the_tickbox_then_points_the_source_at_the_files(tmp_path, mirror, monkeypatch):
    from workbench.ui import data_tab

    from workbench import paths

    monkeypatch.setenv("WORKBENCH_DBDEMOS_URL", mirror)
    dest = paths.data_dir() / "dl"
    msg, _, _ = data_tab._fetch(str(dest), False, None)
    assert "accept it” first" in msg and not dest.exists()
    msg, _, _ = data_tab._fetch(str(tmp_path / "elsewhere"), True, None)  # a folder outside the data folder
    assert "Only files inside" in msg and not (tmp_path / "elsewhere").exists()
    msg, kind, path = data_tab._fetch(str(dest), True, None)
    assert "Downloaded 5 files" in msg and kind["value"] == "dbdemos folder" and path["value"] == str(dest.resolve())
    assert "Databricks" in data_tab._show_licence()
    monkeypatch.setenv("WORKBENCH_DBDEMOS_URL", f"http://127.0.0.1:{free_port()}")
    assert "seems to be offline" in data_tab._show_licence()
