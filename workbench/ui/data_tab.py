"""Data tab: load a source, map columns, browse/search/filter, statistics, cleaning with preview/undo,
the formatted example exactly as the model sees it, leakage, export."""
from __future__ import annotations

import html
import tempfile
from pathlib import Path

import gradio as gr
import plotly.express as px

from workbench import paths, safety
from workbench.data import browse
from workbench.data import cleaning
from workbench.data import dataset as data
from workbench.data import dbdemos
from workbench.data import workspace
from workbench.config import DataConfig
from workbench.ui import guard
from workbench.ui import preference_panel
from workbench.ui.data_saved import _autosave, _saved_text, _train_on_this  # noqa: F401 (tests call them here)
from workbench.ui.data_download import _fetch, _show_licence  # noqa: F401
from workbench.ui.data_example import _example, _example_and_row, _token_stats, default_max_length, row_detail

SOURCES = ["sample (shipped)", "dbdemos folder", "file path", "upload"]
PAGE_ROWS = 25  # rows per page of the browse table; a pager walks all matches
CELL_CHARS = 180  # table cells are cut here; selecting a row shows its full text
FIELDS = ["instruction", "output", "context", "input"]


def _empty_state():
    # steps: one list of {step, edited, dropped} per Apply (Undo drops the last); mapping: the applied mapping
    return {"raw": None, "table": None, "history": [], "source": "", "pending": False, "steps": [], "mapping": {}}


def _read(kind, path, upload):
    """The chosen source as a table. A request names only a source kind and, for files, a path that must lie
    in an upload (Gradio's upload folder) or in one of the data folders (paths.data_roots) — never elsewhere."""
    kind = str(kind or "")
    try:
        if kind.startswith("sample"):
            return data.load_raw("sample"), "the shipped sample"
        if kind.startswith("dbdemos"):
            return data.load_raw("dbdemos", safety.server_path(path, paths.data_roots(), "folder")), "dbdemos"
        if kind == "upload":
            if not upload:
                raise data.DataError("No file uploaded yet; drop a CSV, Parquet or JSONL file on the upload box.")
            f = safety.check_upload(upload, inside_dir=paths.upload_dir())
            return data.load_table(f), f.name
        if kind == "file path":
            f = safety.server_path(path, paths.data_roots())
            return data.load_table(f), f.name
    except safety.UnsafeInput as e:
        raise data.DataError(str(e)) from None
    raise data.DataError(f"Unknown source {str(kind)[:40]!r}; choose one of: {', '.join(SOURCES)}.")


def _load(kind, path, upload, state, request: gr.Request = None):
    """Read the source; on bad input keep the current data and say what is wrong and how to fix it."""
    if not (str(kind).startswith("sample") or (kind == "dbdemos folder"
                                                and (path or "").strip() == str(paths.default_dbdemos_dir()))):
        guard.require(request, "load_data")  # uploads and named files are for admins; the shipped data is a view
    try:
        raw, name = _read(kind, path or "", upload)
    except data.DataError as e:
        keep = " The data loaded before is still shown." if state.get("table") is not None else ""
        return (dict(state, pending=False), f"<div class='wb-error'>⚠️ {e}{keep}</div>",
                *[gr.update()] * len(FIELDS))
    guess = data.guess_mapping(raw.columns)
    before = state.get("source") if state.get("table") is not None else ""
    missing = [label for field, label in (("instruction", "question"), ("output", "answer")) if not guess.get(field)]
    # The old table (and its source name, which the saved dataset records) stays until the mapping applies; a guess
    # that lacks the question or answer is not applied.
    state = dict(state, raw=raw, raw_source=name, pending=not missing, **({} if missing else {"source": name}))
    cols = [str(c) for c in raw.columns]
    enc = (" It is not UTF-8: decoded as Windows-1252 (latin-1); check accented characters, or save it as "
           "UTF-8." if raw.attrs.get("encoding") == "cp1252" else "")
    count = f"{len(raw):,} row{'' if len(raw) == 1 else 's'}"
    rows = f"**{count}**"
    if missing:  # inside an HTML block Markdown is not rendered: bold as HTML
        msg = (f"<div class='wb-warn'>Loaded <b>{count}</b> from {html.escape(name)} with columns: {', '.join(cols)}. No column looks "
               f"like the {' or the '.join(missing)}: pick them under 'instruction ←' and 'output ←' below, then "
               f"press Apply mapping.{f' Until then the table shows {before}.' if before else ''}{enc}</div>")
    else:
        msg = (f"Loaded {rows} from {name} with columns: {', '.join(cols)}. The mapping below is guessed from the "
               f"column names; change it and press Apply mapping if needed.{enc}")
    return (state, msg, *[gr.update(choices=[""] + cols, value=guess.get(f, "")) for f in FIELDS])


def _apply_mapping(state, *mapping):
    if state["raw"] is None:
        raise guard.refusal("Load a source first.")
    try:
        table = data.apply_mapping(state["raw"], {f: m for f, m in zip(FIELDS, mapping) if m})
    except data.DataError as e:
        raise guard.refusal(str(e)) from None
    dropped = table.attrs.get("empty_rows_dropped", 0)
    if dropped:
        gr.Info(f"Skipped {dropped:,} rows with an empty question or answer.")
    applied = {f: m for f, m in zip(FIELDS, mapping) if m}
    state = dict(state, table=browse.annotate(table), history=[], pending=False, steps=[], mapping=applied,
                 source=state.get("raw_source") or state.get("source", ""))
    return state, *_refresh(state, "", 0, 0, "all rows")


def _cut(text, width=CELL_CHARS) -> str:
    text = str(text)
    return text if len(text) <= width else text[:width].rstrip() + "…"


def _refresh(state, query, min_chars, max_chars, view, page=1):
    """Summary, one page of the matching rows (cells cut to CELL_CHARS), the length chart, the page's row ids and
    the page number (clamped to the pages there are)."""
    table = state.get("table")
    if table is None:
        return ("*No data loaded yet: choose a source above and press Load.*", None, None, None, 1)
    shown = browse.filter_table(table, query, int(min_chars or 0), int(max_chars or 0), view)
    pages = max(1, -(-len(shown) // PAGE_ROWS))
    page = min(max(int(page or 1), 1), pages)
    part = shown.iloc[(page - 1) * PAGE_ROWS: page * PAGE_ROWS]
    stats = browse.char_stats(table)
    splits = table["split"].value_counts().to_dict()
    first = (page - 1) * PAGE_ROWS + 1 if len(shown) else 0
    span = f"{first:,}–{first + len(part) - 1:,}" if len(part) else "0"  # "0 of 0 matching", never "0–-1"
    summary = (f"**{stats['rows']:,} rows** ({splits.get('train', 0):,} train / {splits.get('eval', 0):,} eval) · "
               f"answers median {stats['answer_chars'].get('median', 0):,} chars (p95 "
               f"{stats['answer_chars'].get('p95', 0):,}) · {stats['duplicate_rows']:,} rows in duplicate groups · "
               f"{int(table['flagged'].sum()):,} flagged by cleaning · showing {span} "
               f"of {len(shown):,} matching · page {page} of {pages}")
    if not splits.get("train") or not splits.get("eval"):  # Start would refuse it (prepare_dataset): say so here
        summary += (f"\n\n⚠️ **Too few rows to split**: a run needs at least one training row and one held-out row "
                    f"(this table gives {splits.get('train', 0):,} and {splits.get('eval', 0):,}); Start will refuse "
                    f"it. Load more rows, or raise the held-out share in the Train tab's data settings.")
    cols = ["id", "split", "instruction", "output", "a_chars", "duplicate", "flagged"]
    view_rows = part[cols].copy()
    for col in ("instruction", "output"):
        view_rows[col] = view_rows[col].map(_cut)
    for col in ("duplicate", "flagged"):  # a word that fits a narrow column, and is blank where nothing is wrong
        view_rows[col] = view_rows[col].map(lambda v: "yes" if v else "")
    view_rows = view_rows.rename(columns={"a_chars": "chars", "duplicate": "dup", "flagged": "flag"})  # fit headers
    lengths = table.melt(value_vars=["q_chars", "a_chars"], var_name="field", value_name="characters")
    lengths["field"] = lengths["field"].map({"q_chars": "question", "a_chars": "answer"})
    fig = px.histogram(lengths, x="characters", color="field", nbins=60, barmode="overlay",
                       title="Length in characters")
    fig.update_layout(margin={"t": 50})
    return summary, view_rows, fig, part["id"].tolist(), page


def _preview_cleaning(state, steps):
    if state.get("table") is None:
        return "*Load data first.*"
    report = cleaning.preview(state["table"], steps)
    return _report_md(report, "Would change")


def _report_md(report, verb):
    lines = [f"### {verb}"]
    for r in report:
        lines.append(f"- **{r['step']}** — {r['description']}: {r['edited']:,} edited, {r['dropped']:,} dropped")
        for ex in r["examples"][:3]:
            before, after = (_one_line(ex[k]) for k in ("before", "after"))
            lines.append(f"    - `{ex['id']}` {ex['action']}: “{before}” → “{after}”")
    return "\n".join(lines)


def _one_line(text, width=110):
    flat = " ⏎ ".join(line.strip() for line in str(text).splitlines() if line.strip())
    return flat if len(flat) <= width else flat[:width] + "…"


def _apply_cleaning(state, steps, request: gr.Request):
    guard.require(request, "clean_data")
    if state.get("table") is None:
        raise guard.refusal("Load data first.")
    base = state["table"][["id"] + data.RECORD_COLUMNS]
    cleaned, report = cleaning.apply_steps(base, steps)
    if cleaned.empty:
        raise guard.refusal("These steps would remove every row; untick some of them (Preview shows what each does).")
    applied = [{k: r[k] for k in ("step", "edited", "dropped")} for r in report]
    state = dict(state, history=state["history"] + [state["table"]], table=browse.annotate(cleaned),
                 steps=list(state.get("steps") or []) + [applied])
    return state, _report_md(report, "Applied") + "\n\n*Undo restores the table before this step.*"


def _undo(state):
    if not state.get("history"):
        gr.Info("Nothing to undo.")
        return state, "*Nothing to undo.*"
    state = dict(state, table=state["history"][-1], history=state["history"][:-1],
                 steps=list(state.get("steps") or [])[:-1])
    return state, f"Undone: back to {len(state['table']):,} rows."


def _leakage(state, against, request: gr.Request = None):
    table = state.get("table")
    if table is None:
        return "*Load data first.*"
    report = data.leakage(table[table["split"] == "train"], table[table["split"] == "eval"])
    lines = [_leak_html("Train/eval split of this table", report)]
    if (against or "").strip():
        guard.require(request, "load_data")  # it opens a server file: admins only, inside the data folders
        try:
            other = data.apply_mapping(data.load_table(safety.server_path(against, paths.data_roots())))
        except safety.UnsafeInput as e:
            lines.append(f"<div class='wb-error'>⚠️ Evaluation file: {e}</div>")
        except data.DataError as e:
            lines.append(f"<div class='wb-error'>⚠️ Evaluation file: {e}</div>")
        else:
            lines.append(_leak_html(f"{Path(against.strip()).name} against all {len(table):,} rows here",
                                    data.leakage(table, other)))
    return "\n".join(lines)


def _leak_html(title, report):
    css = "wb-error" if report["leaked_rows"] else "wb-warn"
    return f"<div class='{css}'><b>{title}:</b> {data.leakage_message(report)}</div>"


def _export(state, request: gr.Request):
    guard.require(request, "export")
    table = state.get("table")
    if table is None:
        raise guard.refusal("Load data first.")
    out = Path(tempfile.mkdtemp(prefix="wb-export-")) / "cleaned_instructions.jsonl"
    data.write_jsonl(table[data.RECORD_COLUMNS].to_dict("records"), out)
    return str(out)


def _select_row(state, evt: gr.SelectData):
    """A click on the table: that row's full text, and its id picked for the formatted example."""
    row = evt.row_value or []
    row_id = str(row[0]) if row else ""
    return row_detail(state, row_id), gr.update(value=row_id) if row_id else gr.skip()


def _open_saved(state):
    """On page load: the saved training dataset, when there is one."""
    loaded = workspace.load()
    if loaded is None:
        return state, gr.skip(), gr.skip()
    records, meta = loaded
    steps = [meta["cleaning"]] if meta.get("cleaning") else []
    opened = dict(_empty_state(), table=browse.annotate(records), source=meta.get("source", ""),
                  mapping=meta.get("mapping") or {}, steps=steps)
    return (opened, f"Opened the saved training dataset ({meta['rows']:,} records from {meta.get('source')}). "
                    f"Load another source to replace it.", _saved_text(meta))


def _load_unless_open(kind, path, upload, state, request: gr.Request = None):
    """On page load, when no saved dataset was opened: the usual Load (the shipped sample)."""
    if state.get("table") is not None:
        return (state, gr.skip(), *[gr.skip()] * len(FIELDS))
    out = _load(kind, path, upload, state, request)
    why = workspace.damage()
    if why:  # said, not skipped: the user expects their cleaned dataset here, and gets the sample instead
        note = (f"<div class='wb-error' id='data-saved-damaged'>The saved training dataset cannot be opened: "
                f"{html.escape(why)}. The shipped sample is shown instead; load your source again (saving replaces "
                f"the damaged files).</div>")
        out = (out[0], f"{note}\n\n{out[1]}", *out[2:])
    return out


def build(demo: gr.Blocks) -> None:
    state = gr.State(_empty_state())
    gr.Markdown("Load question/answer pairs, map their columns, clean them, and see exactly what the model "
                "will be trained on.")
    with gr.Row():
        kind = gr.Radio(SOURCES, value=SOURCES[0], label="Source")
        path = gr.Textbox(str(paths.default_dbdemos_dir()), label="Folder or file path", elem_id="data-path",
                          info="For 'dbdemos folder': the folder with the two parquet files. For 'file path': "
                               "a CSV, Parquet, JSON/JSONL file or a saved dataset folder.")
        upload = gr.File(label="Upload", file_types=[".csv", ".tsv", ".parquet", ".json", ".jsonl"], type="filepath")
    load_btn = gr.Button("Load", variant="primary")
    load_msg = gr.Markdown("*The shipped sample is loaded below; choose another source to replace it.*")
    with gr.Row():
        saved_md = gr.Markdown(elem_id="data-saved")
        train_btn = gr.Button("Train on this data", elem_id="data-train-on", scale=0, min_width=180)
    with gr.Row():
        mapping = [gr.Dropdown([], label=f"{f} ←", allow_custom_value=False) for f in FIELDS]
    map_btn = gr.Button("Apply mapping")
    summary = gr.Markdown("*No data loaded yet.*", elem_id="data-summary")
    with gr.Row():
        query = gr.Textbox(label="Search (all words)", placeholder="e.g. stack function", elem_id="data-search")
        min_chars = gr.Number(0, label="Answer length ≥ (chars)", precision=0)
        max_chars = gr.Number(0, label="Answer length ≤ (0 = any)", precision=0)
        view = gr.Dropdown(list(browse.VIEWS), value="all rows", label="Show", elem_id="data-view")
    table = gr.Dataframe(interactive=False, wrap=True, max_height=560, elem_id="data-table",
                         column_widths=["6%", "6%", "36%", "36%", "6%", "5%", "5%"])
    with gr.Row():
        prev_page = gr.Button("◀ Previous page", size="sm", elem_id="data-prev")
        page = gr.Number(1, label="Page", precision=0, elem_id="data-page", scale=0, min_width=90)
        next_page = gr.Button("Next page ▶", size="sm", elem_id="data-next")
    row_full = gr.Markdown("*Click a row to read its full question and answer.*", elem_id="data-row-full")
    lengths = gr.Plot(label="Lengths")
    with gr.Accordion("Cleaning (preview, apply, undo)", open=True):
        steps = gr.CheckboxGroup(list(cleaning.STEPS), value=list(DataConfig().cleaning), label="Steps, in order")
        with gr.Row():
            prev_btn, apply_btn, undo_btn = gr.Button("Preview changes"), gr.Button("Apply"), gr.Button("Undo")
        clean_md = gr.Markdown()
    with gr.Accordion("Exactly what the model sees", open=True):
        with gr.Row():
            row_pick = gr.Dropdown([], label="Row id", elem_id="data-row")
            template = gr.Radio(["chat", "instruction"], value="chat", label="Template")
            max_length = gr.Number(default_max_length(), label="Cut at (tokens)", elem_id="data-max-length",
                                   info="Training cuts longer examples here (the Train tab's \"Longest example\"). "
                                        "It starts at the value of the preset this machine runs by default; change "
                                        "it to see another run's cut. Press Enter to apply.")
        example = gr.HighlightedText(label="Formatted example (highlighted = carries loss)", elem_id="data-example",
                                     combine_adjacent=True, color_map={"loss": "green"})
        example_md = gr.Markdown()
    with gr.Accordion("Token lengths, leakage, export", open=False):
        with gr.Row():
            tok_btn, export_btn = gr.Button("Token statistics"), gr.Button("Export cleaned JSONL")
        tok_md, tok_plot = gr.Markdown("*Press Token statistics to count tokens with the model's tokenizer.*"), gr.Plot()
        export_file = gr.File(label="Download", elem_id="data-export")
        with gr.Row():
            against = gr.Textbox(label="Also check an evaluation file against this data (optional path)",
                                 placeholder="e.g. …/databricks_doc_eval_set.parquet", elem_id="data-against")
            leak_btn = gr.Button("Check leakage")
        leak_md = gr.Markdown(elem_id="data-leakage")
    with gr.Accordion("Download the dbdemos files (internet needed)", open=False):
        gr.Markdown(dbdemos.LICENCE_SUMMARY)
        with gr.Row():
            dest = gr.Textbox(str(paths.data_dir() / "dbdemos"), label="Download into folder")
            accept = gr.Checkbox(False, label="I have read the Databricks License and accept it")
        with gr.Row():
            licence_btn, fetch_btn = gr.Button("Show the full licence"), gr.Button("Download")
        fetch_md = gr.Markdown()
    preference_panel.build_data(demo)  # issue 17: preference pairs from blind votes or a file

    private = {"api_visibility": "private"}
    browse_inputs = [state, query, min_chars, max_chars, view, page]
    browse_outputs = [summary, table, lengths, row_pick, page]
    example_io = ([state, row_pick, template, max_length], [example, example_md, row_full])

    def refresh(*args):
        s, df, fig, ids, pg = _refresh(*args)
        return s, df, fig, gr.update(choices=ids or [], value=(ids or [None])[0]), pg

    def apply_map(st, *m):
        st, s, df, fig, ids, pg = _apply_mapping(st, *m)
        return st, s, df, fig, gr.update(choices=ids or [], value=(ids or [None])[0]), pg

    def auto_map(st, *m):
        """After Load: apply the guessed mapping; if it cannot apply, keep what is shown and say why."""
        if not st.get("pending"):
            return st, *[gr.update()] * len(browse_outputs)
        try:
            return apply_map(st, *m)
        except gr.Error as e:
            gr.Warning(f"{e.message} Then press Apply mapping.")
            return st, *[gr.update()] * len(browse_outputs)

    def first_page(*args):
        return refresh(*args[:-1], 1)

    def step_page(delta):
        def go(*args):
            return refresh(*args[:-1], int(args[-1] or 1) + delta)
        go.__name__ = "next_page" if delta > 0 else "previous_page"
        return go

    load_inputs, load_outputs = [kind, path, upload, state], [state, load_msg, *mapping]
    # after Load or Apply mapping the search and filters still shown apply to the new table (first page)
    load_btn.click(_load, load_inputs, load_outputs).then(
        auto_map, [state, *mapping], [state, *browse_outputs], **private).then(
        first_page, browse_inputs, browse_outputs, **private).then(
        _example_and_row, *example_io, **private).then(_autosave, state, saved_md, **private)
    upload.upload(lambda: gr.update(value="upload"), None, kind)
    map_btn.click(apply_map, [state, *mapping], [state, *browse_outputs]).then(
        first_page, browse_inputs, browse_outputs, **private).then(
        _example_and_row, *example_io, **private).then(_autosave, state, saved_md, **private)
    for comp in (query, min_chars, max_chars, view):
        comp.change(first_page, browse_inputs, browse_outputs, **private)
    prev_page.click(step_page(-1), browse_inputs, browse_outputs, **private)
    next_page.click(step_page(+1), browse_inputs, browse_outputs, **private)
    page.submit(refresh, browse_inputs, browse_outputs, **private)  # a typed page number (clamped to the pages)
    table.select(_select_row, state, [row_full, row_pick], **private)
    prev_btn.click(_preview_cleaning, [state, steps], clean_md)
    apply_btn.click(_apply_cleaning, [state, steps], [state, clean_md]).then(
        refresh, browse_inputs, browse_outputs, **private).then(
        _example_and_row, *example_io, **private).then(_autosave, state, saved_md, **private)
    undo_btn.click(_undo, state, [state, clean_md]).then(refresh, browse_inputs, browse_outputs, **private).then(
        _example_and_row, *example_io, **private).then(_autosave, state, saved_md, **private)
    train_btn.click(_train_on_this, state, saved_md)
    row_pick.change(_example_and_row, *example_io, **private)
    example_in = [state, row_pick, template, max_length]
    template.change(_example, example_in, [example, example_md], **private)
    for done in (max_length.submit, max_length.blur):  # not on every keystroke ("5" on the way to "512")
        done(_example, example_in, [example, example_md], **private)
    tok_btn.click(_token_stats, [state, template, max_length], [tok_md, tok_plot])
    leak_btn.click(_leakage, [state, against], leak_md)
    export_btn.click(_export, state, export_file)
    licence_btn.click(_show_licence, None, fetch_md)
    fetch_btn.click(_fetch, [dest, accept], [fetch_md, kind, path])
    # Page load: the saved training dataset if there is one (it survives restarts), else the shipped sample.
    demo.load(_open_saved, state, [state, load_msg, saved_md], **private).then(
        _load_unless_open, load_inputs, load_outputs, **private).then(
        auto_map, [state, *mapping], [state, *browse_outputs], **private).then(
        refresh, browse_inputs, browse_outputs, **private).then(_example_and_row, *example_io, **private)
