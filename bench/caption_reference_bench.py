"""Caption metrics: vlforge's against pycocoevalcap's on the same captions (issue 19; the aim is |diff| <= 1e-4).

    .venv/bin/python bench/caption_reference_bench.py [--images 1580] [--venv .bench-venvs/cocoeval] [--out DIR]
    .venv/bin/python bench/caption_reference_bench.py --setup-only   # just create the venv (``make cocoeval``)

The reference (``peer``) runs in its own venv, ``.bench-venvs/cocoeval`` (created here on first use: ``python -m
venv`` + ``pip install pycocoevalcap``; its Java parts need ``java`` on PATH, e.g. Debian's default-jre-headless),
and imports nothing from vlforge: ``PTBTokenizer`` on every caption, then ``Bleu(4)``, ``Meteor``, ``Rouge`` and
``Cider`` as ``pycocoevalcap/eval.py`` runs them (Spice is left out: it downloads Stanford models). This side
scores the same raw captions with ``vlforge.components.evaluation.metrics.captioning.caption_metrics`` (its own
Python PTB tokenizer; METEOR through the jar of that venv) and compares metric by metric, and the tokenisation
caption by caption. The caption set comes from the shared emoji data (``../shared/data/emoji-noto``): each
emoji's references are its CLDR name, its keyword list and a sentence built from both; its candidate is one of
several kinds in turn (exact, partial, keywords, another emoji's name, empty or punctuation only, contractions and
punctuation, brackets). Results: bench/results/caption-reference.json and a table on stdout."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reference_venv  # noqa: E402 - the shared set-up of the reference venvs

REPO = Path(__file__).resolve().parents[1]
DEFAULT_VENV = REPO / ".bench-venvs" / "cocoeval"
EMOJI = REPO.parent / "shared" / "data" / "emoji-noto" / "pairs.parquet"
PEER_PINS = ["pycocoevalcap==1.2"]
TOLERANCE = 1e-4
METRICS = ["bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rouge_l", "cider"]


def emoji_rows(path: Path = EMOJI) -> list[tuple[str, str, list[str]]]:
    """(key, name, keywords) of every emoji in the shared set, in file order."""
    import pyarrow.parquet as pq

    table = pq.read_table(path, columns=["key", "caption", "keywords"]).to_pylist()
    return [(r["key"], r["caption"], [k.strip() for k in (r["keywords"] or "").split(",") if k.strip()]) for r in table]


def caption_set(rows: list[tuple[str, str, list[str]]], n_images: int) -> dict[str, dict]:
    """{key: {"references": [...], "candidate": str}} for the first ``n_images`` emoji (every k-th of the set, so
    all categories appear), candidates varied by position."""
    step = max(1, len(rows) // max(1, n_images))
    picked = rows[::step][:n_images]
    out: dict[str, dict] = {}
    for i, (key, name, keywords) in enumerate(picked):
        kw = keywords or [name]
        refs = [name, ", ".join(kw), f"A picture of the {name} emoji ({kw[0]})."]
        other = picked[(i + len(picked) // 2) % len(picked)][1]
        words = name.split()
        kinds = [
            name,  # exact
            " ".join(words[: max(1, len(words) // 2)]),  # partial
            f"{kw[0]} and {kw[-1]}",  # keywords
            other,  # another emoji's name
            "..." if i % 2 else "",  # empty or punctuation only
            f"It's a {name}, isn't it? I can't say it won't be!",  # contractions, punctuation
            f"The {name}'s picture (a {kw[0]}) -- \u201cnice\u201d; yes: 1,000 times.",  # brackets, quotes, numbers
            f"a picture of the {name} emoji",  # close to a reference
        ]
        out[key] = {"references": refs, "candidate": kinds[i % len(kinds)]}
    return out


# ------------------------------------------------------------------------------ pycocoevalcap's side (peer venv)
def peer(in_path: Path, out_path: Path) -> None:
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    data = json.loads(in_path.read_text())
    gts = {k: [{"caption": r} for r in v["references"]] for k, v in data.items()}
    res = {k: [{"caption": v["candidate"]}] for k, v in data.items()}
    tok = PTBTokenizer()
    gts, res = tok.tokenize(gts), tok.tokenize(res)
    scores: dict[str, float] = {}
    timing: dict[str, float] = {}
    for scorer, names in [(Bleu(4), ["bleu1", "bleu2", "bleu3", "bleu4"]), (Meteor(), ["meteor"]),
                          (Rouge(), ["rouge_l"]), (Cider(), ["cider"])]:
        start = time.perf_counter()
        score, _ = scorer.compute_score(gts, res)
        timing[names[0]] = time.perf_counter() - start
        for name, value in zip(names, score if isinstance(score, list) else [score]):
            scores[name] = float(value)
    out_path.write_text(json.dumps({"scores": scores, "tokenized": {"gts": gts, "res": res}, "seconds": timing}))


# ----------------------------------------------------------------------------------------------------- this side
def ensure_venv(venv: Path = DEFAULT_VENV) -> Path:
    """The reference venv's python, creating the venv and installing pycocoevalcap when it is missing."""
    return reference_venv.ensure_venv(venv, PEER_PINS, "import pycocoevalcap.cider.cider, pycocoevalcap.meteor.meteor")


def run_reference(data: dict[str, dict], venv: Path = DEFAULT_VENV) -> dict:
    """pycocoevalcap's scores and tokenised captions for ``data`` (see ``caption_set``)."""
    py = ensure_venv(venv)
    with tempfile.TemporaryDirectory() as tmp:
        in_path, out_path = Path(tmp) / "in.json", Path(tmp) / "out.json"
        in_path.write_text(json.dumps(data))
        proc = subprocess.run([str(py), str(Path(__file__).resolve()), "--_peer", str(in_path), str(out_path)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"pycocoevalcap failed: {proc.stderr.strip()[-2000:]}")
        return json.loads(out_path.read_text())


def run_ours(data: dict[str, dict], venv: Path = DEFAULT_VENV) -> dict:
    from vlforge.components.evaluation.metrics.captioning import caption_metrics, meteor_jar, ptb_tokenize

    jars = sorted(venv.glob("lib/python*/site-packages/pycocoevalcap/meteor/meteor-1.5.jar"))
    jar = jars[0] if jars else meteor_jar()
    keys = list(data)
    start = time.perf_counter()
    scores, _ = caption_metrics([data[k]["candidate"] for k in keys], [data[k]["references"] for k in keys], jar)
    seconds = time.perf_counter() - start
    tokenized = {"gts": {k: [ptb_tokenize(r) for r in data[k]["references"]] for k in keys},
                 "res": {k: [ptb_tokenize(data[k]["candidate"])] for k in keys}}
    return {"scores": scores, "tokenized": tokenized, "seconds": seconds}


def compare(ours: dict, ref: dict) -> dict:
    """Per-metric |ours - reference|, and the captions our tokenizer splits differently."""
    diffs = {m: abs(ours["scores"][m] - ref["scores"][m]) for m in METRICS if m in ours["scores"]}
    token_mismatches = [(side, k, i, a, b) for side in ("gts", "res") for k in ref["tokenized"][side]
                        for i, (a, b) in enumerate(zip(ours["tokenized"][side][k], ref["tokenized"][side][k]))
                        if a != b]
    return {"diff": diffs, "max_abs_diff": max(diffs.values()), "token_mismatches": token_mismatches}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1580, help="emoji to use (1,580: all of them)")
    parser.add_argument("--venv", default=str(DEFAULT_VENV))
    parser.add_argument("--out", default=str(REPO / "bench" / "results"))
    parser.add_argument("--setup-only", action="store_true", help="create the reference venv if missing, then exit")
    parser.add_argument("--_peer", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._peer:
        peer(Path(args._peer[0]), Path(args._peer[1]))
        return
    venv = Path(args.venv).resolve()
    if args.setup_only:
        ensure_venv(venv)
        return
    data = caption_set(emoji_rows(), args.images)
    start = time.perf_counter()
    ref = run_reference(data, venv)
    ref_seconds = time.perf_counter() - start
    ours = run_ours(data, venv)
    cmp = compare(ours, ref)
    print(f"{len(data)} images, {sum(len(v['references']) for v in data.values())} references\n")
    print("| metric | vlforge | pycocoevalcap | abs diff |\n|---|---|---|---|")
    for m in METRICS:
        if m in ours["scores"]:
            print(f"| {m} | {ours['scores'][m]:.6f} | {ref['scores'][m]:.6f} | {cmp['diff'][m]:.1e} |")
    print(f"\nmax abs diff {cmp['max_abs_diff']:.2e} (aim <= {TOLERANCE}); captions tokenised differently: "
          f"{len(cmp['token_mismatches'])}")
    for side, key, i, a, b in cmp["token_mismatches"][:10]:
        print(f"  {side} {key}[{i}]: ours {a!r} vs reference {b!r}")
    result = {"images": len(data), "references": sum(len(v["references"]) for v in data.values()),
              "vlforge": ours["scores"], "pycocoevalcap": ref["scores"], "abs_diff": cmp["diff"],
              "max_abs_diff": cmp["max_abs_diff"], "tolerance": TOLERANCE,
              "within_tolerance": cmp["max_abs_diff"] <= TOLERANCE, "token_mismatches": cmp["token_mismatches"],
              "seconds": {"vlforge": ours["seconds"], "pycocoevalcap_total": ref_seconds},
              "peer": {"venv": str(venv), "pins": PEER_PINS}}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "caption-reference.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
