"""`python -m workbench chat --run RUN "question"`: the base and fine-tuned answers, one after the other."""
from __future__ import annotations

import json
import sys


def register(sub) -> None:
    p = sub.add_parser("chat", help="Ask a question and print the base model's and a run's answers side by side.",
                       description="Both answers come from one batched generation on one 4-bit base model: the "
                                   "base answer with the adapter off, the fine-tuned one with the run's adapter on.")
    p.add_argument("question", help="The question to ask (quote it).")
    p.add_argument("--run", required=True, metavar="RUN_ID", help="The fine-tuned run (see `python -m workbench runs`).")
    p.add_argument("--against", default="base", metavar="RUN_ID|base",
                   help="What to compare with: 'base' (default) or another run trained on the same base model.")
    d = _defaults()
    p.add_argument("--system", default=d.system_prompt, help="System prompt (default: the one the run was trained "
                                                              "with).")
    p.add_argument("--temperature", type=float, default=d.temperature,
                   help="0 = greedy; e.g. 0.7 to sample (default %(default)s).")
    p.add_argument("--top-p", type=float, default=d.top_p, help="Nucleus sampling share when sampling "
                                                                "(default %(default)s).")
    p.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens,
                   help="Longest answer, in tokens (default %(default)s).")
    p.add_argument("--repetition-penalty", type=float, default=d.repetition_penalty,
                   help="Above 1 a model repeats a phrase less; 1 = off (default %(default)s).")
    p.add_argument("--seed", type=int, default=d.seed, help="Seed for sampling (-1 = random; default %(default)s).")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="Where to run (default auto).")
    p.add_argument("--json", action="store_true", help="Print JSON (answers, token counts, timings).")
    p.set_defaults(func=run_chat)


def _defaults():
    """ChatSettings' defaults (typed once, in workbench/chat/streaming.py); streaming imports no torch at the top."""
    from workbench.chat.streaming import ChatSettings

    return ChatSettings()


def run_chat(args) -> int:
    from workbench import runs
    from workbench.chat import session as chat

    settings = chat.ChatSettings(system_prompt=args.system, temperature=args.temperature, top_p=args.top_p,
                                 max_new_tokens=args.max_new_tokens, seed=args.seed,
                                 repetition_penalty=args.repetition_penalty)
    sides = (args.against, args.run)
    final = None
    try:
        for update in chat.chat_pair(*sides, args.question, settings=settings, device=args.device):
            if update.note and final is None and not args.json:
                print(f"note: {update.note}", file=sys.stderr)
            final = update
    except (chat.ChatError, runs.RunError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"question": args.question, "settings": chat.settings_dict(settings),
                          "columns": [{"side": side, "answer": text, "tokens": n, "first_token_s": ft,
                                       "tokens_per_s": rate}
                                      for side, text, n, ft, rate in zip(sides, final.texts, final.tokens,
                                                                         final.first_token_s, final.tokens_per_s)]},
                         indent=1))
        return 0
    for side, text in zip(sides, final.texts):
        print(f"=== {chat.side_label(side)} ===")
        print(text or "(empty answer)")
        print()
    return 0
