"""Preference tuning in the app (issue 17): the Data tab's "Preference pairs" view (pairs from blind votes or a
preference file, the report, a table, export) and the Train tab's preference controls (parent run, pairs source,
what the run would train on).

Nothing here lets a request name a file the app then reads: votes come from the review store, a typed file path is
confined to the data folders (workbench.data.preferences.pairs_source), an upload is read only from Gradio's upload
folder (safety.check_upload), and a loaded file is saved at a path the server chooses (saved_path), which is what a
preference run reads. Downloads are written to a fresh temporary folder.
"""
from __future__ import annotations

import html
import tempfile
from pathlib import Path

import gradio as gr
import pandas as pd

from workbench import paths, runs, safety
from workbench.data import preferences as prefs
from workbench.data.loading import DataError
from workbench.ui import guard

ALL_RUNS = "(all runs)"
FILE_SOURCES = ["file path", "upload"]
CELL = 160
TABLE_HEADERS = ["id", "prompt", "chosen", "rejected", "votes", "reviewer", "chosen side", "time"]
VOTES, DATA_FILE = "Votes on the parent run", "The Data tab's preference file"


def _cut(text, width=CELL) -> str:
    text = " ".join(str(text or "").split())
    return text if len(text) <= width else text[:width].rstrip() + "…"


# -- what the view shows (plain data) --------------------------------------------------------------

def report_md(report: dict, source: str, names: bool = True) -> str:
    """Counts, the rule, every duplicate and contradiction group listed (never averaged), readiness.
    `names` False (read-only visitors): reviewers are not named."""
    skipped = report.get("skipped") or {}
    unit = report.get("unit", "preferring vote")
    n = len(report["pairs"])
    ready = prefs.readiness(n)
    css = {"refuse": "wb-error", "warn": "wb-warn"}.get(ready["level"], "")
    counts = [f"<b id='pref-count'>{n} usable pair{'s' * (n != 1)}</b>", f"{report['n_candidates']} {unit}(s) read"]
    if "tie" in skipped:
        counts.append(f"{skipped.get('tie', 0)} tie(s) and {skipped.get('both_bad', 0)} 'both bad' vote(s) are not "
                      f"pairs")
    if skipped.get("empty"):
        counts.append(f"{skipped['empty']} row(s) with an empty prompt/chosen/rejected skipped")
    counts += [f"{len(report['duplicates'])} duplicate group(s)",
               f"{len(report['contradictions'])} contradiction(s) ({report['excluded']} vote(s) left out)",
               f"{report['identical']} identical-answer pair(s) dropped"]
    lines = [f"<div id='pref-report'><b>Pairs from {html.escape(source)}:</b> " + " · ".join(counts) + "</div>",
             f"<div class='{css}' id='pref-readiness'>{html.escape(ready['message'])}</div>",
             f"<div><i>Rule: {html.escape(report.get('rule', prefs.RULE))}.</i></div>"]

    def who(vote):
        return html.escape(vote.get("reviewer") or "?") if names else "a reviewer"

    if report["duplicates"]:
        items = "".join(f"<li>{len(g['votes'])} agree on “{html.escape(_cut(g['prompt'], 90))}”"
                        + (f" ({', '.join(sorted({who(v) for v in g['votes']}))})" if names else "") + "</li>"
                        for g in report["duplicates"])
        lines.append(f"<div id='pref-duplicates'><b>Duplicates</b> (trained once per distinct answer pair):"
                     f"<ul>{items}</ul></div>")
    if report["contradictions"]:
        items = "".join(
            f"<li>“{html.escape(_cut(g['prompt'], 90))}”: "
            + "; ".join(f"{who(v)} chose {html.escape(v.get('chosen_side') or _cut(v.get('chosen'), 40))}"
                        for v in g["votes"]) + "</li>" for g in report["contradictions"])
        lines.append(f"<div class='wb-warn' id='pref-contradictions'><b>Contradictions, left out of training</b> "
                     f"(the reviewers disagree, so neither answer is “chosen”):<ul>{items}</ul></div>")
    return "\n".join(lines)


def pairs_table(pairs: list[dict], names: bool = True) -> pd.DataFrame:
    rows = [[p["id"], _cut(p["prompt"]), _cut(p["chosen"]), _cut(p["rejected"]), p.get("votes", 1),
             (p.get("reviewer") or "") if names else "—", p.get("chosen_side") or "", p.get("created_at") or ""]
            for p in pairs]
    return pd.DataFrame(rows, columns=TABLE_HEADERS)


def vote_run_choices() -> list[str]:
    return [ALL_RUNS] + [r["id"] for r in runs.list_runs()]


# -- Data tab handlers ---------------------------------------------------------------------------

def _vote_pairs(run_pick, request: gr.Request = None):
    """Pairs from the blind votes of one run (or all runs). A view: it reads the review store and writes nothing."""
    if guard.role(request) == "none":  # (space.yaml `visitors: none` also gates every view)
        raise guard.refusal("This workbench is private; log in with an allowed account.")
    run_id = None if not run_pick or run_pick == ALL_RUNS else str(run_pick)
    try:
        report = _votes_report(run_id)
    except runs.RunError as e:
        raise guard.refusal(str(e)) from None
    names = guard.may(request, "vote")  # reviewers' names are for reviewers and admins, not for read-only visitors
    source = f"the blind votes on {run_id}" if run_id else "all blind votes"
    state = {"pairs": report["pairs"], "name": f"pairs-{run_id or 'all-runs'}.jsonl"}
    return state, report_md(report, source, names), pairs_table(report["pairs"], names), gr.skip(), gr.skip()


def _votes_report(run_id):
    from workbench.evaluation.preferences import pairs_from_votes

    return pairs_from_votes(run_id)


def _load_pair_file(kind, path, upload, prompt_col, chosen_col, rejected_col, request: gr.Request):
    """Load a preference file (a typed path inside the data folders, or an upload from Gradio's upload folder) with
    the Q&A loader's checks; its usable pairs become the Data tab's preference file (a server-chosen path)."""
    guard.require(request, "load_data")
    columns = {"prompt": prompt_col, "chosen": chosen_col, "rejected": rejected_col}
    try:
        if kind == "upload":
            if not upload:
                raise DataError("No file uploaded yet; drop a JSONL, CSV, JSON or Parquet file on the upload box.")
            source = safety.check_upload(upload, inside_dir=paths.upload_dir())
        else:
            source = prefs.pairs_source(path, server=True)
        report = prefs.load_preference_file(source, columns={k: v for k, v in columns.items() if v}, server=True)
    except (DataError, safety.UnsafeInput) as e:
        return (gr.skip(), f"<div class='wb-error' id='pref-error'>⚠️ {html.escape(str(e))}</div>", gr.skip(),
                gr.skip(), gr.skip())
    meta = prefs.save_loaded(report)
    saved = (f"<div id='pref-saved'>Saved {meta['pairs']} pair(s) as <b>the Data tab's preference file</b>: the Train "
             f"tab's preference tuning can train on it (“{DATA_FILE}”).</div>")
    mapping = ", ".join(f"{k} ← {v}" for k, v in report["columns"].items())
    state = {"pairs": report["pairs"], "name": f"pairs-{Path(report['file']).stem}.jsonl"}
    return (state, report_md(report, f"{report['file']} (columns: {mapping})") + saved,
            pairs_table(report["pairs"]), gr.update(value=f"Columns used: {mapping}"), gr.skip())


def _export_pairs(state, request: gr.Request):
    """The pairs shown, as JSONL, written to a fresh temporary folder (the request names no path)."""
    guard.require(request, "export")
    pairs = (state or {}).get("pairs")
    if not pairs:
        raise guard.refusal("Show pairs first (press “Show pairs from votes” or load a preference file).")
    try:
        name = safety.safe_file_name(str((state or {}).get("name") or "pairs.jsonl"))
    except safety.UnsafeInput:
        name = "pairs.jsonl"
    out = Path(tempfile.mkdtemp(prefix="wb-pairs-")) / name
    prefs.write_pairs_jsonl(pairs, out)
    return str(out)


def _vote_runs():
    return gr.update(choices=vote_run_choices())


def build_data(demo: gr.Blocks) -> None:
    """The Data tab's "Preference pairs" accordion."""
    with gr.Accordion("Preference pairs (from blind review votes, or a preference file)", open=False,
                      elem_id="pref-panel"):
        gr.Markdown(f"Every blind vote in the Chat tab that prefers one side is a training pair for **preference "
                    f"tuning** (Train tab): the question, the chosen answer and the rejected one. A preference run "
                    f"needs at least **{prefs.MIN_PAIRS}** usable pairs and is noisy below {prefs.RECOMMENDED_PAIRS}.")
        with gr.Row():
            run_pick = gr.Dropdown(vote_run_choices(), value=ALL_RUNS, label="Votes on run", elem_id="pref-run",
                                   allow_custom_value=True, scale=3)
            votes_btn = gr.Button("Show pairs from votes", variant="primary", elem_id="pref-show", scale=1)
        with gr.Accordion("…or load a preference file (prompt / chosen / rejected columns)", open=False):
            with gr.Row():
                kind = gr.Radio(FILE_SOURCES, value="file path", label="File source", elem_id="pref-kind")
                path = gr.Textbox(label="File path (inside the data folder)", elem_id="pref-path",
                                  placeholder=str(paths.data_dir() / "prefs.jsonl"))
                upload = gr.File(label="Upload", file_types=[".csv", ".tsv", ".parquet", ".json", ".jsonl"],
                                 type="filepath", elem_id="pref-upload")
            with gr.Row():
                cols = [gr.Textbox(label=f"{f} column (empty = guessed)", elem_id=f"pref-col-{f}")
                        for f in ("prompt", "chosen", "rejected")]
            file_btn = gr.Button("Load preference file", elem_id="pref-load")
            columns_md = gr.Markdown(elem_id="pref-columns")
        report = gr.HTML("<div class='wb-empty'>Press “Show pairs from votes”.</div>", elem_id="pref-report-box")
        table = gr.Dataframe(headers=TABLE_HEADERS, interactive=False, wrap=True, max_height=420,
                             elem_id="pref-table")
        with gr.Row():
            export_btn = gr.Button("Export pairs as JSONL", elem_id="pref-export-btn")
            export_file = gr.File(label="Download", elem_id="pref-export")
    state = gr.State({})
    out = [state, report, table, columns_md, export_file]
    votes_btn.click(_vote_pairs, run_pick, out)
    file_btn.click(_load_pair_file, [kind, path, upload, *cols], out)
    upload.upload(lambda: gr.update(value="upload"), None, kind, api_visibility="private")
    export_btn.click(_export_pairs, state, export_file)
    run_pick.focus(_vote_runs, None, run_pick, api_visibility="private")


# -- Train tab: the preference controls --------------------------------------------------------

def parent_choices() -> list[str]:
    """Runs a preference run can start from: those with a saved adapter, newest first."""
    out = []
    for r in runs.list_runs():
        try:
            if runs.adapter_path(r["id"]) is not None:
                out.append(r["id"])
        except runs.RunError:
            continue
    return out


def pairs_setting(choice: str) -> str:
    """preference.pairs for the chosen source: 'votes', or the saved preference file (a path the server chooses)."""
    if choice == DATA_FILE:
        if prefs.saved_manifest() is None:
            raise DataError("No preference file loaded in the Data tab yet: load one under “Preference pairs”, or "
                            "train on the votes on the parent run.")
        return str(prefs.saved_path())
    return "votes"


def preview_html(parent, choice, names: bool = True) -> str:
    """What a preference run from `parent` would train on, with the readiness verdict (refuse / warn / ok).
    `names` False (read-only visitors): the pairs report, which names reviewers, is left out."""
    from workbench.training import preference

    if not parent:
        return ("<div class='wb-warn' id='pref-preview'>Pick the finished run to start from (its adapter is trained "
                "further and, frozen, is the reference).</div>")
    try:
        pairs = pairs_setting(choice)
    except DataError as e:
        return f"<div class='wb-error' id='pref-preview'>{html.escape(str(e))}</div>"
    shown = preference.preview(str(parent), pairs, server=True)
    css = {"refuse": "wb-error", "warn": "wb-warn"}.get(shown["level"], "")
    if shown["report"] is None:
        return f"<div class='{css}' id='pref-preview'>{html.escape(shown['message'])}</div>"
    split = (f" Start holds out {shown['n_eval']} pair(s) to measure preference accuracy and trains on "
             f"{shown['n_train']}." if shown["ok"] else " Start is refused until there are enough pairs.")
    text = html.escape(shown["text"]).replace("\n", "<br>")
    details = f"<details><summary>Pairs report</summary>{text}</details>" if names else ""
    return f"<div class='{css}' id='pref-preview'><b>{html.escape(shown['message'])}</b>{split}{details}</div>"


def apply_preference(cfg, parent, choice) -> None:
    """Fill a preference preset's RunConfig from the Train tab's controls, refusing what Start must not run."""
    from workbench.config import ConfigError

    if not parent:
        raise ConfigError(["Pick the parent run (a finished run with an adapter) under “Preference tuning”."])
    cfg.preference.parent_run = str(parent)
    cfg.preference.pairs = pairs_setting(choice)
    if cfg.preference.pairs != "votes":  # a server-chosen path; confined again all the same
        prefs.pairs_source(cfg.preference.pairs, server=True)


def build_train():
    """The Train tab's "Preference tuning" group: (group, parent picker, pairs source, preview, refresh button)."""
    with gr.Group(visible=False, elem_id="train-pref") as group:
        gr.Markdown("**Preference tuning (DPO)** — starts from a finished run's adapter and learns from reviewers' "
                    "preferences between two answers; the parent's adapter, frozen, is the reference. The model, "
                    "LoRA shape and prompt layout are the parent's.")
        with gr.Row():
            parent = gr.Dropdown(parent_choices(), label="Parent run (finished, with an adapter)",
                                 elem_id="train-pref-parent", allow_custom_value=True, scale=3)
            source = gr.Radio([VOTES, DATA_FILE], value=VOTES, label="Pairs", elem_id="train-pref-source", scale=3)
            refresh = gr.Button("Check pairs", elem_id="train-pref-check", scale=1)
        preview = gr.HTML(elem_id="train-pref-preview")
    return group, parent, source, preview, refresh
