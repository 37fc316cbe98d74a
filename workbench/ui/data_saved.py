"""The Data tab's table as the training dataset: saved under the data folder for those who may train."""
from __future__ import annotations

import gradio as gr

from workbench.data import workspace
from workbench.ui import guard


def save_current(state) -> dict:
    """The session's table becomes the saved training dataset (workspace: a server-chosen file)."""
    steps = [s for group in state.get("steps") or [] for s in group]
    return workspace.save(state["table"], state.get("source", ""), state.get("mapping"), steps)


def _saved_text(meta) -> str:
    return (f"✅ **This is the training dataset**: {workspace.describe(meta)}. The Train tab's Start trains on it "
            f"(see “Training data” there).")


def _autosave(state, request: gr.Request = None):
    """After a Load, mapping, cleaning or undo by someone who may train: save the table as the training dataset.
    A read-only visitor's table stays in their browser session only."""
    if state.get("table") is None or state.get("pending"):
        return gr.skip()
    if not guard.may(request, "train"):
        return "*Read-only view: this table is not saved as the training dataset (admins only).*"
    return _saved_text(save_current(state))


def _train_on_this(state, request: gr.Request):
    guard.require(request, "train")
    if state.get("table") is None:
        raise guard.refusal("Load data first (choose a source above and press Load).")
    meta = save_current(state)
    gr.Info(f"Saved {meta['rows']:,} records: open the Train tab and press Start.")
    return _saved_text(meta)
