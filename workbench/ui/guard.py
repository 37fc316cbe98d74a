"""Server-side permission checks for Gradio handlers (called inside each handler, not only by hiding buttons).

Identity comes from Gradio's password auth (`request.username`, `app.py --auth user:pass`) or, on a
Space, from the Hugging Face login (the OAuth session that `gr.LoginButton` fills). `require` is the
one check every state-changing or GPU-spending handler calls first; `gate_views` hides everything
from visitors when space.yaml says `visitors: none`; `header` adds the login button and the
storage warning on a Space.
"""
from __future__ import annotations

import functools
import html
import importlib.util
import inspect
import os
import time

import gradio as gr

from workbench.deploy import access
from workbench.deploy import space


def oauth_username(request: gr.Request | None) -> str | None:
    """The Hugging Face username of an OAuth login (session cookie set by gr.LoginButton's flow), if valid."""
    underlying = getattr(request, "request", None) if request is not None else None
    scope = getattr(underlying, "scope", None)
    session = scope.get("session") if isinstance(scope, dict) else None  # absent without SessionMiddleware
    info = (session or {}).get("oauth_info") or {}
    if not isinstance(info, dict) or (info.get("expires_at") and info["expires_at"] < time.time()):
        return None
    name = (info.get("userinfo") or {}).get("preferred_username")
    return str(name) if name else None


def username(request: gr.Request | None) -> str | None:
    if request is None:
        return None
    return getattr(request, "username", None) or oauth_username(request) or None


def refusal(message: str) -> gr.Error:
    """The error a handler raises to refuse a request (busy slot, nothing picked, bad input): shown to the user as a
    toast; not printed as a traceback into the server log, where it would bury real failures."""
    return gr.Error(message, print_exception=False)


def require(request: gr.Request | None, action: str) -> str | None:
    """Raise gr.Error when the caller may not do `action`; return the caller's name."""
    name = username(request)
    try:
        access.require(action, name)
    except access.AccessDenied as e:
        raise refusal(str(e)) from None
    return name


def may(request: gr.Request | None, action: str) -> bool:
    """Whether the caller may do `action` (for views that show more to some roles; actions use `require`)."""
    try:
        access.require(action, username(request))
    except access.AccessDenied:
        return False
    return True


def role(request: gr.Request | None) -> str:
    try:
        return access.role_of(username(request))
    except access.AccessDenied:
        return "none"


# -- visitors: none ------------------------------------------------------------------------------

def _gated(fn, n_outputs: int):
    """Wrap an event handler so a caller with role 'none' gets no data (outputs left unchanged)."""
    def blocked() -> bool:
        from gradio.context import LocalContext

        return role(LocalContext.request.get(None)) == "none"

    def nothing():
        return None if n_outputs == 0 else (gr.skip() if n_outputs == 1 else tuple(gr.skip() for _ in range(n_outputs)))

    if inspect.isasyncgenfunction(fn):
        async def wrapper(*a, **k):
            if blocked():
                yield nothing()
                return
            async for x in fn(*a, **k):
                yield x
    elif inspect.isgeneratorfunction(fn):
        def wrapper(*a, **k):
            if blocked():
                yield nothing()
                return
            yield from fn(*a, **k)
    elif inspect.iscoroutinefunction(fn):
        async def wrapper(*a, **k):
            return nothing() if blocked() else await fn(*a, **k)
    else:
        def wrapper(*a, **k):
            return nothing() if blocked() else fn(*a, **k)
    functools.update_wrapper(wrapper, fn)  # keeps the signature Gradio inspects (gr.Request, progress...)
    wrapper._wb_gated = True
    return wrapper


def gate_views(demo: gr.Blocks) -> None:
    """Make every handler return nothing to callers whose role is 'none' (space.yaml `visitors: none`).
    Checked per call on the server, so the API is covered too; handlers marked `_wb_public` are exempt."""
    for block_fn in demo.fns.values():
        fn = block_fn.fn
        if fn is None or getattr(fn, "_wb_gated", False) or getattr(fn, "_wb_public", False):
            continue
        block_fn.fn = _gated(fn, len(block_fn.outputs))


# -- header: login, who am I, storage ------------------------------------------------------------

def whoami_text(request: gr.Request) -> str:
    if not (os.environ.get("WORKBENCH_POLICY") or space.on_space()):
        return ""  # local use without a policy: nothing to say
    name, r = username(request), role(request)
    what = {"admin": "admin: may train, evaluate, push and change data",
            "reviewer": "reviewer: may chat and vote",
            "visitor": "read-only view",
            "none": "no access — log in with an allowed account"}[r]
    who = f"Signed in as <b>{html.escape(name)}</b>" if name else "Not signed in"
    return f"<div id='wb-whoami'>{who} · {what}</div>"


whoami_text._wb_public = True


def header(demo: gr.Blocks) -> None:
    """Login button (on a Space), who-am-I line, and the no-volume warning."""
    if space.on_space():
        if all(importlib.util.find_spec(m) for m in ("itsdangerous", "authlib")):
            gr.LoginButton()  # Hugging Face OAuth; needs hf_oauth: true in README (deploy writes it)
        else:
            gr.Markdown("⚠️ Hugging Face login is unavailable: install `gradio[oauth]` (deploy's requirements.txt "
                        "does); until then everyone is a visitor.", elem_classes=["wb-warn"])
    warning = space.storage_warning()
    if warning:
        gr.Markdown(f"⚠️ {warning}", elem_classes=["wb-warn"], elem_id="wb-storage-warning")
    who = gr.Markdown("", elem_id="wb-whoami-box")
    demo.load(whoami_text, None, who, api_visibility="private")
