"""Chat tab: base vs fine-tuned (or run vs run) answers side by side, streaming from one 4-bit model;
blind A/B review mode with votes stored in SQLite and the win rate shown."""
from __future__ import annotations

import json
import threading
import traceback

import gradio as gr

from workbench import runs
from workbench.chat import session as chat
from workbench.evaluation import reviews
from workbench.formatting import user_message
from workbench.ui import guard

BASE_CHOICE = ("Base model (adapter off)", chat.BASE)
MAX_EXAMPLES = 12
DEFAULTS = chat.ChatSettings()  # the one place the generation defaults are typed (workbench/chat/streaming.py)
_STOPS: dict[str, threading.Event] = {}  # browser session -> Stop event of its running generation


# -- pure helpers (no widgets) ------------------------------------------------------------------

def run_choices() -> list[tuple[str, str]]:
    return [(r["id"] + (f" ({r['name']})" if r.get("name") else ""), r["id"]) for r in chat.chat_runs()]


def parent_run(run_id: str | None) -> str | None:
    """The parent of a preference run (the run it was tuned from), or None."""
    if not run_id:
        return None
    from workbench.evaluation.preferences import parent_of

    try:
        return parent_of(run_id)
    except Exception:  # noqa: BLE001 - a missing or unreadable run folder just means: no parent to offer
        return None


def other_choices(run_id: str | None, choices: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """What a run can be compared against: the base model, then (for a preference run) its parent, then other runs."""
    parent = parent_run(run_id)
    first = [(f"Parent run: {label}", rid) for label, rid in choices if rid == parent]
    return [BASE_CHOICE] + first + [(label, rid) for label, rid in choices if rid not in (parent, run_id)]


def example_questions(run_id: str | None) -> list[str]:
    """The first held-out questions of the run (data/eval.jsonl), as the user would type them."""
    if not run_id:
        return []
    try:
        path = runs.folder(run_id).eval_data
        lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
    except (runs.RunError, OSError, UnicodeDecodeError):  # no examples from a damaged split; the tab still works
        return []
    out = []
    for line in lines:
        try:
            question = user_message(json.loads(line))
        except (json.JSONDecodeError, AttributeError):
            continue
        if question and question not in out:
            out.append(question)
        if len(out) >= MAX_EXAMPLES:
            break
    return out


def tally_text(run_id: str | None, other: str | None = chat.BASE) -> str:
    if not run_id:
        return ""
    try:
        return "**Blind review so far:** " + reviews.describe(reviews.win_rate(run_id, other or chat.BASE))
    except Exception as e:  # an unreadable vote store must not break the tab
        return f"Blind-review results unavailable ({type(e).__name__}: {e})."


def headers(sides, blind: bool) -> tuple[str, str]:
    if blind:
        return "### Left", "### Right"
    return tuple(f"### {chat.side_label(s)}" for s in sides)


def settings_from(system, temperature, top_p, max_new, seed, repetition_penalty=None) -> chat.ChatSettings:
    """Widget values -> ChatSettings; an empty widget means the ChatSettings default."""
    def pick(value, default):
        return default if value is None or value == "" else value

    try:
        return chat.ChatSettings(system_prompt=str(system or ""),
                                 temperature=float(pick(temperature, DEFAULTS.temperature)),
                                 top_p=float(pick(top_p, DEFAULTS.top_p)),
                                 max_new_tokens=int(pick(max_new, DEFAULTS.max_new_tokens)),
                                 seed=int(pick(seed, DEFAULTS.seed)),
                                 repetition_penalty=float(pick(repetition_penalty, DEFAULTS.repetition_penalty)))
    except (TypeError, ValueError):
        raise guard.refusal("Temperature, top-p, max new tokens and seed must be numbers.") from None


def status_line(update: chat.PairUpdate, blind: bool, page_note: str = "") -> str:
    """The line under the settings while a pair streams. The device note is left out when the notice above already
    says the same (on a CPU both said "Running on the CPU: …", one above the other)."""
    note = update.note if update.note and update.note.strip() not in page_note else ""
    parts = []
    for name, n, first, rate in zip(("left", "right"), update.tokens, update.first_token_s, update.tokens_per_s):
        text = f"{name}: {n} tokens"
        if first is not None:
            text += f", first after {first:.1f} s"
        if rate:
            text += f", {rate:.1f} tokens/s"
        parts.append(text)
    if not update.finished and not any(update.tokens):
        return ("Preparing… (the first question loads the 4-bit model, ~10 s on a CPU; on a GPU it also builds fast "
                "generation once, ~15 s; later ones start at once)"
                + (f"\n\n{note}" if note else ""))
    head = ("Stopped" if update.stopped else "Done") if update.finished else "Generating…"
    tail = " — now vote below; the sides are revealed after your vote." if update.finished and blind else ""
    return f"{head} ({'; '.join(parts)}){tail}" + (f"\n\n{note}" if note else "")


# -- handlers ---------------------------------------------------------------------------------

def _refresh(run_id, other):
    choices = run_choices()
    ids = [c[1] for c in choices]
    run_id = run_id if run_id in ids else (ids[0] if ids else None)
    other = other if other in ids or other == chat.BASE else chat.BASE
    empty = "" if ids else ("No trained run yet: train one in the Train tab (or `python -m workbench train "
                            "--preset quick-demo-cpu`); it appears here by itself when its adapter is saved.")
    return (gr.Dropdown(choices=choices, value=run_id), gr.Dropdown(choices=other_choices(run_id, choices), value=other),
            *_run_changed(run_id, other), (empty + "\n\n" if empty else "") + chat.policy_status())


def runs_signature() -> str:
    """Cheap 'did the runs change?' key for the timer: each run's status/events (stat calls), whether its adapter
    exists, the training slot, and the votes file (a new vote changes the tally)."""
    parts = []
    for path in sorted(runs_dir_entries()):
        try:
            marker = runs.change_marker(path.name)
        except runs.RunError:
            continue
        parts.append(f"{marker}:{(path / 'adapter' / 'adapter_config.json').is_file()}")
    db = reviews.db_path()
    for f in (db, db.with_name(db.name + "-wal")):
        try:
            parts.append(str(f.stat().st_mtime_ns))
        except FileNotFoundError:
            parts.append("-")
    return "|".join(parts)


def runs_dir_entries():
    from workbench import paths

    return [p for p in paths.runs_dir().iterdir() if runs.RunFolder(p).config.is_file()]


def _poll(run_id, other, seen):
    """Timer tick: redraw the run pickers, examples, tally and notice only when a run folder or the votes changed."""
    key = runs_signature()
    if key == seen:
        return (gr.skip(),) * 6
    return (key, *_refresh(run_id, other))


def _run_changed(run_id, other):
    return gr.Dataset(samples=[[q] for q in example_questions(run_id)]), tally_text(run_id, other)


def _run_picked(run_id, other):
    """A run was picked: a preference run is compared against its parent by default (the base model stays one
    choice away); the examples and the tally follow."""
    choices = run_choices()
    parent = parent_run(run_id)
    if parent and parent in [c[1] for c in choices] and other in (None, "", chat.BASE):
        other = parent
    return (gr.Dropdown(choices=other_choices(run_id, choices), value=other or chat.BASE),
            *_run_changed(run_id, other or chat.BASE))


NO_RUN = "Pick a fine-tuned run first (none yet? train one in the Train tab; it appears here once its adapter is saved)."


def _chat(question, left_hist, right_hist, run_id, other, blind, system, temperature, top_p, max_new, seed, repeat,
          request: gr.Request):
    guard.require(request, "chat")
    if not run_id:  # a notice, not an error: an exception would mark every output of the event "Error"
        gr.Warning(NO_RUN)
        yield (*[gr.skip()] * 4, f"**{NO_RUN}**", *[gr.skip()] * (4 + len(reviews.CHOICES)))
        return
    settings = settings_from(system, temperature, top_p, max_new, seed, repeat)
    problem = chat.input_problem(question, settings)
    if problem:  # the user's to fix (an empty question, a setting out of range): a notice, no "Error" badge
        gr.Warning(problem)
        yield (*[gr.skip()] * 4, f"**{problem}**", *[gr.skip()] * (4 + len(reviews.CHOICES)))
        return
    sides = (other or chat.BASE, run_id)
    if blind:  # hide which side is which: a fresh coin flip per question, and no history to give it away
        sides = reviews.blind_sides(run_id, other or chat.BASE)
        left_hist, right_hist = [], []
    old = (chat.normalize_history(left_hist), chat.normalize_history(right_hist))
    question = str(question or "").strip()
    shown = [h + [{"role": "user", "content": question}, {"role": "assistant", "content": ""}] for h in old]
    key = _session(request)
    stop = _STOPS[key] = threading.Event()
    heads = headers(sides, bool(blind))
    page_note = chat.policy_status()  # what the notice above the columns says now
    try:
        for update in chat.chat_pair(sides[0], sides[1], question, old, settings, stop):
            if getattr(stop, "cleared", False):  # Clear (or Blind, or other models) while streaming: stay cleared
                off = gr.update(interactive=False)
                yield [], [], *[gr.skip()] * 3, gr.skip(), None, "", *[off] * len(reviews.CHOICES), off
                return
            for hist, text in zip(shown, update.texts):
                hist[-1]["content"] = text
            pending = None
            if update.finished and blind:
                pending = reviews.pending_vote(question, sides, run_id, tuple(update.texts),
                                               chat.settings_dict(settings))
            votable = gr.update(interactive=bool(pending))  # vote buttons: only for a finished, unvoted pair
            yield (shown[0], shown[1], *heads, status_line(update, bool(blind), page_note),
                   "" if update.finished else gr.skip(), pending, "", *[votable] * len(reviews.CHOICES),
                   gr.update(interactive=not update.finished))
    except (chat.ChatError, runs.RunError) as e:
        failure = str(e)
    except Exception as e:  # noqa: BLE001 - an unforeseen failure still gets its message and leaves a sane page
        traceback.print_exc()
        failure = f"The answer failed ({type(e).__name__}: {str(e)[:300]}); the app's log has the details."
    else:
        return
    finally:
        if _STOPS.get(key) is stop:
            _STOPS.pop(key, None)
    off = gr.update(interactive=False)  # nothing is generating any more: Stop and the votes go off
    yield (gr.skip(), gr.skip(), gr.skip(), gr.skip(), f"**Failed:** {failure}", gr.skip(), None, "",
           *[off] * len(reviews.CHOICES), off)
    raise guard.refusal(failure)


def _stop(request: gr.Request):
    """Ask the running generation to stop. It answers nothing itself: the stream's own last update says
    'Stopped', so a late reply here can never overwrite it."""
    guard.require(request, "chat")
    _stop_stream(request, clear=False)  # the answers so far stay
    return gr.skip()


def _session(request) -> str:
    return getattr(request, "session_hash", None) or "default"


def _stop_stream(request, clear: bool) -> None:
    """Stop this session's streaming answer, if any. With `clear` (Clear, unlike Stop, drops the answers) the stream
    ends without writing them back (see _chat)."""
    event = _STOPS.get(_session(request))
    if event is not None:
        if clear:
            event.cleared = True
        event.set()


def _vote(choice: str, pending, reviewer, comment, request):
    name = guard.require(request, "vote")
    off = [gr.update(interactive=False)] * len(reviews.CHOICES)
    try:
        voted = reviews.cast_vote(pending, name or reviewer, choice, comment,
                                  base_model=_base_model(pending) if pending else "")
    except reviews.ReviewError as e:  # a plain message where the reveal goes, not an error badge; the buttons stay
        keep = e.fixable or not pending  # on when the reviewer can fix it (a name, a shorter comment) and vote again
        return (gr.skip(), f"<div class='wb-warn' id='chat-vote-refused'>{e}</div>", gr.skip(), gr.skip(), gr.skip(),
                gr.skip(), *([gr.skip()] * len(reviews.CHOICES) if keep else off))
    left, right = chat.side_label(voted["left_side"]), chat.side_label(voted["right_side"])
    return (voted, reviews.reveal(voted, chat.side_label), tally_text(voted["run_id"], voted["other"]), "",
            f"### Left — {left}", f"### Right — {right}", *off)


def _base_model(pending) -> str:
    try:
        return runs.load_run_config(pending["run_id"]).model.name_or_path
    except Exception:  # the run folder may be gone; the vote still counts
        return ""


def _voter(choice: str):
    def vote(pending, reviewer, comment, request: gr.Request):
        return _vote(choice, pending, reviewer, comment, request)

    vote.__name__ = f"vote_{choice}"
    return vote


def _clear(run_id=None, other=None, blind=False, request: gr.Request = None):
    """Empty columns, headed by what the next Send shows: "Left | Right" in a blind review, else which model is on
    which side (switching Blind off used to leave "Left | Right" until the next answer). An answer still streaming in
    this session is stopped (its later updates would fill the cleared columns again)."""
    _stop_stream(request, clear=True)
    try:  # names that are run ids (or the base side), never arbitrary text from the request
        named = bool(run_id) and all(runs.validate_run_id(str(x)) for x in (run_id, other or chat.BASE))
    except runs.RunError:
        named = False
    heads = headers((other or chat.BASE, run_id), False) if named and not blind else ("### Left", "### Right")
    return [], [], None, "", *heads, "", *[gr.update(interactive=False)] * len(reviews.CHOICES)


def _policy_text() -> str:
    """The GPU policy where there is a GPU; on a CPU-only machine, what actually happens there."""
    from workbench.training.estimate import detected_gpu

    if detected_gpu()[0]:
        return chat.POLICY
    return ("**No GPU on this machine**: chat and training share the CPU. Chat works while a run trains, but both "
            "go slower.")


# -- layout -----------------------------------------------------------------------------------

def build(demo: gr.Blocks) -> None:
    gr.Markdown("Ask the **base model** and a **fine-tuned run** the same question and watch both answers "
                "stream side by side. One 4-bit copy of the base model serves both columns: the adapter is "
                "switched per row inside one batched generation.")
    gr.Markdown(_policy_text(), elem_classes=["wb-warn"])
    with gr.Row():
        # allow_custom_value: runs appear after the app starts; the handlers check the id themselves
        run_pick = gr.Dropdown([], label="Fine-tuned run", elem_id="chat-run", scale=3, allow_custom_value=True)
        other_pick = gr.Dropdown([BASE_CHOICE], value=chat.BASE, label="Compare against", elem_id="chat-other",
                                 info="The base model, or another run on the same base model (a preference run: "
                                      "its parent run, picked by default).", scale=3,
                                 allow_custom_value=True)
        refresh_btn = gr.Button("Refresh runs", scale=1)
    with gr.Row():
        blind = gr.Checkbox(False, label="Blind A/B review", elem_id="chat-blind",
                            info="Hide which side is which (random per question); vote, then see the answer.")
        reviewer = gr.Textbox(label="Reviewer name", elem_id="chat-reviewer",
                              info="Recorded with your vote (your Hugging Face login is used when logged in).")
    with gr.Accordion("Generation settings", open=False):
        system = gr.Textbox(label="System prompt", info="Empty = the system prompt the run was trained with.")
        with gr.Row():
            temperature = gr.Slider(0, 2, value=DEFAULTS.temperature, step=0.05, label="Temperature",
                                    info="0 = greedy (repeatable).")
            top_p = gr.Slider(0.05, 1, value=DEFAULTS.top_p, step=0.05, label="Top-p")
            max_new = gr.Number(DEFAULTS.max_new_tokens, precision=0, label="Max new tokens", info="1-4096.",
                                elem_id="chat-max-new")
            seed = gr.Number(DEFAULTS.seed, precision=0, label="Seed", info="-1 = random.")
            repeat = gr.Slider(1, 2, value=DEFAULTS.repetition_penalty, step=0.05, label="Repetition penalty",
                               info="1 = off; above 1 a model repeats a phrase less (small models loop without it).",
                               elem_id="chat-repeat")
    notice = gr.Markdown(elem_id="chat-notice")
    status = gr.Markdown(elem_id="chat-status")
    with gr.Row():
        with gr.Column():
            left_head = gr.Markdown("### Left", elem_id="chat-left-head")
            left_bot = gr.Chatbot(elem_id="chat-left", height=380, show_label=False)
        with gr.Column():
            right_head = gr.Markdown("### Right", elem_id="chat-right-head")
            right_bot = gr.Chatbot(elem_id="chat-right", height=380, show_label=False)
    question = gr.Textbox(label="Question", placeholder="Ask something about Databricks…", elem_id="chat-question",
                          lines=2)
    with gr.Row():
        send_btn = gr.Button("Send", variant="primary", elem_id="chat-send")
        stop_btn = gr.Button("Stop", elem_id="chat-stop", interactive=False)
        clear_btn = gr.Button("Clear", elem_id="chat-clear")
    examples = gr.Dataset(components=[question], samples=[], label="Example questions from the run's held-out split",
                          elem_id="chat-examples")
    with gr.Column(visible=False, elem_id="chat-vote-box") as vote_box:
        comment = gr.Textbox(label="Comment (optional)", elem_id="chat-comment")
        with gr.Row():
            vote_btns = {c: gr.Button(label, elem_id=f"chat-vote-{c}", interactive=False)
                         for c, label in reviews.CHOICE_LABELS.items()}
    reveal = gr.Markdown(elem_id="chat-reveal")
    tally = gr.Markdown(elem_id="chat-tally")
    pending = gr.State(None)  # the answered pair awaiting a vote, with the hidden mapping (stays on the server)

    buttons = [vote_btns[c] for c in reviews.CHOICES]
    chat_in = [question, left_bot, right_bot, run_pick, other_pick, blind, system, temperature, top_p, max_new, seed,
               repeat]
    chat_out = [left_bot, right_bot, left_head, right_head, status, question, pending, reveal, *buttons, stop_btn]
    sends = [send_btn.click(_chat, chat_in, chat_out, api_name="chat", show_progress="minimal"),
             question.submit(_chat, chat_in, chat_out, api_visibility="private", show_progress="minimal")]
    stop_btn.click(_stop, None, status, api_name="stop", concurrency_limit=None)  # never waits behind anything
    clear_out = [left_bot, right_bot, pending, reveal, left_head, right_head, status, *buttons]
    clear_in = [run_pick, other_pick, blind]
    # Clear, Blind and another pair of models start over: an answer still streaming is cancelled (and stopped)
    clear_btn.click(_clear, clear_in, clear_out, api_name="clear", cancels=sends)
    blind.change(_clear, clear_in, clear_out, api_visibility="private", cancels=sends).then(
        lambda b: gr.Column(visible=bool(b)), blind, vote_box, api_visibility="private")
    for choice, btn in vote_btns.items():
        btn.click(_voter(choice), [pending, reviewer, comment], [pending, reveal, tally, comment, left_head,
                                                                 right_head, *buttons], api_name=f"vote_{choice}")
    examples.click(lambda sample: sample[0] if isinstance(sample, (list, tuple)) else sample, examples, question,
                   api_visibility="private")
    run_pick.change(_run_picked, [run_pick, other_pick], [other_pick, examples, tally], api_visibility="private",
                    cancels=sends).then(_clear, clear_in, clear_out, api_visibility="private")
    other_pick.change(lambda r, o: tally_text(r, o), [run_pick, other_pick], tally, api_visibility="private",
                      cancels=sends).then(_clear, clear_in, clear_out, api_visibility="private")
    refresh_out = [run_pick, other_pick, examples, tally, notice]
    refresh_btn.click(_refresh, [run_pick, other_pick], refresh_out, api_name="chat_refresh")
    demo.load(_refresh, [run_pick, other_pick], refresh_out, api_visibility="private").then(
        _clear, clear_in, clear_out, api_visibility="private")  # headed by the picked models from the start
    seen = gr.State("")
    gr.Timer(4.0).tick(_poll, [run_pick, other_pick, seen], [seen, *refresh_out], api_visibility="private")
