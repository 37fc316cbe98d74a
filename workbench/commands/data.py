"""`python -m workbench data ...`: inspect, clean, split, preview and check Q&A data; fetch the dbdemos set.

SOURCE is 'sample' (the shipped set), 'dbdemos' (the Databricks docs Q&A folder, see --dbdemos-dir),
or a path to a CSV/TSV, Parquet, JSON/JSONL file or a saved Hugging Face dataset folder.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

LEAK_EXIT = 3


def _source_args(p, steps_default: str | None = None) -> None:
    p.add_argument("source", metavar="SOURCE", help="'sample', 'dbdemos' or a file/folder path.")
    p.add_argument("--dbdemos-dir", default="", help="Folder with the dbdemos parquet files (SOURCE 'dbdemos').")
    p.add_argument("--map", action="append", default=[], metavar="FIELD=COLUMN",
                   help="Map a record field (instruction, output, context, input) onto a column; repeatable. "
                        "Unmapped fields are guessed from common names.")
    if steps_default is not None:
        p.add_argument("--steps", default=steps_default,
                       help="Comma-separated cleaning steps, in order ('' for none). Default: %(default)s")


def _split_args(p) -> None:
    """--eval-fraction / --seed, with DataConfig's defaults and help (typed once, in the config)."""
    from dataclasses import fields

    from workbench.config import DataConfig

    meta = {f.name: f.metadata["help"] for f in fields(DataConfig)}
    d = DataConfig()
    p.add_argument("--eval-fraction", type=float, default=d.eval_fraction,
                   help=f"{meta['eval_fraction']} Default: %(default)s")
    p.add_argument("--seed", type=int, default=d.split_seed, help=f"{meta['split_seed']} Default: %(default)s")


def register(sub) -> None:
    from workbench.config import DataConfig

    defaults = ",".join(DataConfig().cleaning)
    p = sub.add_parser("data", help="Inspect, clean, split and preview Q&A data; fetch the dbdemos set.")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION")
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])

    q = dsub.add_parser("inspect", help="Rows, columns, mapping guess, length stats, cleaning preview, leakage.")
    _source_args(q, defaults)
    _split_args(q)
    q.add_argument("--tokens", action="store_true", help="Also count tokens with --model's tokenizer (slower).")
    q.add_argument("--model", default="", help="Tokenizer for --tokens (default: the embedded SmolLM2).")
    q.add_argument("--max-length", type=int, default=512, help="max_seq_length for --tokens (default 512).")
    q.add_argument("--json", action="store_true", help="Print the report as JSON.")
    q.set_defaults(func=inspect)

    c = dsub.add_parser("clean", help="Apply cleaning steps and write JSONL in the instruction format.")
    _source_args(c, defaults)
    c.add_argument("--out", help="Output JSONL (required unless --dry-run); never the source file itself.")
    c.add_argument("--dry-run", action="store_true", help="Show what each step would change; write nothing.")
    c.set_defaults(func=clean)

    s = dsub.add_parser("split", help="Clean, split deterministically and write train.jsonl / eval.jsonl.")
    _source_args(s, defaults)
    s.add_argument("--out-dir", required=True, help="Folder for train.jsonl, eval.jsonl and report.json.")
    _split_args(s)
    s.set_defaults(func=split)

    v = dsub.add_parser("preview", help="Row N formatted exactly as the model sees it; [[...]] marks loss tokens.")
    _source_args(v, "")
    v.add_argument("--row", type=int, default=0, help="Row number after mapping/cleaning (default 0).")
    v.add_argument("--template", choices=("chat", "instruction"), default="chat", help="Prompt layout.")
    v.add_argument("--model", default="", help="Tokenizer (default: the embedded SmolLM2).")
    v.add_argument("--max-length", type=int, default=512, help="max_seq_length (default 512).")
    v.set_defaults(func=preview)

    lk = dsub.add_parser("leakage", help=f"Check whether EVAL's questions/answers occur in TRAIN "
                                         f"(exit code {LEAK_EXIT} when they do).")
    _source_args(lk)
    lk.add_argument("eval_source", metavar="EVAL", help="The evaluation data: 'sample', 'dbdemos' or a path.")
    lk.set_defaults(func=leakage)

    f = dsub.add_parser("fetch-dbdemos", help="Download the dbdemos Databricks docs Q&A files (needs internet and "
                                              "your acceptance of their licence).")
    f.add_argument("--dest", help="Folder to download into.")
    f.add_argument("--accept-licence", action="store_true", help="I have read the Databricks License and accept it.")
    f.add_argument("--show-licence", action="store_true", help="Download and print the full licence text only.")
    f.add_argument("--timeout", type=float, default=30, help="Seconds per request (default 30).")
    f.set_defaults(func=fetch_dbdemos)


def _handled(fn):
    """Bad data or paths print one 'error: ...' line (exit 1), never a traceback."""
    def wrapper(args) -> int:
        from workbench.data.dataset import DataError

        try:
            return fn(args)
        except DataError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
    wrapper.__name__ = fn.__name__
    return wrapper


def _mapping(args, raw) -> dict:
    from workbench.data.dataset import RECORD_COLUMNS, DataError, guess_mapping

    mapping = guess_mapping(raw.columns)
    for item in args.map:
        field, sep, column = item.partition("=")
        if not sep or field.strip() not in RECORD_COLUMNS:
            raise DataError(f"--map {item!r}: use FIELD=COLUMN with FIELD one of {', '.join(RECORD_COLUMNS)}.")
        mapping[field.strip()] = column.strip()
    return {k: v for k, v in mapping.items() if v}


def _records(args):
    """(raw table, mapping, mapped records) for SOURCE."""
    from workbench.data.dataset import apply_mapping, load_raw

    raw = load_raw(args.source, args.dbdemos_dir)
    mapping = _mapping(args, raw)
    return raw, mapping, apply_mapping(raw, mapping)


def _steps(args) -> list[str]:
    from workbench.data.cleaning import check_steps

    steps = [s.strip() for s in (args.steps or "").split(",") if s.strip()]
    check_steps(steps)
    return steps


@_handled
def inspect(args) -> int:
    from workbench.data import browse
    from workbench.data import cleaning
    from workbench.data import dataset as data

    raw, mapping, records = _records(args)
    steps = _steps(args)
    sides = data.split(records, args.eval_fraction, args.seed)
    report = {"source": args.source, "rows": len(raw), "columns": [str(c) for c in raw.columns],
              "encoding": raw.attrs.get("encoding", ""), "mapping": mapping,
              "empty_rows_dropped": records.attrs.get("empty_rows_dropped", 0), "stats": browse.char_stats(records),
              "cleaning_preview": [{k: r[k] for k in ("step", "edited", "dropped")}
                                   for r in cleaning.preview(records, steps)],
              "split": {"train": int((sides == "train").sum()), "eval": int((sides == "eval").sum())},
              "leakage": data.leakage(records[sides == "train"], records[sides == "eval"])}
    if args.tokens:
        tok = _tokenizer(args.model)
        t = browse.token_stats(records, tok, args.max_length)
        report["tokens"] = {k: t[k] for k in ("median_total", "p95_total", "over_max_length", "max_length")}
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
        return 0
    _print_inspect(report)
    return 0


def _print_inspect(r: dict) -> None:
    from workbench.data.dataset import leakage_message

    enc = f" (decoded as {r['encoding']}, not UTF-8 — save it as UTF-8 to be sure)" if r["encoding"] == "cp1252" else ""
    print(f"Source: {r['source']} — {r['rows']:,} rows{enc}")
    print(f"Columns: {', '.join(r['columns'])}")
    print("Mapping: " + ", ".join(f"{k} <- {v}" for k, v in r["mapping"].items()))
    if r["empty_rows_dropped"]:
        print(f"Dropped {r['empty_rows_dropped']:,} rows with an empty question or answer.")
    s = r["stats"]
    for name in ("question_chars", "answer_chars"):
        print(f"{name.replace('_', ' ').capitalize()}: " + ", ".join(f"{k} {v:,}" for k, v in s[name].items()))
    print(f"Rows in duplicate groups (same normalized question or answer): {s['duplicate_rows']:,}")
    print("Cleaning preview:")
    for step in r["cleaning_preview"]:
        print(f"  {step['step']}: {step['edited']:,} edited, {step['dropped']:,} dropped")
    print(f"Split: {r['split']['train']:,} train / {r['split']['eval']:,} eval")
    print(leakage_message(r["leakage"]))
    if "tokens" in r:
        t = r["tokens"]
        print(f"Tokens per example: median {t['median_total']:,}, p95 {t['p95_total']:,}; "
              f"{t['over_max_length']:,} longer than {t['max_length']:,}")


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and a.samefile(b)
    except OSError:
        return False


@_handled
def clean(args) -> int:
    from workbench.data import cleaning
    from workbench.data import dataset as data

    if not args.dry_run and not args.out:
        raise data.DataError("Give --out FILE.jsonl for the cleaned data (or --dry-run to only see the changes).")
    _, _, records = _records(args)
    cleaned, report = cleaning.apply_steps(records, _steps(args))
    for r in report:
        print(f"{r['step']}: {r['edited']:,} edited, {r['dropped']:,} dropped — {r['description']}")
        for ex in r["examples"][:2 if args.dry_run else 0]:
            print(f"    {ex['id']} {ex['action']}: {ex['before'][:80]!r} -> {ex['after'][:80]!r}")
    if args.dry_run:
        print(f"Dry run: {len(records):,} rows would become {len(cleaned):,}; nothing written.")
        return 0
    out = Path(args.out).expanduser()
    if _same_file(out, Path(args.source).expanduser()):
        raise data.DataError(f"--out {out} is the source file; the workbench never overwrites your data — "
                             f"choose another file name.")
    data.write_jsonl(cleaned[data.RECORD_COLUMNS].to_dict("records"), out)
    print(f"Wrote {len(cleaned):,} records to {out} (from {len(records):,}).")
    return 0


@_handled
def split(args) -> int:
    from workbench.data import dataset as data
    from workbench.config import DataConfig

    cfg = DataConfig(source=args.source, dbdemos_dir=args.dbdemos_dir, cleaning=_steps(args),
                     eval_fraction=args.eval_fraction, split_seed=args.seed)
    _, _, records = _records(args)
    prepared = data.prepare_dataset(cfg, records)
    out = Path(args.out_dir).expanduser()
    data.write_jsonl(prepared.train, out / "train.jsonl")
    data.write_jsonl(prepared.eval, out / "eval.jsonl")
    (out / "report.json").write_text(json.dumps(prepared.report, indent=2, ensure_ascii=False), encoding="utf-8")
    print(f"{len(prepared.train):,} train / {len(prepared.eval):,} eval records written to {out}")
    print(data.leakage_message(prepared.report["leakage"]))
    return 0


def _tokenizer(model: str):
    from workbench.config import EMBEDDED_MODEL
    from workbench.data.dataset import DataError
    from workbench.models import load_tokenizer

    try:
        return load_tokenizer(model or EMBEDDED_MODEL)
    except Exception as e:  # noqa: BLE001 - hub/offline/missing-folder errors come in many types
        raise DataError(f"Cannot load the tokenizer of {model or EMBEDDED_MODEL} ({type(e).__name__}: "
                        f"{str(e)[:160]}); use a local model folder or the embedded model.") from None


def marked_text(pieces) -> str:
    """Join (token_text, carries_loss) pieces, wrapping each run of loss tokens in [[...]]."""
    out, in_loss = [], False
    for text, loss in pieces:
        if loss != in_loss:
            out.append("[[" if loss else "]]")
            in_loss = loss
        out.append(text)
    return "".join(out) + ("]]" if in_loss else "")


@_handled
def preview(args) -> int:
    from workbench.data import cleaning
    from workbench.data import dataset as data
    from workbench.formatting import marked_view

    _, _, records = _records(args)
    records, _ = cleaning.apply_steps(records, _steps(args))
    if not 0 <= args.row < len(records):
        raise data.DataError(f"--row {args.row} is out of range; the data has rows 0 to {len(records) - 1}.")
    pieces = marked_view(records.iloc[args.row].to_dict(), _tokenizer(args.model), args.max_length, args.template)
    print(marked_text(pieces))
    n_loss = sum(1 for _, loss in pieces if loss)
    print(f"\n--- {len(pieces)} tokens; the {n_loss} inside [[...]] (answer + end of turn) carry the loss.")
    return 0


@_handled
def leakage(args) -> int:
    from workbench.data import dataset as data

    _, _, train = _records(args)
    eval_ = data.apply_mapping(data.load_raw(args.eval_source, args.dbdemos_dir))
    report = data.leakage(train, eval_)
    print(data.leakage_message(report))
    if report["leaked_rows"]:
        print(f"First leaked evaluation rows: {', '.join(report['leaked_ids'][:10])}")
        return LEAK_EXIT
    return 0


@_handled
def fetch_dbdemos(args) -> int:
    from workbench.data import dbdemos
    from workbench.data.dataset import DataError

    if args.show_licence:
        print(dbdemos.licence_text(args.timeout))
        return 0
    if not args.accept_licence:
        print(dbdemos.LICENCE_SUMMARY)
        print("\nFiles: " + "\n       ".join(dbdemos.file_urls().values()))
        raise DataError("Not downloaded: read the licence (--show-licence) and re-run with --accept-licence "
                        "--dest DIR if you accept it.")
    if not args.dest:
        raise DataError("Give --dest DIR, the folder to download the files into.")
    files = dbdemos.fetch(args.dest, accept_licence=True, timeout=args.timeout,
                          progress=lambda f, msg: print(f"[{f:4.0%}] {msg}", flush=True))
    print(f"Downloaded {len(files)} files into {Path(args.dest).expanduser()}; use it as the dbdemos source: "
          f"python -m workbench data inspect dbdemos --dbdemos-dir {args.dest}")
    return 0
