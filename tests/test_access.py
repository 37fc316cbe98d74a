"""The allowlist, checked on the server in each handler, through the real Gradio server and gradio_client.

The app runs as `python app.py --auth alice:… --auth bob:… --auth carol:…` (Gradio's real password login
sets request.username) with WORKBENCH_POLICY pointing at a space.yaml where alice is admin, carol a
reviewer and bob nobody. Protected endpoints are found generically: every UI handler whose body calls
`guard.require(request, "<action>")` unconditionally, matched (by function) to the API name Gradio gives it.
"""
from __future__ import annotations

import ast
import inspect
import os
import re
import time
from concurrent.futures import TimeoutError as FutureTimeout

import pytest

from conftest import REPO, AppServer
from workbench.deploy import access

pytestmark = pytest.mark.integration

USERS = {"alice": "pw-alice", "bob": "pw-bob", "carol": "pw-carol"}
POLICY = """
space_id: alice/forge
hardware: t4-medium
access:
  admins: [alice]
  reviewers: [carol]
  visitors: {visitors}
"""
DENIED = re.compile(r"Only (admins|reviewers) may|allowlist|workbench is private|log in with Hugging Face")


def guard_calls() -> dict[tuple[str, str], str]:
    """(module, function) -> action, for UI functions whose body calls guard.require(request, "<action>")
    as a top-level (unconditional) statement."""
    found = {}
    for path in sorted((REPO / "workbench" / "ui").glob("*.py")):
        module = f"workbench.ui.{path.stem}"
        for fn in ast.walk(ast.parse(path.read_text())):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for stmt in fn.body:
                call = getattr(stmt, "value", None)
                if (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and call.func.attr == "require"
                        and getattr(call.func.value, "id", "") == "guard" and len(call.args) == 2
                        and isinstance(call.args[1], ast.Constant)):
                    found[(module, fn.name)] = call.args[1].value
    return found


def protected_endpoints() -> dict[str, str]:
    """API name -> action: the app is built here exactly as app.py builds it, and each event's handler is
    matched to its guard call (Gradio names the endpoints; two tabs may both have a `_stop`)."""
    from workbench.ui.app import build_app

    calls, out = guard_calls(), {}
    for block_fn in build_app().fns.values():
        fn = inspect.unwrap(block_fn.fn) if block_fn.fn else None
        key = (getattr(fn, "__module__", ""), getattr(fn, "__name__", ""))
        if key in calls and block_fn.api_visibility != "private":
            out["/" + block_fn.api_name] = calls[key]
        elif str(block_fn.api_name).startswith("vote"):  # chat's vote buttons delegate to a guarded _vote
            out["/" + block_fn.api_name] = "vote"
    return out


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    home = tmp_path_factory.mktemp("access")
    policy = home / "space.yaml"
    policy.write_text(POLICY.format(visitors="read-only"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WORKBENCH_", "SPACE_"))}
    env.update(WORKBENCH_HOME=str(home / "wb"), WORKBENCH_POLICY=str(policy), HF_HUB_OFFLINE="1")
    args = [a for user, pw in USERS.items() for a in ("--auth", f"{user}:{pw}")]
    srv = AppServer(env, args)
    srv.policy, srv.home = policy, home / "wb"
    yield srv
    srv.stop()


def client(server, user):
    from gradio_client import Client

    return Client(server.url, auth=(user, USERS[user]), verbose=False)


def call(c, api_name: str, *args):
    """(ok, message): the endpoint's result or its error text."""
    try:
        return True, c.submit(*args, api_name=api_name).result(timeout=120)
    except FutureTimeout:
        pytest.fail(f"{api_name} did not answer within 120 s")
    except Exception as e:  # gradio_client raises AppError with the handler's gr.Error message
        return False, str(e)


def endpoint_args(c) -> dict[str, list]:
    """API name -> an empty value per parameter ([] for lists, False for booleans, the default for numbers
    (sliders check bounds), else None): inputs that pass Gradio's own checks, so the handler runs, but that
    no handler accepts as work to do."""
    def empty(param):
        kind = str(param["python_type"]["type"])
        if kind in ("int", "float") and param.get("parameter_has_default"):
            return param.get("parameter_default")
        return [] if kind.startswith("list") else False if kind == "bool" else None

    info = c.view_api(return_format="dict", print_info=False)["named_endpoints"]
    return {name: [empty(p) for p in ep["parameters"]] for name, ep in info.items()}


def test_every_protected_endpoint_refuses_without_an_allowed_identity_and_works_with_one(server):
    protected = protected_endpoints()
    clients = {u: client(server, u) for u in USERS}
    endpoints = endpoint_args(clients["alice"])
    assert {"/_push", "/_deploy", "/_start", "/_stop"} <= set(protected) <= set(endpoints), sorted(protected)
    for api_name, action in sorted(protected.items()):
        review = action in access.REVIEW_ACTIONS
        for user in ("bob", "carol", "alice"):
            ok, msg = call(clients[user], api_name, *endpoints[api_name])
            allowed = user == "alice" or (user == "carol" and review)
            if allowed:
                assert ok or not DENIED.search(msg), f"{user} was refused {api_name} ({action}): {msg}"
            else:
                assert not ok and DENIED.search(msg), f"{user} was not refused {api_name} ({action}): {msg}"
                assert user in msg  # the message names who was refused and which allowlist to join
    runs_dir = server.home / "runs"
    assert not runs_dir.exists() or not any(runs_dir.iterdir()), "a protected call started a run"


def test_reading_server_paths_needs_an_admin(server):
    ok, msg = call(client(server, "bob"), "/_load", "file path", "/etc/passwd", None)
    assert not ok and "Only admins" in msg


def test_path_traversal_is_refused_through_the_server(server):
    alice = client(server, "alice")
    ok, msg = call(alice, "/_push", "../../etc", "alice/x", True, False)
    assert not ok and "not a valid run id" in msg
    # the Space manifest is picked by name from the server's list: no path (inside the app folder or out) is read
    for name in ("../../../etc/passwd", "/etc/passwd", "app.py", "requirements.txt", ".workbench/runs"):
        ok, msg = call(alice, "/_plan", name)
        assert not ok and "not in the list of choices: ['space.yaml']" in msg, (name, msg)  # gradio's own check
    import gradio as gr

    from workbench.ui import deploy_tab

    for name in ("app.py", ".workbench/data/reviews.sqlite", "../space.yaml"):  # and the handler's, behind it
        with pytest.raises(gr.Error, match="is not one of the Space manifests in the app folder"):
            deploy_tab._config_path(name)
    assert deploy_tab._config_path("space.yaml").name == "space.yaml"


def test_visitors_read_only_see_views_and_visitors_none_see_nothing(server):
    bob, alice = client(server, "bob"), client(server, "alice")
    ok, text = call(bob, "/_plan", "space.yaml")
    assert ok and "api.create_repo" in text
    server.policy.write_text(POLICY.format(visitors="none"))  # the app re-reads the policy when it changes
    time.sleep(0.05)
    try:
        ok, text = call(bob, "/_plan", "space.yaml")
        assert ok and "api.create_repo" not in str(text)  # the output is left unchanged: no data for bob
        ok, text = call(alice, "/_plan", "space.yaml")
        assert ok and "api.create_repo" in text
    finally:
        server.policy.write_text(POLICY.format(visitors="read-only"))


def test_wrong_password_gets_no_session(server):
    from gradio_client import Client

    with pytest.raises(ValueError, match="Could not login"):  # gradio_client's refusal of a bad password
        Client(server.url, auth=("alice", "wrong"), verbose=False)


def test_oauth_identity_is_read_from_the_session(monkeypatch, tmp_path):
    """On a Space, Gradio's OAuth flow stores the HF profile in the session cookie; guard reads it from there.
    (The HF OAuth provider cannot be reached here, so the session content is built as the flow leaves it.)"""
    import gradio as gr
    from starlette.requests import Request

    from workbench.ui import guard

    def request_with(session):
        scope = {"type": "http", "method": "POST", "path": "/", "headers": [], "query_string": b""}
        if session is not None:
            scope["session"] = session
        return gr.Request(request=Request(scope))

    live = {"oauth_info": {"userinfo": {"preferred_username": "alice"}, "expires_at": int(time.time()) + 600}}
    expired = {"oauth_info": {"userinfo": {"preferred_username": "alice"}, "expires_at": int(time.time()) - 1}}
    assert guard.username(request_with(live)) == "alice"
    assert guard.username(request_with(expired)) is None and guard.username(request_with(None)) is None
    policy = tmp_path / "space.yaml"
    policy.write_text(POLICY.format(visitors="read-only"))
    monkeypatch.setenv("WORKBENCH_POLICY", str(policy))
    assert guard.require(request_with(live), "push") == "alice"
    with pytest.raises(gr.Error, match="log in with Hugging Face"):
        guard.require(request_with(expired), "push")
