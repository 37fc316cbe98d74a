"""ROUGE and BLEU against values worked out by hand and against the libraries called directly."""
from __future__ import annotations

import math

import pytest

from workbench.evaluation import scoring


def test_rouge_matches_hand_computed_values():
    # pred 3 tokens, all in the 6-token reference: P=1, R=1/2 -> F=2/3; bigrams: 2 of 2 match, 5 in ref -> F=4/7
    r = scoring.rouge(["the cat sat"], ["the cat sat on the mat"])
    assert r["rouge1"] == pytest.approx(2 / 3)
    assert r["rouge2"] == pytest.approx(2 * 1 * 0.4 / 1.4)
    assert r["rougeL"] == pytest.approx(2 / 3)  # longest common subsequence = 3 tokens


def test_rouge_lcs_differs_from_unigram_overlap_when_order_changes():
    # same four words, reversed order: every unigram matches, no bigram does, LCS is one word
    r = scoring.rouge(["d c b a"], ["a b c d"])
    assert r["rouge1"] == pytest.approx(1.0)
    assert r["rouge2"] == pytest.approx(0.0)
    assert r["rougeL"] == pytest.approx(0.25)


def test_rouge_ignores_case_and_punctuation_and_does_not_stem():
    assert scoring.rouge(["The CAT!"], ["the cat"])["rouge1"] == pytest.approx(1.0)
    # stemming is off (the rouge-score / HF evaluate default): 'cats' and 'cat' are different tokens
    assert scoring.rouge(["cats running"], ["cat run"])["rouge1"] == pytest.approx(0.0)


def test_rouge_is_the_mean_of_per_example_f_measures_and_matches_rouge_score():
    from rouge_score import rouge_scorer

    preds = ["use the stack function", "MERGE INTO upserts rows", "nothing relevant here"]
    refs = ["the stack function unpivots columns", "MERGE INTO performs an upsert of rows", "OPTIMIZE compacts files"]
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=False)
    direct = [scorer.score(ref, pred) for pred, ref in zip(preds, refs)]
    ours = scoring.rouge(preds, refs)
    for key in ("rouge1", "rouge2", "rougeL"):
        assert ours[key] == pytest.approx(sum(d[key].fmeasure for d in direct) / 3)
    per = scoring.rouge_per_example(preds, refs)
    assert [p["rougeL"] for p in per] == pytest.approx([d["rougeL"].fmeasure for d in direct])
    assert per[2]["rouge1"] == 0.0


def test_bleu_matches_hand_computed_value():
    # 1-gram 5/6, 2-gram 3/5, 3-gram 2/4, 4-gram 1/3; same length so no brevity penalty
    expected = (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25
    assert scoring.bleu(["the cat sat on the mat"], ["the cat sat on a mat"]) == pytest.approx(expected, abs=1e-9)


def test_bleu_brevity_penalty_and_scale():
    # every n-gram of the 4-token prediction matches; BP = exp(1 - 6/4)
    assert scoring.bleu(["the cat sat on"], ["the cat sat on the mat"]) == pytest.approx(math.exp(-0.5), abs=1e-9)
    assert scoring.bleu(["exactly the same words here"], ["exactly the same words here"]) == pytest.approx(1.0)
    # no 4-gram match anywhere in the corpus and no smoothing: BLEU is 0 (sacrebleu may leave ~1e-13)
    assert scoring.bleu(["the cat sat quietly"], ["a cat sat down"]) == pytest.approx(0.0, abs=1e-9)


def test_bleu_is_corpus_level_and_matches_sacrebleu():
    import sacrebleu

    preds = ["Use OPTIMIZE to compact small files into larger ones", "Call df.explain() to see the plan"]
    refs = ["Run OPTIMIZE to compact small files into larger files", "Call df.explain() for the physical plan"]
    direct = sacrebleu.corpus_bleu(preds, [refs], tokenize="13a", smooth_method="none").score / 100
    assert scoring.bleu(preds, refs) == pytest.approx(direct)
    assert 0 < direct < 1
    sentence_mean = sum(scoring.bleu([p], [r]) for p, r in zip(preds, refs)) / 2
    assert scoring.bleu(preds, refs) != pytest.approx(sentence_mean)  # corpus BLEU, not a mean of sentences


def test_text_metrics_and_errors():
    m = scoring.text_metrics(["a b c d"], ["a b c d"])
    assert m == pytest.approx({"rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0, "bleu": 1.0})
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        scoring.text_metrics(["a", "b"], ["a"])
    assert scoring.text_metrics([], []) == {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0, "bleu": 0.0}


def test_relative_change():
    assert scoring.relative_change(27.18, 11.12) == pytest.approx(-59.09, abs=0.01)
    assert scoring.relative_change(0.340, 0.388) == pytest.approx(14.12, abs=0.01)
    assert scoring.relative_change(0.0, 0.5) is None
    assert scoring.relative_change(7e-14, 0.01) is None  # sacrebleu's 'zero' BLEU
    assert scoring.relative_change(None, 0.5) is None
    assert scoring.relative_change(float("nan"), 0.5) is None
