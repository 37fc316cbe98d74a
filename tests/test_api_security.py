"""No request reads a server file it was not meant to: the whole HTTP API walked as an attacker would.

The real app runs with Gradio's password login and a space.yaml policy (alice admin, carol reviewer, bob a
read-only visitor). Calls go over plain HTTP exactly as a browser or a script sends them
(`/gradio_api/queue/join` by function index, so events hidden from the API docs are walked too). A file
holding a secret marker lies outside every data folder, and a symbolic link to it sits in the upload
folder; no answer may ever contain the marker, and nothing under WORKBENCH_HOME may change.
"""
from __future__ import annotations

import json
import os
import re
import uuid

import pytest

from conftest import AppServer
from test_access import DENIED, POLICY, USERS

pytestmark = pytest.mark.integration

SECRET = "TOPSECRET-7f3a9c"
FILE_TYPES = {"file", "uploadbutton", "image", "video", "audio", "gallery"}
TEXT_TYPES = {"textbox", "dropdown", "radio", "code", "markdown"}
# Handlers a read-only visitor may run successfully: each was reviewed as a view (it reads only the shipped
# data, run folders or the visitor's own session state, and writes nothing). A new handler that a visitor
# can run fails this test until it is guarded (guard.require) or reviewed and added here.
READ_ONLY_VIEWS = {
    "_load", "auto_map", "apply_map", "refresh", "lambda", "_preview_cleaning", "_undo", "_example",
    "_token_stats", "_leakage", "_show_licence", "load_preset", "_estimate_text", "_view", "on_load",
    "_render", "_examples", "_refresh", "_poll", "stop", "clear", "chat_refresh", "_plan", "_card",
    "_run_changed", "_clear", "whoami_text", "evaluate_button",
    # issue 13 (reviewed): the saved training dataset is shown, never written, for visitors (_autosave checks the
    # role and only says "read-only"); paging/selection read the session's own table; the rest read run folders.
    "_autosave", "_open_saved", "data_tick", "dataset_text", "_compare_choices", "first_page", "next_page",
    "previous_page", "row_detail",
    # _example_and_row (reviewed): _example and row_detail together, both on the session's own table.
    "_example_and_row",
    # _runs_tick (reviewed): the Train tab's run list follows the runs folder (a directory listing and the slot file,
    # run ids validated by runs.folder); it takes no path from the request and writes nothing.
    "_runs_tick",
    # _dataset_from_form (reviewed): the "Trains on" line with the form's data settings; it reads the saved dataset's
    # manifest (a server-chosen path) and echoes the form's own data.source as escaped text, never opening it.
    "_dataset_from_form",
    # issue 18 (reviewed): the recipe panel's line for the run "Use this recipe" started reads that run's status.json
    # (the id comes from the session's own state and is validated as a run id); it writes nothing.
    "_full_run_view",
    # issue 17 (reviewed): the preference views read the review store and run folders and write nothing; reviewers'
    # names are left out for visitors. _vote_pairs: pairs from the votes (a run id, validated, or all runs);
    # _vote_runs: the run list; _pick_kind: a preset name; _preference_view/_preference_preview: the parent runs and
    # what a preference run would train on (votes, or the server-chosen saved preference file); _run_picked: the
    # chat opponent list (a preference run's parent).
    "_vote_pairs", "_vote_runs", "_pick_kind", "_preference_view", "_preference_preview", "_run_picked",
}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("apisec")
    policy = root / "space.yaml"
    policy.write_text(POLICY.format(visitors="read-only"))
    secret = root / "private" / "secret.csv"
    secret.parent.mkdir()
    secret.write_text(f"question,answer\n{SECRET} question,{SECRET} answer\n")
    uploads = root / "uploads"
    (uploads / "planted").mkdir(parents=True)
    (uploads / "planted" / "link.csv").symlink_to(secret)  # a link inside the upload folder to a server file
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WORKBENCH_", "SPACE_", "GRADIO_"))}
    env.update(WORKBENCH_HOME=str(root / "wb"), WORKBENCH_POLICY=str(policy), HF_HUB_OFFLINE="1",
               GRADIO_TEMP_DIR=str(uploads))
    srv = AppServer(env, [a for user, pw in USERS.items() for a in ("--auth", f"{user}:{pw}")])
    srv.home, srv.secret, srv.link, srv.uploads = root / "wb", secret, uploads / "planted" / "link.csv", uploads
    yield srv
    srv.stop()


def login(server, user):
    import httpx

    s = httpx.Client(base_url=server.url, timeout=180)
    r = s.post("/login", data={"username": user, "password": USERS[user]})
    assert r.status_code < 400, r.text
    return s


def raw_call(s, fn_index: int, data: list, session_hash: str | None = None) -> tuple[bool, str]:
    """(success, everything the server answered as text) for one event, sent as the browser sends it."""
    sh = session_hash or uuid.uuid4().hex[:12]
    r = s.post("/gradio_api/queue/join", json={"data": data, "fn_index": fn_index, "session_hash": sh,
                                               "event_data": None, "trigger_id": None})
    if r.status_code != 200:
        return False, r.text
    answers = []
    with s.stream("GET", f"/gradio_api/queue/data?session_hash={sh}") as resp:
        for line in resp.iter_lines():
            if not line.startswith("data:"):
                continue
            msg = json.loads(line[5:])
            answers.append(msg)
            if msg.get("msg") in ("process_completed", "close_stream"):
                break
    done = [m for m in answers if m.get("msg") == "process_completed"]
    return bool(done and done[-1].get("success")), json.dumps(answers)


def file_data(path) -> dict:
    return {"path": str(path), "meta": {"_type": "gradio.FileData"}}


def app_config(s) -> tuple[list[dict], dict[int, str]]:
    cfg = s.get("/config").json()
    types = {c["id"]: str(c.get("type", "")).lower() for c in cfg["components"]}
    deps = [d for d in cfg["dependencies"] if d.get("backend_fn")]
    return deps, types


def endpoint(deps, api_name: str) -> dict:
    return next(d for d in deps if d.get("api_name") == api_name)


def snapshot(home) -> dict[str, tuple[int, int]]:
    """Every file under WORKBENCH_HOME (but the app's own log) with its size and modification time."""
    out = {}
    for dirpath, _, files in os.walk(home):
        for f in files:
            p = os.path.join(dirpath, f)
            if f != "app.log":
                st = os.lstat(p)
                out[os.path.relpath(p, home)] = (st.st_size, st.st_mtime_ns)
    return out


def test_upload_endpoint_reads_only_files_that_gradio_received(server):
    bob, alice = login(server, "bob"), login(server, "alice")
    deps, _ = app_config(alice)
    load = endpoint(deps, "_load")["id"]
    # A visitor may not load files at all, whatever the path.
    for path in (server.secret, server.link):
        ok, text = raw_call(bob, load, ["upload", "", file_data(path), None])
        assert SECRET not in text and not ok
    ok, text = raw_call(bob, load, ["file path", str(server.secret), None, None])
    assert not ok and "Only admins may load data" in text and SECRET not in text
    # An admin neither: a server path claimed as an upload, or a link planted in the upload folder, is refused.
    for path in (server.secret, server.link):
        ok, text = raw_call(alice, load, ["upload", "", file_data(path), None])
        assert SECRET not in text, f"{path} was read as an upload"
    ok, text = raw_call(alice, load, ["file path", str(server.secret), None, None])
    assert SECRET not in text and "Only files inside" in text
    # A file really sent through the upload box loads (gradio_client uploads it like the browser does).
    from gradio_client import Client, handle_file

    legit = server.home.parent / "legit.csv"
    legit.write_text("question,answer\nWhat is Delta?,A table format.\nWhat is MLflow?,Tracking.\n")
    c = Client(server.url, auth=("alice", USERS["alice"]), verbose=False)
    msg, *_ = c.predict("upload", "", handle_file(str(legit)), api_name="/_load")
    assert "Loaded **2 rows** from legit.csv" in msg


def test_leakage_endpoint_is_role_checked_and_confined_to_the_data_folders(server):
    bob, alice = login(server, "bob"), login(server, "alice")
    deps, _ = app_config(alice)
    load, auto_map, leak = (endpoint(deps, n)["id"] for n in ("_load", "auto_map", "_leakage"))
    for who, s in (("bob", bob), ("alice", alice)):
        sh = uuid.uuid4().hex[:12]  # one browser session: load the sample, map it, then check leakage
        ok, text = raw_call(s, load, ["sample (shipped)", "", None, None], sh)
        assert ok
        guessed = [u.get("value", "") for u in json.loads(text)[-1]["output"]["data"][-4:]]
        ok, _ = raw_call(s, auto_map, [None, *guessed], sh)
        assert ok
        for against in (str(server.secret), "/no/such/file.csv", "../../../etc/passwd"):
            ok, text = raw_call(s, leak, [None, against], sh)
            assert SECRET not in text
            if who == "bob":
                assert not ok and "Only admins may load data" in text
            else:  # same answer whether the file exists or not: no probing of the server's files
                assert "Only files inside" in text, text[-400:]
        ok, text = raw_call(s, leak, [None, ""], sh)  # the view itself stays open to visitors
        assert ok and "Train/eval split" in text


def test_walking_every_event_as_visitor_and_reviewer_reads_no_server_file_and_changes_nothing(server):
    bob, carol = login(server, "bob"), login(server, "carol")
    deps, types = app_config(bob)
    assert len(deps) > 40  # the whole app, hidden events included
    raw_call(bob, endpoint(deps, "_load")["id"], ["sample (shipped)", "", None, None])  # warm-up
    before = snapshot(server.home)

    def attack(dep):
        out = []
        for cid in dep["inputs"]:
            kind = types.get(cid, "")
            out.append(file_data(server.secret) if kind in FILE_TYPES else
                       str(server.secret) if kind in TEXT_TYPES else None)
        return out

    visitor_ran = set()
    for who, s in (("bob", bob), ("carol", carol)):
        for dep in deps:
            tries = [[None] * len(dep["inputs"])]
            if who == "bob" and attack(dep) != tries[0]:  # (a reviewer's chat would answer the path: slow, not a leak)
                tries.append(attack(dep))
            for args in tries:
                ok, text = raw_call(s, dep["id"], args)
                assert SECRET not in text, f"{who} read the secret through {dep.get('api_name')}"
                if ok and who == "bob":
                    visitor_ran.add(re.sub(r"_\d+$", "", str(dep.get("api_name"))))
                if not ok and DENIED.search(text):
                    assert who in text  # the refusal names who was refused
    assert snapshot(server.home) == before, "a visitor's or reviewer's call changed files on the server"
    unreviewed = visitor_ran - READ_ONLY_VIEWS
    assert not unreviewed, f"visitors can run handlers never reviewed as read-only: {sorted(unreviewed)}"


def test_preference_file_endpoint_is_role_checked_and_confined(server):
    """Issue 17: a preference file is read only from the data folders or as a real upload, by admins; the export and
    the Train tab's pairs name no path (the saved preference file's path is chosen by the server)."""
    bob, alice = login(server, "bob"), login(server, "alice")
    deps, _ = app_config(alice)
    load = endpoint(deps, "_load_pair_file")["id"]
    ok, text = raw_call(bob, load, ["file path", str(server.secret), None, "", "", ""])
    assert not ok and "Only admins may load data" in text and SECRET not in text
    for args in (["file path", str(server.secret), None], ["file path", str(server.link), None],
                 ["upload", "", file_data(server.secret)], ["upload", "", file_data(server.link)]):
        ok, text = raw_call(alice, load, [*args, "", "", ""])
        assert SECRET not in text, args
        assert not ok or "wb-error" in text, (args, text[-600:])  # Gradio refuses a server path as an upload itself
    assert not (server.home / "data" / "preferences").exists()  # nothing was saved from a refused file
