"""Evaluation: perplexity, ROUGE and BLEU of base vs fine-tuned, scoring a run, blind reviews and win rate."""
