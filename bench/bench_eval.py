"""Benchmark (not a test): evaluation throughput of the embedded model in 4-bit, in questions per minute.

Times the two passes evaluate_run makes per model on the sample set's questions: teacher-forced
perplexity of the reference answers, and greedy generation (left-padded batches) at several batch
sizes. Prints one JSON object.

    python bench/bench_eval.py [--device cpu] [--questions 16] [--max-new-tokens 64] [--batch-sizes 2,8,16]
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from workbench import paths  # noqa: E402
from workbench.evaluation import scoring
from workbench.config import ModelConfig  # noqa: E402
from workbench.data.dataset import read_jsonl  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    parser.add_argument("--model", default=ModelConfig().name_or_path)
    parser.add_argument("--questions", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--max-seq-length", type=int, default=512)
    parser.add_argument("--batch-sizes", default="2,8,16",
                        help="Comma-separated generation batch sizes (1 is very slow on CPU: bitsandbytes"
                             " takes its one-row 4-bit path there).")
    args = parser.parse_args()

    import torch

    from workbench.models import load_model

    rows = read_jsonl(paths.SAMPLE_DATA)[: args.questions]
    records = [{"instruction": r["question"], "output": r["answer"]} for r in rows]
    start = time.perf_counter()
    model, tok, device = load_model(ModelConfig(name_or_path=args.model), args.device)
    model.eval()
    result = {"model": args.model, "device": device, "threads": torch.get_num_threads(),
              "machine": platform.processor() or platform.machine(),
              "gpu": torch.cuda.get_device_name(0) if device == "cuda" else None,
              "questions": len(records), "max_new_tokens": args.max_new_tokens,
              "load_s": round(time.perf_counter() - start, 2)}

    start = time.perf_counter()
    ppl = scoring.answer_perplexity(model, tok, records, args.max_seq_length, batch_size=8)
    seconds = time.perf_counter() - start
    result["perplexity_pass"] = {"seconds": round(seconds, 2),
                                 "questions_per_min": round(len(records) / seconds * 60, 1),
                                 "answer_tokens": ppl["answer_tokens"]}
    result["generation"] = []
    for bs in [int(b) for b in args.batch_sizes.split(",") if b.strip()]:
        start = time.perf_counter()
        answers = scoring.generate_answers(model, tok, records, args.max_new_tokens, args.max_seq_length, batch_size=bs)
        seconds = time.perf_counter() - start
        new_tokens = sum(len(tok(a, add_special_tokens=False)["input_ids"]) for a in answers)
        result["generation"].append({"batch_size": bs, "seconds": round(seconds, 2),
                                     "questions_per_min": round(len(records) / seconds * 60, 1),
                                     "new_tokens_per_s": round(new_tokens / seconds, 1)})
    best = max(result["generation"], key=lambda g: g["questions_per_min"])
    # one evaluate_run = perplexity + generation for base and again for fine-tuned (base is cached after the first)
    per_question_s = 2 * (result["perplexity_pass"]["seconds"] + best["seconds"]) / len(records)
    result["evaluate_run_questions_per_min"] = round(60 / per_question_s, 1)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
