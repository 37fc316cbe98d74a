"""The Data tab's dbdemos download: the licence first, files fetched only when the user accepts it."""
from __future__ import annotations

import gradio as gr

from workbench import paths, safety
from workbench.data import dataset as data
from workbench.data import dbdemos
from workbench.ui import guard


def _show_licence():
    try:
        return "```text\n" + dbdemos.licence_text(timeout=10) + "\n```"
    except data.DataError as e:
        return f"<div class='wb-error'>⚠️ {e}</div>"


def _fetch(dest, accepted, request: gr.Request, progress=gr.Progress()):
    guard.require(request, "clean_data")  # writes files on the server
    if not accepted:
        return ("<div class='wb-warn'>Tick “I have read the Databricks License and accept it” first; the files are "
                "not open source.</div>", gr.update(), gr.update())
    try:  # the app writes only inside its data folder; the CLI may download anywhere its user can write
        dest = safety.server_path(dest, [paths.data_dir()], "folder")
    except safety.UnsafeInput:
        return (f"<div class='wb-error'>⚠️ Only files inside {paths.data_dir()} can be written from the app; download "
                f"into a folder there (e.g. {paths.data_dir() / 'dbdemos'}).</div>", gr.update(), gr.update())
    try:
        files = dbdemos.fetch(dest, accept_licence=True, timeout=30, progress=lambda f, m: progress(f, desc=m))
    except data.DataError as e:
        return f"<div class='wb-error'>⚠️ {e}</div>", gr.update(), gr.update()
    folder = str(files[0].parent)
    return (f"Downloaded {len(files)} files into `{folder}`. The source is set to that folder: press Load.",
            gr.update(value="dbdemos folder"), gr.update(value=folder))
