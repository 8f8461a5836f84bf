"""vlforge's caption metrics against pycocoevalcap itself (issue 19): BLEU-1..4, METEOR, ROUGE-L and CIDEr-D within
1e-4, and the same PTB tokens for every caption, on a shared emoji caption set (``bench/caption_reference_bench.py``).

pycocoevalcap runs in its own venv, ``.bench-venvs/cocoeval``, built here on first use (``make test`` builds it
first, ``make cocoeval``); its tokenizer and METEOR are Java (``make java`` installs Debian's default-jre-headless).
About 15 s once the venv exists."""
import shutil
from pathlib import Path

import pytest
from cli_harness import load_module

REPO = Path(__file__).resolve().parents[3]
SCRIPT = REPO / "bench" / "caption_reference_bench.py"


def _bench():
    return load_module("caption_reference_bench_under_test", SCRIPT)


@pytest.fixture(scope="module")
def compared() -> dict:
    assert shutil.which("java"), "pycocoevalcap's PTB tokenizer and METEOR need java: run `make java`"
    bench = _bench()
    data = bench.caption_set(bench.emoji_rows(), 160)
    ref = bench.run_reference(data)
    ours = bench.run_ours(data)
    return {"ours": ours, "ref": ref, **bench.compare(ours, ref)}


def test_every_metric_equals_pycocoevalcap(compared: dict) -> None:
    assert set(compared["diff"]) == {"bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rouge_l", "cider"}
    assert compared["max_abs_diff"] <= 1e-4, compared["diff"]
    assert 0.05 < compared["ref"]["scores"]["cider"] and 0.05 < compared["ref"]["scores"]["bleu4"] < 0.95  # not trivial


def test_ptb_tokens_equal_corenlp(compared: dict) -> None:
    assert compared["token_mismatches"] == []
