"""How the next token is chosen from a step's logits, the same for plain `generate` and the fast engine: greedy or
transformers' temperature -> top-p -> multinomial sampling, after Chat's repetition penalty (transformers' rule over
each row's own tokens, its left padding left out)."""
from __future__ import annotations


def penalize_repeats(scores, seen, penalty: float):
    """transformers' repetition penalty on a [rows, vocab] boolean mask of the tokens each row has seen: positive
    logits divided by `penalty`, negative ones multiplied. The fast engine and plain generate both use this."""
    import torch

    return torch.where(seen, torch.where(scores > 0, scores / penalty, scores * penalty), scores)


class RepeatPenalty:
    """A logits processor for plain `generate`: the repetition penalty over each row's own tokens, its left padding
    left out (transformers' own processor also penalizes the pad id, so a short row in a batch would answer
    differently from the same row alone, and from the fast engine)."""

    def __init__(self, penalty: float, pads: list[int]):
        self.penalty, self.pads = float(penalty), pads

    def __call__(self, input_ids, scores):
        import torch

        seen = torch.zeros_like(scores, dtype=torch.bool)
        for row, pad in enumerate(self.pads):
            seen[row, input_ids[row, pad:]] = True
        return penalize_repeats(scores, seen, self.penalty)


def seen_tokens(ids, real, vocab: int):
    """[rows, vocab]: True where the row's prompt (its `real` positions, padding left out) holds that token."""
    import torch

    seen = torch.zeros(ids.shape[0], vocab, dtype=torch.bool, device=ids.device)
    r, c = real.nonzero(as_tuple=True)
    seen[r, ids[r, c]] = True
    return seen


def penalized(logits, seen, penalty: float):
    """The penalty over each row's tokens so far; the logits as they are when it is off (`seen` None)."""
    return logits if seen is None else penalize_repeats(logits.float(), seen, penalty)


def mark(seen, tokens) -> None:
    """Each row's new token joins its seen tokens (nothing when the penalty is off)."""
    if seen is not None:
        seen.scatter_(1, tokens.view(-1, 1), True)


def pick(logits, temperature: float, top_p: float, generator):
    """Greedy argmax, or transformers' temperature -> top-p -> multinomial sampling."""
    import torch

    if temperature <= 0:
        return logits.argmax(-1)
    scores = logits / temperature if temperature != 1.0 else logits
    if top_p < 1.0:
        sorted_logits, sorted_idx = torch.sort(scores, descending=False)
        remove = sorted_logits.softmax(-1).cumsum(-1) <= (1 - top_p)
        remove[..., -1:] = False
        scores = scores.masked_fill(remove.scatter(1, sorted_idx, remove), float("-inf"))
    return torch.multinomial(scores.softmax(-1), 1, generator=generator).squeeze(1)
