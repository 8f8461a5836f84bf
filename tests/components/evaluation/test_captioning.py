"""BLEU-4 and CIDEr-D against hand-computed values (the arithmetic is in the comments)."""
import math

import pytest
from vlforge.components.evaluation.captioning import bleu, cider_d, distinct_share, mismatched_cider, tokenize


def test_bleu4_hand_computed() -> None:
    # p1 = 5/6 (the second "the" is clipped), p2 = 3/5, p3 = 2/4, p4 = 1/3; equal lengths -> no brevity penalty
    assert bleu(["the cat sat on the mat"], [["the cat sat on a mat"]]) == pytest.approx((5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25)
    # all precisions 1, c = 4 < r = 6 -> BP = exp(1 - 6/4)
    assert bleu(["the cat sat on"], [["the cat sat on a mat"]]) == pytest.approx(math.exp(-0.5))
    # the closest reference length is used: r = 4 of (4, 9) -> no penalty
    assert bleu(["The cat sat on."], [["the cat sat on", "a cat sat on the mat in the sun"]]) == pytest.approx(1.0)
    assert bleu(["the cat"], [["the cat sat on a mat"]]) == 0.0  # no 3- or 4-gram: 0 without smoothing


def test_bleu_is_corpus_level() -> None:
    # pooled counts: p1 = (4+3)/(4+3) = 1, p2 = (3+2)/(3+2), p3 = (2+1)/(2+1), p4 = (1+0)/(1+0) -> 1.0 even though
    # the second sentence alone has no 4-gram
    assert bleu(["a red big circle", "a blue star"], [["a red big circle"], ["a blue star"]]) == pytest.approx(1.0)


def test_cider_d_hand_computed() -> None:
    refs = [["a red circle"], ["a blue square"]]
    # idf = log(2) - log(df): "a" occurs in both images' references -> 0, every other n-gram -> log 2.
    # Image 1, exact match: cosine 1 for n = 1, 2, 3, no 4-grams (0); same length -> (1+1+1+0)/4 * 10 = 7.5.
    # Image 2, "a blue circle": n=1 vectors (0, l, l) vs (0, l, l), overlap "blue" only: l²/(2l²) = 0.5; n=2 "a blue"
    # shared of two bigrams each: 0.5; n=3: 0 -> (0.5+0.5)/4 * 10 = 2.5. Corpus: (7.5 + 2.5)/2 = 5.0.
    score, per_image = cider_d(["a red circle", "a blue circle"], refs)
    assert per_image == pytest.approx([7.5, 2.5])
    assert score == pytest.approx(5.0)


def test_cider_d_length_penalty_and_clipping() -> None:
    refs = [["a red circle"], ["a blue square"]]
    # "red red circle": unigram tf red=2 vs ref 1 -> min clips to the reference's weight; 2 bigrams each, so no
    # length penalty. n=1: c=(2l, l), r=(0, l, l) -> (l*l + l*l)/(sqrt(5)l * sqrt(2)l) = 2/sqrt(10);
    # n=2: "red circle" shared: l²/(sqrt2 l · sqrt2 l) = 0.5; n=3: 0.
    _, per_image = cider_d(["red red circle", "a blue square"], refs)
    assert per_image[0] == pytest.approx(10 * (2 / math.sqrt(10) + 0.5) / 4)
    # a longer candidate pays exp(-(Δ bigrams)² / 72): 3 extra bigrams
    _, long = cider_d(["a red circle a red circle", "a blue square"], refs)
    assert long[0] < 7.5 and long[1] == pytest.approx(7.5)


def test_tokenize() -> None:
    assert tokenize("A red circle, left of a Star.") == ["a", "red", "circle", "left", "of", "a", "star"]


def test_distinct_share_exposes_a_constant_caption() -> None:
    assert distinct_share(["a red circle"] * 4) == 0.25
    assert distinct_share(["a red circle", "A red circle.", "a blue star", "two squares"]) == 0.75  # as tokenised
    assert distinct_share([]) == 0.0


def test_mismatched_cider_tells_image_conditioned_captions_from_a_prior() -> None:
    refs = [["a red circle above a blue square"], ["a green star left of a yellow cross"],
            ["two small purple triangles"], ["a big orange square below a red star"]]
    own = [r[0] for r in refs]
    assert cider_d(own, refs)[0] > 5 and mismatched_cider(own, refs) < 0.5  # each caption fits its own image only
    prior = ["a red square"] * 4  # one caption for every image
    assert mismatched_cider(prior, refs) == pytest.approx(cider_d(prior, refs)[0])
    assert mismatched_cider(["x"], [["x"]]) == 0.0
