"""Assemble the workbench: one tab per module in workbench/ui/, in the order users work."""
from __future__ import annotations

import importlib

import gradio as gr

from workbench import runs
from workbench.ui import guard

TABS = [("Data", "data_tab"), ("Train", "train_tab"), ("Metrics", "metrics_tab"), ("Chat", "chat_tab"),
        ("Deploy", "deploy_tab")]

CSS = """
.wb-empty {opacity: .75; font-style: italic}
.wb-warn {border-left: 4px solid #d97706; padding-left: .6em}
.wb-error {border-left: 4px solid #dc2626; padding-left: .6em}
"""


def startup() -> None:
    """Work done once when the app starts (e.g. reconcile run folders whose process is gone)."""
    runs.reconcile()
    warm_imports()


def warm_imports() -> None:
    """Import transformers here, in one thread, before any handler runs. Handlers run in worker threads, and a page
    load starts several at once: two that import transformers for the first time at the same moment can see its
    module half set up ("cannot import name 'AutoTokenizer'"; a fresh app's Data tab example failed that way)."""
    from transformers import AutoConfig, AutoTokenizer  # noqa: F401 - the names the handlers import first


def build_app() -> gr.Blocks:
    startup()
    with gr.Blocks(title="tech-llm-forge") as demo:
        gr.Markdown("# tech-llm-forge\nFine-tune an LLM on your Q&A data with 4-bit LoRA, "
                    "measure it, and compare it with the base model.")
        guard.header(demo)  # login button on a Space, who-am-I, no-volume warning
        for label, module in TABS:
            tab = importlib.import_module(f"workbench.ui.{module}")
            with gr.Tab(label, id=module):
                tab.build(demo)
        guard.gate_views(demo)  # space.yaml `visitors: none`: callers without a role get no data
    return demo
