"""Who may do what: the allowlist check every state-changing or GPU-spending handler calls.

Actions: 'admin' actions (train, stop, resume, delete, eval, push, clean_data, export, deploy — and any
action not listed) spend GPU or change state; 'review' actions (chat, vote) need a reviewer; 'view' is read-only. Locally, with no
policy configured, everyone may do everything. On a Space the policy comes from space.yaml
(see workbench.space), and identities come from the Hugging Face login.
"""
from __future__ import annotations

import os

from workbench.deploy import space

REVIEW_ACTIONS = {"chat", "vote"}
VIEW_ACTIONS = {"view"}


class AccessDenied(PermissionError):
    pass


def current_policy():
    """The active policy: the space.yaml named by WORKBENCH_POLICY (set automatically on a Space), a locked
    policy on a Space that has none, else None (local use: everyone may do everything)."""
    path = os.environ.get("WORKBENCH_POLICY")
    if not path:
        return space.LOCKED if space.on_space() else None
    try:
        return space.load_policy(path)
    except space.SpaceConfigError as e:  # fail closed: a broken allowlist must not open the doors
        raise AccessDenied(f"The access policy cannot be read, so every protected action is refused: {e} "
                           f"Fix the file and restart the app.") from None


def role_of(username: str | None, policy=None) -> str:
    """'admin', 'reviewer', 'visitor' or 'none' for this identity under the policy."""
    policy = policy if policy is not None else current_policy()
    if policy is None:
        return "admin"
    return policy.role_of(username)


def require(action: str, username: str | None, policy=None) -> None:
    """Raise AccessDenied with a message that says who may do this and how to get access."""
    role = role_of(username, policy)
    login = "; log in with Hugging Face first." if not username else ""
    admin_only = action not in REVIEW_ACTIONS | VIEW_ACTIONS  # unknown actions fail closed: admins only
    if admin_only and role != "admin":
        raise AccessDenied(f"Only admins may {action.replace('_', ' ')} here"
                           + (login or f"; '{username}' is not on the admin allowlist in space.yaml."))
    if action in REVIEW_ACTIONS and role not in ("admin", "reviewer"):
        raise AccessDenied(f"Only reviewers may {action} here"
                           + (login or f"; '{username}' is not on the reviewer allowlist in space.yaml."))
    if role == "none":
        raise AccessDenied("This workbench is private" + (login or f"; '{username}' is not on its allowlist "
                                                                   f"in space.yaml."))
