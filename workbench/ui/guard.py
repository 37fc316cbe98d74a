"""Server-side permission checks for Gradio handlers (called inside each handler, not only by hiding buttons)."""
from __future__ import annotations

import gradio as gr

from workbench import access


def username(request: gr.Request | None) -> str | None:
    if request is None:
        return None
    return getattr(request, "username", None) or None


def require(request: gr.Request | None, action: str) -> str | None:
    """Raise gr.Error when the caller may not do `action`; return the caller's name."""
    name = username(request)
    try:
        access.require(action, name)
    except access.AccessDenied as e:
        raise gr.Error(str(e)) from None
    return name
