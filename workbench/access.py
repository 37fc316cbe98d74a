"""Who may do what: the allowlist check every state-changing or GPU-spending handler calls.

Actions: 'admin' actions (train, stop, resume, delete, eval, push, clean_data) spend GPU or change
state; 'review' actions (chat, vote) need a reviewer; 'view' is read-only. Locally, with no
policy configured, everyone may do everything. On a Space the policy comes from space.yaml
(see workbench.space), and identities come from the Hugging Face login.
"""
from __future__ import annotations

import os

ADMIN_ACTIONS = {"train", "stop", "resume", "delete", "eval", "push", "clean_data", "export"}
REVIEW_ACTIONS = {"chat", "vote"}


class AccessDenied(PermissionError):
    pass


def current_policy():
    """The active policy: the space.yaml one on a Space (or when WORKBENCH_POLICY names a file), else None."""
    path = os.environ.get("WORKBENCH_POLICY")
    if not path:
        return None
    from workbench.space import load_policy  # imported lazily: local use needs no space.yaml

    return load_policy(path)


def role_of(username: str | None, policy=None) -> str:
    """'admin', 'reviewer', 'visitor' or 'none' for this identity under the policy."""
    policy = policy if policy is not None else current_policy()
    if policy is None:
        return "admin"
    return policy.role_of(username)


def require(action: str, username: str | None, policy=None) -> None:
    """Raise AccessDenied with a message that says who may do this and how to get access."""
    role = role_of(username, policy)
    if action in ADMIN_ACTIONS and role != "admin":
        raise AccessDenied(f"Only admins may {action.replace('_', ' ')} here"
                           + ("; log in with Hugging Face first." if not username else
                              f"; '{username}' is not on the admin allowlist in space.yaml."))
    if action in REVIEW_ACTIONS and role not in ("admin", "reviewer"):
        raise AccessDenied(f"Only reviewers may {action} here"
                           + ("; log in with Hugging Face first." if not username else
                              f"; '{username}' is not on the reviewer allowlist in space.yaml."))
    if role == "none":
        raise AccessDenied("This workbench is private; log in with an allowed Hugging Face account.")
