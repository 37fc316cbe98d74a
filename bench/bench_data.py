"""Benchmark (not a test): load the 4,769-row dbdemos set, map, clean-preview, split, and compute char and token
statistics with the embedded tokenizer. Target: load + stats within 3 s on 2 CPU cores.

    python bench/bench_data.py [DBDEMOS_DIR]
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from workbench import paths  # noqa: E402
from workbench.data import browse
from workbench.data import cleaning
from workbench.data import dataset as data
from workbench.config import EMBEDDED_MODEL, DataConfig  # noqa: E402
from workbench.models import load_tokenizer  # noqa: E402


def timed(label: str, fn, times: dict):
    start = time.perf_counter()
    result = fn()
    times[label] = time.perf_counter() - start
    print(f"{label:<38} {times[label]:7.3f} s")
    return result


def main() -> int:
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else paths.default_dbdemos_dir()
    times: dict[str, float] = {}
    tok = timed("load tokenizer (cached conversion)", lambda: load_tokenizer(EMBEDDED_MODEL), times)
    raw = timed("read + join parquet files", lambda: data.load_dbdemos(folder), times)
    table = timed("map columns", lambda: data.apply_mapping(raw), times)
    annotated = timed("annotate (split, duplicates, flags)", lambda: browse.annotate(table), times)
    timed("char statistics", lambda: browse.char_stats(annotated), times)
    stats = timed("token statistics (4,769 examples)", lambda: browse.token_stats(table, tok, 512), times)
    timed("cleaning preview (default steps)", lambda: cleaning.preview(table, DataConfig().cleaning), times)
    timed("search 'unity catalog'", lambda: browse.filter_table(annotated, "unity catalog"), times)
    core = sum(times[k] for k in ("read + join parquet files", "map columns", "char statistics",
                                  "token statistics (4,769 examples)"))
    print(f"\nrows {len(table):,}; tokens/example median {stats['median_total']}, p95 {stats['p95_total']}, "
          f"{stats['over_max_length']} over 512")
    print(f"load + char stats + token stats: {core:.2f} s (target <= 3 s) -> {'OK' if core <= 3 else 'SLOW'}")

    # Baseline measured in the same run: the obvious way, one example at a time through the training formatter.
    from workbench.formatting import tokenize_example

    records = table.to_dict("records")
    naive = timed("baseline: per-example tokenize_example", lambda: [
        len(tokenize_example(r, tok, 100_000)["input_ids"]) for r in records], times)
    assert len(naive) == len(records)
    ratio = times["baseline: per-example tokenize_example"] / times["token statistics (4,769 examples)"]
    print(f"token statistics vs per-example baseline: {ratio:.1f}x faster")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
