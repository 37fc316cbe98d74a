"""Preference pairs from blind review votes: every vote that prefers one side becomes {prompt, chosen, rejected}.

A vote "left is better" / "right is better" says which of two answers to the same question a reviewer preferred;
that is exactly a DPO training pair. Ties and "both bad" votes say nothing about which answer is better and are
counted in `skipped`, not used. Duplicated and contradictory votes are reported by the rule in
workbench.data.preferences (contradictions are left out of training and listed, never averaged).
"""
from __future__ import annotations

from workbench import runs
from workbench.data.preferences import (MIN_PAIRS, RECOMMENDED_PAIRS, RULE, PreferenceError,  # noqa: F401 (re-exported)
                                        describe, pair_report, readiness, write_pairs_jsonl)
from workbench.evaluation import reviews


def vote_pair(vote: dict) -> dict | None:
    """The pair one vote makes, or None for a tie / 'both bad' vote."""
    if vote.get("choice") not in ("left", "right"):
        return None
    win, lose = ("left", "right") if vote["choice"] == "left" else ("right", "left")
    return {"prompt": vote["question"], "chosen": vote[f"{win}_answer"], "rejected": vote[f"{lose}_answer"],
            "reviewer": vote["reviewer"], "chosen_side": vote[f"{win}_side"], "rejected_side": vote[f"{lose}_side"],
            "created_at": vote["created_at"], "vote_id": vote["id"], "votes": 1, "source": "votes"}


def pairs_from_votes(run_id: str | None = None) -> dict:
    """The preference pairs of every blind vote (or of the votes where run `run_id` was a side), with the report of
    pair_report() and `skipped` = {tie: n, both_bad: n}."""
    if run_id is not None:
        run_id = runs.validate_run_id(run_id)
    candidates, skipped = [], {"tie": 0, "both_bad": 0}
    for vote in reviews.votes(run_id):
        pair = vote_pair(vote)
        if pair is None:
            skipped[vote["choice"]] += 1
        else:
            candidates.append(pair)
    return pair_report(candidates, skipped)


# -- judged by the same reviews: the parent run, held-out preference accuracy ------------------------------

def parent_of(run_id: str) -> str | None:
    """The parent run of a preference run (from its config.yaml), or None for any other run."""
    cfg = runs.load_run_config(run_id)
    return cfg.preference.parent_run if cfg.kind == "preference" and cfg.preference.parent_run else None


def parent_win_rate(run_id: str) -> dict:
    """reviews.win_rate of a preference run against its parent (blind votes where the two were the sides), plus
    `text` (reviews.describe). The Chat tab pits them with reviews.blind_sides(run_id, parent)."""
    parent = parent_of(run_id)
    if parent is None:
        raise PreferenceError(f"Run '{run_id}' is not a preference run, so it has no parent run to compare with.")
    result = reviews.win_rate(run_id, against=parent)
    return {**result, "text": reviews.describe(result)}


def pair_tokens(pair: dict, tokenizer, cfg) -> dict:
    """{prompt_ids, chosen_ids, rejected_ids}: the exact tokens a preference run trains on and is scored on, built
    like an SFT example (workbench.formatting: the same prompt, template, answer suffix and truncation)."""
    from workbench.formatting import tokenize_example

    row = {}
    for side in ("chosen", "rejected"):
        ex = tokenize_example({"instruction": pair["prompt"], "output": pair[side]}, tokenizer,
                              cfg.model.max_seq_length, cfg.data.template, cfg.data.system_prompt)
        row["prompt_ids"] = ex["input_ids"][:ex["prompt_tokens"]]
        row[f"{side}_ids"] = ex["input_ids"][ex["prompt_tokens"]:]
    return row


def completion_logps(model, rows: list[dict], batch_size: int = 2) -> list[tuple[float, float]]:
    """(log p(chosen | prompt), log p(rejected | prompt)) per row under the model's active adapter: the sum of the
    answer tokens' log-probabilities, as DPO computes them."""
    import torch

    device = next(model.parameters()).device
    out = []
    for start in range(0, len(rows), batch_size):
        seqs = [(r["prompt_ids"], r[f"{side}_ids"]) for r in rows[start:start + batch_size]
                for side in ("chosen", "rejected")]
        width = max(len(p) + len(c) for p, c in seqs)
        ids = torch.zeros((len(seqs), width), dtype=torch.long)
        mask, answer = torch.zeros_like(ids), torch.zeros_like(ids, dtype=torch.bool)
        for i, (p, c) in enumerate(seqs):
            ids[i, :len(p) + len(c)] = torch.tensor(p + c)
            mask[i, :len(p) + len(c)] = 1
            answer[i, len(p):len(p) + len(c)] = True
        with torch.no_grad():
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
        token_logps = torch.log_softmax(logits[:, :-1], dim=-1).gather(2, ids[:, 1:, None].to(device))[..., 0]
        sums = (token_logps * answer[:, 1:].to(device)).sum(dim=1).tolist()
        out += [(sums[i], sums[i + 1]) for i in range(0, len(sums), 2)]
    return out


def held_out_accuracy(model, rows: list[dict], beta: float, policy: str, reference: str, ids=None) -> dict:
    """How often the run's implicit reward, beta * (log p_policy - log p_reference), is higher for the chosen
    answer than for the rejected one, on `rows` (pair_tokens rows). `model` is a PeftModel holding both adapters
    by name. Also: how often the reference alone gives the chosen answer the higher likelihood."""
    model.eval()
    model.set_adapter(reference)
    ref = completion_logps(model, rows)
    model.set_adapter(policy)
    pol = completion_logps(model, rows)
    with model.disable_adapter():  # the bare base model, for scale: how far the reference itself is from it
        base = completion_logps(model, rows)
    per_pair = []
    for n, ((rc, rr), (pc, pr), (bc, br)) in enumerate(zip(ref, pol, base)):
        chosen, rejected = beta * (pc - rc), beta * (pr - rr)
        per_pair.append({"id": ids[n] if ids else n, "reward_chosen": chosen, "reward_rejected": rejected,
                         "margin": chosen - rejected, "reference_logps": [rc, rr], "policy_logps": [pc, pr],
                         "base_logps": [bc, br]})
    n = len(per_pair)

    def share(test):
        return sum(1 for p in per_pair if test(p)) / n if n else None

    return {"pairs": n, "beta": beta, "accuracy": share(lambda p: p["margin"] > 0),
            "mean_margin": sum(p["margin"] for p in per_pair) / n if n else None,
            "reference_prefers_chosen": share(lambda p: p["reference_logps"][0] > p["reference_logps"][1]),
            "policy_prefers_chosen": share(lambda p: p["policy_logps"][0] > p["policy_logps"][1]),
            "per_pair": per_pair}


def preference_accuracy(run_id: str, device: str | None = None) -> dict:
    """Held-out preference accuracy of a finished preference run: its adapter as the policy and its parent's
    adapter as the reference, on the pairs held out when it was created (data/pairs_eval.jsonl). Writes
    preference_metrics.json in the run folder and returns it. Refused while the run trains or is being scored."""
    import json

    from peft import PeftModel

    from workbench.data.dataset import read_jsonl
    from workbench.evaluation.evaluate import refusal
    from workbench.models import load_model

    run = runs.folder(run_id)
    parent = parent_of(run.id)
    if parent is None:
        raise PreferenceError(f"Run '{run_id}' is not a preference run; held-out preference accuracy needs one.")
    why = refusal(run.id)
    if why:
        raise PreferenceError(why)
    child, parent_adapter = runs.adapter_path(run.id), runs.adapter_path(parent)
    if child is None or parent_adapter is None:
        raise PreferenceError(f"Run '{run.id if child is None else parent}' has no saved adapter yet; it must finish "
                              f"training first.")
    cfg = runs.load_run_config(run.id)
    pairs = read_jsonl(run.pairs_eval) if run.pairs_eval.is_file() else []
    model, tokenizer, device = load_model(cfg.model, device or cfg.training.device)
    model = PeftModel.from_pretrained(model, str(child), adapter_name="policy")
    model.load_adapter(str(parent_adapter), adapter_name="reference")
    rows = [pair_tokens(p, tokenizer, cfg) for p in pairs]
    result = {"run_id": run.id, "parent_run": parent, "computed_at": runs.now_iso(), "device": device,
              **held_out_accuracy(model, rows, cfg.preference.beta, "policy", "reference", [p["id"] for p in pairs])}
    from workbench import paths

    paths.atomic_write(run.preference_metrics, json.dumps(result, indent=1))
    return result


def read_preference_metrics(run_id: str) -> dict | None:
    """preference_metrics.json of a run (written after a preference run trains, or by preference_accuracy)."""
    import json

    path = runs.folder(run_id).preference_metrics
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return None
