"""Caption metrics against hand-computed values (the arithmetic is in the comments), no Java: BLEU-1..4, ROUGE-L,
CIDEr-D and the PTB tokenisation as pycocoevalcap defines them, and the captioning task's diagnostics.
``test_caption_reference.py`` runs pycocoevalcap itself."""
import math
import shutil

import pytest
from vlforge.components.evaluation.captioning import distinct_share, group_by_image, mismatched_cider
from vlforge.components.evaluation.metrics.captioning import bleu_scores, caption_metrics, cider_d, ptb_tokenize, rouge_l


def test_bleu_hand_computed() -> None:
    # correct 5, 3, 2, 1 of guesses 6, 5, 4, 3 (the second "the" is clipped); equal lengths -> no brevity penalty.
    # BLEU-n is the n-th root of the product of the first n precisions (pycocoevalcap's 1e-15 / 1e-9 are below 1e-8)
    b = bleu_scores(["the cat sat on the mat"], [["the cat sat on a mat"]])
    p = [5 / 6, 3 / 5, 2 / 4, 1 / 3]
    assert b == pytest.approx([p[0], (p[0] * p[1]) ** 0.5, (p[0] * p[1] * p[2]) ** (1 / 3), math.prod(p) ** 0.25])
    # all precisions 1, c = 4 < r = 6 -> BP = exp(1 - 6/4) on every n
    assert bleu_scores(["the cat sat on"], [["the cat sat on a mat"]]) == pytest.approx([math.exp(-0.5)] * 4)
    # the closest reference length is used: r = 4 of (4, 9) -> no penalty
    assert bleu_scores(["the cat sat on"], [["the cat sat on", "a cat sat on the mat in the sun"]]) == pytest.approx([1.0] * 4)
    # no 3- or 4-gram: p3 = p4 = 1e-15 / 1e-9 = 1e-6 (the reference's constants, not 0); BP = exp(1 - 6/2)
    b = bleu_scores(["the cat"], [["the cat sat on a mat"]])
    assert b[2] == pytest.approx(1e-2 * math.exp(-2)) and b[3] == pytest.approx(1e-3 * math.exp(-2))


def test_bleu_closest_length_ties_to_the_shorter_and_is_corpus_level() -> None:
    # c = 5, references 4 and 6 are equally close -> r = 4 < c: no penalty
    assert bleu_scores(["a b c d e"], [["a b c d", "a b c d e f"]])[0] == pytest.approx(1.0)
    # pooled counts: every precision is 1 even though the second sentence alone has no 4-gram
    assert bleu_scores(["a red big circle", "a blue star"], [["a red big circle"], ["a blue star"]]) == pytest.approx([1.0] * 4)


def test_rouge_l_hand_computed() -> None:
    # LCS("a cat on the mat", "the cat sat on the mat") = "cat on the mat" = 4: P = 4/5, R = 4/6
    f = 2.44 * 0.8 * (4 / 6) / (4 / 6 + 1.44 * 0.8)
    assert rouge_l(["a cat on the mat"], [["the cat sat on the mat"]])[0] == pytest.approx(f)
    # the max precision and the max recall are taken separately over the references: P = 4/5 (second), R = 2/2 (first)
    score, per_image = rouge_l(["a cat on the mat", "x"], [["a cat", "the cat sat on the mat"], ["y"]])
    assert per_image == pytest.approx([2.44 * 0.8 / (1 + 1.44 * 0.8), 0.0])
    assert score == pytest.approx(per_image[0] / 2)


def test_cider_d_hand_computed() -> None:
    refs = [["a red circle"], ["a blue square"]]
    # idf = log(2) - log(df): "a" occurs in both images' references -> 0, every other n-gram -> log 2.
    # Image 1, exact match: cosine 1 for n = 1, 2, 3, no 4-grams (0); same length -> (1+1+1+0)/4 * 10 = 7.5.
    # Image 2, "a blue circle": n=1 vectors (0, l, l) vs (0, l, l), overlap "blue" only: l²/(2l²) = 0.5; n=2 "a blue"
    # shared of two bigrams each: 0.5; n=3: 0 -> (0.5+0.5)/4 * 10 = 2.5. Corpus: (7.5 + 2.5)/2 = 5.0.
    score, per_image = cider_d(["a red circle", "a blue circle"], refs)
    assert per_image == pytest.approx([7.5, 2.5])
    assert score == pytest.approx(5.0)
    # two references: the mean over them (7.5 against the first, 0 against "x": its idf is log 2 - log 1 but
    # nothing is shared) -> 3.75
    assert cider_d(["a red circle", "a blue square"], [["a red circle", "x"], ["a blue square"]])[1][0] == pytest.approx(3.75)


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


@pytest.mark.parametrize(("text", "tokens"), [  # each checked against CoreNLP 3.4.1's PTBTokenizer -lowerCase
    ("A red circle, left of a Star.", "a red circle left of a star"),
    ("The dog's ball isn't red, I can't see; won't go!", "the dog 's ball is n't red i ca n't see wo n't go"),
    ("A dog (brown) runs.", "a dog -lrb- brown -rrb- runs"),  # the reference keeps its lower-cased brackets
    ("gonna cannot dogs' ball -- ok", "gon na can not dogs ball ok"),
    ("don\u2019t stop\u2026 50% $5 mr. smith at 10:30", "do n't stop 50 % $ 5 mr. smith at 10:30"),
    ("two o\u2019clock", "two o\u2019clock"),
    ("\u201cquoted\u201d t-shirt 3.5 U.S. 1,000 5\u20130", "quoted t-shirt 3.5 u.s. 1,000 5 0"),
    ("it'll they're we've I'd I'm", "it 'll they 're we 've i 'd i 'm"),
    ("...", ""),
    ("!! a+b +1 <3", "!! a + b +1 < 3"),
])
def test_ptb_tokenize(text: str, tokens: str) -> None:
    assert ptb_tokenize(text) == tokens


def test_caption_metrics_tokenises_first_and_leaves_meteor_out_without_the_jar() -> None:
    metrics, per_image = caption_metrics(["The cat, sat on the mat."], [["the cat sat on the mat"]])
    assert metrics["bleu4"] == pytest.approx(1.0) and metrics["rouge_l"] == pytest.approx(1.0)
    assert set(metrics) == {"bleu1", "bleu2", "bleu3", "bleu4", "rouge_l", "cider"}
    assert set(per_image) == {"rouge_l", "cider"}


def test_group_by_image_collects_every_reference() -> None:
    assert group_by_image([b"x", b"y", b"x"], ["a", "b", "c"]) == [(0, ["a", "c"]), (1, ["b"])]


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


def test_meteor_jar_from_the_environment(tmp_path, monkeypatch) -> None:
    from vlforge.components.evaluation.metrics.captioning import meteor_jar

    monkeypatch.setenv("VLFORGE_METEOR_JAR", str(tmp_path / "missing.jar"))
    assert meteor_jar() is None  # never a fake METEOR: no jar, no key
    (tmp_path / "meteor-1.5.jar").write_bytes(b"")
    monkeypatch.setenv("VLFORGE_METEOR_JAR", str(tmp_path / "meteor-1.5.jar"))
    assert meteor_jar() == (tmp_path / "meteor-1.5.jar" if shutil.which("java") else None)
