"""Caption metrics as the COCO caption evaluation (pycocoevalcap 1.2, tylin/coco-caption) computes them.

Reference files, in the wheel ``pycocoevalcap``: ``tokenizer/ptbtokenizer.py``, ``bleu/bleu_scorer.py``,
``rouge/rouge.py``, ``cider/cider_scorer.py``, ``meteor/meteor.py``. ``bench/caption_reference_bench.py`` and
``tests/components/evaluation/test_caption_reference.py`` run that package (its own venv, ``.bench-venvs/cocoeval``)
against these functions; every metric agrees to 1e-4 on the shared emoji caption set.

* ``ptb_tokenize``: the reference runs Stanford CoreNLP 3.4.1's ``PTBTokenizer -preserveLines -lowerCase`` (Java) and
  drops the tokens ``'' ' `` ` -LRB- -RRB- -LCB- -RCB- . ? ! , : - -- ... ;``. This is a Python re-statement for
  ordinary captions: lower-cased; ``n't 's 'm 'd 'll 're 've`` split off (``can't`` -> ``ca n't``, ``won't`` ->
  ``wo n't``, ``cannot`` -> ``can not``, ``gonna`` -> ``gon na``; a curly apostrophe there becomes ``'``, elsewhere
  it stays, as in ``o’clock``); quotes, ``, ; : ? ! ... -- – —`` and sentence periods split off and dropped, except
  a comma or colon between digits (``1,000``, ``10:30``) and periods inside words (``u.s.``, ``3.5``, ``mr.``);
  ``% $ # & * + = @ < >`` become tokens of their own (``+1`` stays whole); ``!!`` and ``!?`` stay whole and, not
  being on the drop list, are kept; brackets become ``-lrb- -rrb- -lsb- -rsb- -lcb- -rcb-``, which the reference
  KEEPS (its drop list is upper-case but the tokenizer has already lower-cased them). Where it can differ from
  CoreNLP: a period after an abbreviation not in ``ABBREVIATIONS``, URLs, e-mail addresses, emoticons, fractions,
  SGML/HTML, and the rarer Unicode normalisations (CoreNLP rewrites some dashes, quotes and spaces). On all 4,740
  references and 1,580 candidates of ``bench/caption_reference_bench.py --images 1580`` it splits as CoreNLP does.
* ``bleu_scores``: ``Bleu(4)`` -- corpus BLEU-1..4 from pooled clipped n-gram matches (``correct``) and candidate
  n-grams (``guess``), BLEU-n = prod_{k<=n} ((correct_k + 1e-15) / (guess_k + 1e-9)) ** (1/n), times
  ``exp(1 - r/c)`` when c < r (ratio ``(c + 1e-15) / (r + 1e-9)``), with r the sum over images of the reference
  length closest to the candidate's (ties to the shorter), option 'closest'.
* ``rouge_l``: ``Rouge`` -- per image, LCS precision and recall against each reference, the max of each over the
  references (taken separately), F with beta = 1.2; the corpus score is the mean. Tokens are split on single spaces,
  as the reference does, so an empty caption is one empty token.
* ``cider_d``: ``Cider`` (which is CIDEr-D): TF-IDF n-gram vectors (n = 1..4) with the document frequency counted
  over the evaluated set's references, ``idf = log(#images) - log(max(1, df))``, clipped similarity
  ``sum min(c, r) r / (|c| |r|)``, Gaussian length penalty with sigma 6 on the lengths in bigrams, mean over n and
  references, times 10; the corpus score is the mean over images.
* ``meteor``: METEOR 1.5 cannot be restated without its Java code and WordNet/paraphrase data, so it runs the jar
  pycocoevalcap ships (``meteor-1.5.jar -stdio -l en -norm``) the way ``meteor.py`` talks to it; ``meteor_jar``
  finds it (``VLFORGE_METEOR_JAR`` or the cocoeval bench venv) and returns None when it or Java is missing.

Every scorer takes candidates already tokenised (``ptb_tokenize``'s output, space-joined) as the reference does;
``caption_metrics`` tokenises and runs them all."""
from __future__ import annotations

import atexit
import math
import os
import re
import shutil
import subprocess
import threading
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

BLEU_TINY = 1e-15
BLEU_SMALL = 1e-9
ROUGE_BETA = 1.2
CIDER_SIGMA = 6.0
# the reference's drop list less its upper-case -LRB- -RRB- -LCB- -RCB-, which never match the lower-cased tokens
PTB_DROPPED = frozenset({"''", "'", "``", "`", ".", "?", "!", ",", ":", "-", "--", "...", ";"})
BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}
ABBREVIATIONS = frozenset({"mr", "mrs", "ms", "dr", "st", "jr", "sr", "vs", "etc", "inc", "co", "ltd", "no", "mt"})
SPLIT_WORDS = {"cannot": ["can", "not"], "gonna": ["gon", "na"], "gotta": ["got", "ta"], "wanna": ["wan", "na"],
               "gimme": ["gim", "me"], "lemme": ["lem", "me"]}
_CONTRACTION = re.compile(r"^(.+?)(n['\u2019]t|['\u2019](?:s|m|d|ll|re|ve))$")
# "!!" and "!?" stay one token each, which the reference keeps (it drops a lone "!" or "?"); "+1" stays whole
_SPLIT = re.compile(r"(\.\.\.+|--+|[!?]+|[()\[\]{}\";%$#&*=@`<>]|(?<=\w)\+|\+(?!\d)|,(?!\d)|(?<!\d),|:(?!\d)|(?<!\d):)")


def _word_tokens(word: str) -> list[str]:
    """One whitespace- and punctuation-free chunk -> PTB tokens (contractions, trailing periods, quotes)."""
    if word in SPLIT_WORDS:
        return list(SPLIT_WORDS[word])
    out: list[str] = []
    lead = re.match(r"^['\u2018\u2019]+", word)  # an opening single quote ('hello)
    if lead and not re.match(r"^['\u2019](s|m|d|ll|re|ve|t)$", word):
        out.append("`")  # CoreNLP's opening quote, dropped
        word = word[lead.end():]
    tail: list[str] = []
    if word.endswith(".") and len(word) > 1:
        stem = word[:-1]
        if "." not in stem and stem not in ABBREVIATIONS and not re.fullmatch(r"[a-z]", stem):
            tail.append(".")
            word = stem
    m = _CONTRACTION.match(word)
    if m:
        head, suffix = m.groups()
        out += [head, suffix.replace("\u2019", "'")]  # CoreNLP writes the clitic with an ASCII apostrophe
    elif word.endswith(("'", "\u2019")) and len(word) > 1:  # plural possessive: dogs' -> dogs '
        out += [word.rstrip("'\u2019"), "'"]
    elif word:
        out.append(word)
    return out + tail


def ptb_tokenize(text: str) -> str:
    """PTB tokens of ``text``, lower-cased, the reference's punctuation tokens dropped, joined by single spaces."""
    text = text.replace("\n", " ").lower().replace("\u2026", "...").replace("\u201c", '"').replace("\u201d", '"')
    text = text.replace("\u2013", " -- ").replace("\u2014", " -- ")
    tokens: list[str] = []
    for chunk in text.split():
        for piece in _SPLIT.split(chunk):
            if not piece:
                continue
            if piece in BRACKETS:
                tokens.append(BRACKETS[piece])
            elif _SPLIT.fullmatch(piece):
                tokens.append(piece)
            else:
                tokens += _word_tokens(piece)
    return " ".join(t for t in tokens if t not in PTB_DROPPED and not re.fullmatch(r"\.\.\.+|--+|\"", t))


def _ngrams(words: Sequence[str], max_n: int) -> Counter:
    return Counter(tuple(words[i : i + k]) for k in range(1, max_n + 1) for i in range(len(words) - k + 1))


def bleu_scores(candidates: Sequence[str], references: Sequence[Sequence[str]], max_n: int = 4) -> list[float]:
    """Corpus BLEU-1..``max_n`` of tokenised ``candidates[i]`` against ``references[i]``, as ``Bleu(4)``."""
    correct = [0] * max_n
    guess = [0] * max_n
    test_len = ref_len = 0
    for cand, refs in zip(candidates, references):
        words = cand.split()
        counts = _ngrams(words, max_n)
        best: Counter = Counter()
        lengths = []
        for r in refs:
            rw = r.split()
            lengths.append(len(rw))
            best |= _ngrams(rw, max_n)
        test_len += len(words)
        ref_len += min((abs(length - len(words)), length) for length in lengths)[1]
        for k in range(max_n):
            guess[k] += max(0, len(words) - k)
        for gram, count in counts.items():
            correct[len(gram) - 1] += min(best[gram], count)
    scores = []
    product = 1.0
    for k in range(max_n):
        product *= (correct[k] + BLEU_TINY) / (guess[k] + BLEU_SMALL)
        scores.append(product ** (1.0 / (k + 1)))
    ratio = (test_len + BLEU_TINY) / (ref_len + BLEU_SMALL)
    if ratio < 1:
        scores = [s * math.exp(1 - 1 / ratio) for s in scores]
    return scores


def _lcs(a: Sequence[str], b: Sequence[str]) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(candidates: Sequence[str], references: Sequence[Sequence[str]],
            beta: float = ROUGE_BETA) -> tuple[float, list[float]]:
    """Mean ROUGE-L and the per-image scores, as ``Rouge``."""
    scores = []
    for cand, refs in zip(candidates, references):
        c = cand.split(" ")
        lcs = [(_lcs(r.split(" "), c), len(r.split(" "))) for r in refs]
        prec = max(m / len(c) for m, _ in lcs)
        rec = max(m / n for m, n in lcs)
        scores.append((1 + beta**2) * prec * rec / (rec + beta**2 * prec) if prec and rec else 0.0)
    return (sum(scores) / len(scores) if scores else 0.0), scores


def cider_d(candidates: Sequence[str], references: Sequence[Sequence[str]], max_n: int = 4,
            sigma: float = CIDER_SIGMA) -> tuple[float, list[float]]:
    """Mean CIDEr-D and the per-image scores, as ``Cider`` (idf from these references)."""
    ref_counts = [[_ngrams(r.split(), max_n) for r in refs] for refs in references]
    df: Counter = Counter()
    for refs in ref_counts:
        df.update({g for r in refs for g in r})
    log_images = math.log(float(len(references))) if references else 0.0

    def vector(counts: Counter) -> tuple[list[dict], list[float], int]:
        vec: list[dict] = [{} for _ in range(max_n)]
        for gram, tf in counts.items():
            vec[len(gram) - 1][gram] = tf * (log_images - math.log(max(1.0, df[gram])))
        norms = [math.sqrt(sum(v * v for v in d.values())) for d in vec]
        return vec, norms, sum(tf for g, tf in counts.items() if len(g) == 2)

    scores = []
    for cand, refs in zip(candidates, ref_counts):
        cv, cn, cl = vector(_ngrams(cand.split(), max_n))
        total = 0.0
        for r in refs:
            rv, rn, rl = vector(r)
            penalty = math.exp(-float(cl - rl) ** 2 / (2 * sigma**2))
            for k in range(max_n):
                val = sum(min(v, rv[k].get(g, 0.0)) * rv[k].get(g, 0.0) for g, v in cv[k].items())
                if cn[k] != 0 and rn[k] != 0:
                    val /= cn[k] * rn[k]
                total += val * penalty
        scores.append(10.0 * total / max_n / len(refs))
    return (sum(scores) / len(scores) if scores else 0.0), scores


def meteor_jar() -> Path | None:
    """pycocoevalcap's ``meteor-1.5.jar`` (``VLFORGE_METEOR_JAR``, else the ``.bench-venvs/cocoeval`` venv's copy),
    or None when it or ``java`` is missing."""
    if shutil.which("java") is None:
        return None
    if os.environ.get("VLFORGE_METEOR_JAR"):
        jar = Path(os.environ["VLFORGE_METEOR_JAR"])
        return jar if jar.is_file() else None
    repo = Path(__file__).resolve().parents[3]
    found = sorted(repo.glob(".bench-venvs/cocoeval/lib/python*/site-packages/pycocoevalcap/meteor/meteor-1.5.jar"))
    return found[0] if found else None


_METEOR: dict[Path, subprocess.Popen] = {}  # one running jar per path: loading its paraphrase table takes ~5 s
_METEOR_LOCK = threading.Lock()


def _meteor_process(jar: Path) -> subprocess.Popen:
    proc = _METEOR.get(jar)
    if proc is None or proc.poll() is not None:
        proc = subprocess.Popen(["java", "-jar", "-Xmx2G", jar.name, "-", "-", "-stdio", "-l", "en", "-norm"],
                                cwd=jar.parent, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True)
        _METEOR[jar] = proc
    return proc


@atexit.register
def _stop_meteor() -> None:
    for proc in _METEOR.values():
        proc.kill()
        proc.wait()


def meteor(candidates: Sequence[str], references: Sequence[Sequence[str]], jar: Path) -> tuple[float, list[float]]:
    """Corpus METEOR 1.5 and the per-image scores from the jar, in ``meteor.py``'s protocol: one ``SCORE`` line
    per image for its statistics, then one ``EVAL`` line over all of them. The jar keeps running for the next call
    (as a pycocoevalcap ``Meteor`` object does) and is stopped at exit."""
    with _METEOR_LOCK:
        proc = _meteor_process(jar.resolve())
        assert proc.stdin is not None and proc.stdout is not None
        try:
            stats = []
            for cand, refs in zip(candidates, references):
                hyp = cand.replace("|||", "").replace("  ", " ")
                proc.stdin.write(" ||| ".join(("SCORE", " ||| ".join(refs), hyp)) + "\n")
                proc.stdin.flush()
                stats.append(proc.stdout.readline().strip())
            proc.stdin.write("EVAL ||| " + " ||| ".join(stats) + "\n")
            proc.stdin.flush()
            per_image = [float(proc.stdout.readline().strip()) for _ in stats]
            return float(proc.stdout.readline().strip()), per_image
        except (OSError, ValueError):  # the jar died or answered out of step: start afresh next time
            proc.kill()
            _METEOR.pop(jar.resolve(), None)
            raise


def caption_metrics(candidates: Sequence[str], references: Sequence[Sequence[str]],
                    jar: Path | None = None) -> tuple[dict[str, float], dict[str, list[float]]]:
    """bleu1..bleu4, rouge_l, cider (and meteor when ``jar`` is given) after ``ptb_tokenize``, with per-image
    rouge_l / cider (/ meteor) scores."""
    cands = [ptb_tokenize(c) for c in candidates]
    refs = [[ptb_tokenize(r) for r in rs] for rs in references]
    metrics = {f"bleu{k + 1}": s for k, s in enumerate(bleu_scores(cands, refs))}
    metrics["rouge_l"], rouge_per = rouge_l(cands, refs)
    metrics["cider"], cider_per = cider_d(cands, refs)
    per_image = {"rouge_l": rouge_per, "cider": cider_per}
    if jar is not None:
        metrics["meteor"], per_image["meteor"] = meteor(cands, refs, jar)
    return metrics, per_image
