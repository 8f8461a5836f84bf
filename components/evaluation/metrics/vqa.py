"""VQAv2 accuracy as the official evaluation computes it.

Reference: GT-Vision-Lab/VQA, ``PythonEvaluationTools/vqaEvaluation/vqaEval.py`` (``VQAEval.evaluate``,
``processPunctuation``, ``processDigitArticle``). What is matched there, in its order:

1. Every answer and the prediction: newlines and tabs become spaces, then surrounding whitespace is stripped.
2. Only when the (stripped) human answers are not all identical are they and the prediction normalised; where
   all annotators agree, the prediction is compared as it stands (so "Yes" scores 0 against ten "yes").
   ``normalize_answer`` is the normalisation on its own, for callers that want it everywhere.
3. Normalisation, punctuation first: for each of ``; / [ ] " { } ( ) = + \\ _ - > < @ ` , ? !`` the mark is
   deleted if the ORIGINAL text has it followed or preceded by a space, or has a comma between two digits
   anywhere ("1,000"), and is replaced by a space otherwise. Then a period not followed by a digit is deleted
   (the reference's pattern ``(?!<=\\d)(\\.)(?!\\d)`` has a mistyped look-behind that never fires, so "3.5"
   keeps its period and "a.m." loses both), at most 32 of them (the reference passes ``re.UNICODE``, 32, where
   ``re.sub`` takes its count). Apostrophes, colons and other marks are kept. Digits are ASCII digits.
4. Then words: lower-case, split on whitespace, number words zero..ten (and "none") become digits, the articles
   a / an / the are dropped, each remaining word is looked up in the contractions table, and the words are
   joined by single spaces. The table's keys with capitals ("Im", "Ive", "Id've", "I'dve") can never match
   after lower-casing, and it maps "somebody'd" to "somebodyd"; both are kept as the reference has them.
5. Accuracy: for each of the n human answers, leave that one out (by position, so repeated answers are left
   out one at a time) and take min(#other answers equal to the prediction / 3, 1); average the n values. With
   10 answers: 4+ matches give 1.0; 3 give (7 * 1 + 3 * 2/3) / 10 = 0.9; 2 give (8 * 2/3 + 2 * 1/3) / 10 = 0.6;
   1 gives (9 * 1/3) / 10 = 0.3. A single human answer always scores 0 (nothing is left to match).

``vqa_score`` is the mean over questions as a fraction; the reference reports 100x that rounded to 2 places."""
from __future__ import annotations

import re
from collections.abc import Sequence

PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")
NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
ARTICLES = frozenset({"a", "an", "the"})
CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's",
    "howd": "how'd", "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll",
    "let's": "let's", "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't", "mustve": "must've",
    "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't",
    "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're",
    "theres": "there's", "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't",
    "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll",
    "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're",
    "youve": "you've",
}

_DIGIT_COMMA_DIGIT = re.compile(r"[0-9],[0-9]")
_PERIOD_NOT_BEFORE_DIGIT = re.compile(r"\.(?![0-9])")
_PERIOD_STRIP_COUNT = 32  # the reference's re.UNICODE flag, passed where re.sub takes its count


def _clean_whitespace(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


def _punctuation(text: str) -> str:
    delete_all = _DIGIT_COMMA_DIGIT.search(text) is not None
    out = text
    for mark in PUNCTUATION:
        delete = delete_all or (mark + " ") in text or (" " + mark) in text  # tested on the original text
        out = out.replace(mark, "" if delete else " ")
    return _PERIOD_NOT_BEFORE_DIGIT.sub("", out, count=_PERIOD_STRIP_COUNT)


def _digits_articles(text: str) -> str:
    words = [NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    return " ".join(CONTRACTIONS.get(word, word) for word in words if word not in ARTICLES)


def normalize_answer(answer: str) -> str:
    """The official answer normalisation: whitespace, punctuation, periods, then number words, articles and
    contractions (see the module docstring for each rule)."""
    return _digits_articles(_punctuation(_clean_whitespace(answer)))


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """Accuracy in [0, 1] of one predicted answer against the human answers (usually 10, any count >= 1)."""
    if isinstance(answers, str) or len(answers) == 0:
        raise ValueError("answers must be a non-empty list of the human answers")
    gts = [_clean_whitespace(a) for a in answers]
    pred = _clean_whitespace(prediction)
    if len(set(gts)) > 1:  # the reference normalises only where annotators disagree
        gts = [_digits_articles(_punctuation(a)) for a in gts]
        pred = _digits_articles(_punctuation(pred))
    matches = sum(gt == pred for gt in gts)
    total = 0.0
    for gt in gts:  # leave this one out: the others that match are `matches` less this one if it matched
        total += min(1.0, (matches - (gt == pred)) / 3)
    return total / len(gts)


def vqa_score(predictions: Sequence[str], answers_lists: Sequence[Sequence[str]]) -> float:
    """Mean ``vqa_accuracy`` over questions, a fraction in [0, 1]."""
    if len(predictions) != len(answers_lists):
        raise ValueError(f"{len(predictions)} predictions but {len(answers_lists)} answer lists")
    if not predictions:
        raise ValueError("vqa_score needs at least one question")
    return sum(vqa_accuracy(p, a) for p, a in zip(predictions, answers_lists)) / len(predictions)
