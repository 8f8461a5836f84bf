"""Benchmark layouts written by the tests from the real emoji-noto data (imported by the source tests): a
Karpathy file (an emoji's name and its keywords as two captions), class folders by emoji category, and small
VQAv2 / NLVR2 / GLUE files."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq

KARPATHY_SPLITS = ("train", "restval", "val", "test")


def emoji_rows(emoji_dir: Path, n: int) -> list[dict]:
    """The first ``n`` emoji rows (key, path, caption, keywords, category), in the table's order."""
    return pq.read_table(emoji_dir / "pairs.parquet").slice(0, n).to_pylist()


def write_karpathy(emoji_dir: Path, out: Path, n: int = 12) -> Path:
    """``out/dataset_emoji.json`` in the Karpathy layout, images under ``out/images/`` (its ``filepath``); the
    splits cycle train, restval, val, test."""
    (out / "images").mkdir(parents=True, exist_ok=True)
    entries = []
    for i, row in enumerate(emoji_rows(emoji_dir, n)):
        name = Path(row["path"]).name
        shutil.copyfile(emoji_dir / row["path"], out / "images" / name)
        entries.append({"filepath": "images", "filename": name, "imgid": i, "split": KARPATHY_SPLITS[i % 4],
                        "sentences": [{"raw": row["caption"], "tokens": row["caption"].split()},
                                      {"raw": row["keywords"], "tokens": row["keywords"].split()}]})
    path = out / "dataset_emoji.json"
    path.write_text(json.dumps({"dataset": "emoji", "images": entries}))
    return path


def write_class_folders(emoji_dir: Path, out: Path, per_class: int = 3, classes: int = 9,
                        splits: tuple[str, ...] = ()) -> Path:
    """``out/<category>/<emoji>.png`` (spaces and ``&`` as ``_``): the first ``per_class`` emoji of each of the
    first ``classes`` categories by name; with ``splits``, under ``out/<split>/<category>/`` round robin."""
    rows = pq.read_table(emoji_dir / "pairs.parquet").to_pylist()
    by_category: dict[str, list[dict]] = {}
    for row in rows:
        by_category.setdefault(row["category"], []).append(row)
    for category in sorted(by_category)[:classes]:
        folder_name = category.replace(" & ", "_and_").replace(" ", "_")
        for i, row in enumerate(by_category[category][:per_class]):
            folder = out / (splits[i % len(splits)] if splits else "") / folder_name
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(emoji_dir / row["path"], folder / Path(row["path"]).name)
    return out


def write_vqav2(emoji_dir: Path, out: Path, n: int = 4) -> tuple[Path, Path, Path]:
    """``(questions, annotations, images)``: two questions per emoji image (its category, yes/no on flags) with
    ten answers each, images named as COCO's ``COCO_val2014_<id:012d>.png``."""
    images = out / "val2014"
    images.mkdir(parents=True, exist_ok=True)
    questions, annotations = [], []
    for i, row in enumerate(emoji_rows(emoji_dir, n)):
        image_id = 1000 + i
        shutil.copyfile(emoji_dir / row["path"], images / f"COCO_val2014_{image_id:012d}.png")
        asked = [("what group is this emoji in?", row["category"].lower(), "other"),
                 ("is this a flag?", "yes" if row["category"] == "Flags" else "no", "yes/no")]
        for k, (question, answer, answer_type) in enumerate(asked):
            qid = image_id * 10 + k
            questions.append({"image_id": image_id, "question": question, "question_id": qid})
            answers = [answer] * 7 + ["unsure"] * 3
            annotations.append({"question_id": qid, "image_id": image_id, "answer_type": answer_type,
                                "question_type": question.split()[0], "multiple_choice_answer": answer,
                                "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": j + 1}
                                            for j, a in enumerate(answers)]})
    qpath, apath = out / "questions.json", out / "annotations.json"
    qpath.write_text(json.dumps({"data_subtype": "val2014", "questions": questions}))
    apath.write_text(json.dumps({"annotations": annotations}))
    return qpath, apath, images


def write_glue_mrpc(emoji_dir: Path, out: Path, n: int = 24) -> Path:
    """``out/MRPC/{train,dev}.tsv`` in MRPC's layout: an emoji's name and keywords as the pair, ``Quality`` 1 when
    both are the same emoji's, 0 when the keywords are the next emoji's; every fourth pair goes to dev."""
    rows = emoji_rows(emoji_dir, n + 1)
    folder = out / "MRPC"
    folder.mkdir(parents=True, exist_ok=True)
    lines: dict[str, list[str]] = {"train": [], "dev": []}
    for i in range(n):
        same = i % 2 == 0
        other = rows[i] if same else rows[i + 1]
        lines["dev" if i % 4 == 3 else "train"].append(f"{int(same)}\t{2 * i}\t{2 * i + 1}\t{rows[i]['caption']}\t{other['keywords']}")
    for split, body in lines.items():
        (folder / f"{split}.tsv").write_text("Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n" + "\n".join(body) + "\n")
    return folder


STSB_HEADER = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"


def write_glue_stsb(emoji_dir: Path, out: Path, n: int = 24) -> Path:
    """``out/STS-B/{train,dev}.tsv`` in STS-B's layout: an emoji's name and its own keywords scored ``4.000`` +
    0.2 * (i % 5), with the next emoji's keywords ``0.250`` + 0.2 * (i % 5), written with three decimals as STS-B
    writes them; every fourth pair goes to dev."""
    rows = emoji_rows(emoji_dir, n + 1)
    folder = out / "STS-B"
    folder.mkdir(parents=True, exist_ok=True)
    lines: dict[str, list[str]] = {"train": [], "dev": []}
    for i in range(n):
        same = i % 2 == 0
        other = rows[i] if same else rows[i + 1]
        score = (4.0 if same else 0.25) + 0.2 * (i % 5)
        split = "dev" if i % 4 == 3 else "train"
        lines[split].append(f"{len(lines[split])}\tmain-captions\tMSRvid\t2012test\t{i:04d}\tnone\tnone\t"
                            f"{rows[i]['caption']}\t{other['keywords']}\t{score:.3f}")
    for split, body in lines.items():
        (folder / f"{split}.tsv").write_text(STSB_HEADER + "\n".join(body) + "\n")
    return folder


def write_nlvr2(emoji_dir: Path, out: Path, pairs: int = 3, split: str = "dev", first: int = 0) -> tuple[Path, Path]:
    """``(<split>.json, images)``: NLVR2 JSON lines about pairs of emoji (set 7, pair k: emoji first + 2k left,
    first + 2k + 1 right), two statements a pair (sentence 0: "both emoji are <category of the left>", sentence 1:
    "one emoji is <name of the left>", always true), images ``<split>-7-k-img0.png`` / ``-img1.png`` under
    ``out/<split>/``."""
    images = out / split
    images.mkdir(parents=True, exist_ok=True)
    rows = emoji_rows(emoji_dir, first + 2 * pairs)[first:]
    lines = []
    for k in range(pairs):
        left, right = rows[2 * k], rows[2 * k + 1]
        for side, row in ((0, left), (1, right)):
            shutil.copyfile(emoji_dir / row["path"], images / f"{split}-7-{k}-img{side}.png")
        lines.append({"identifier": f"{split}-7-{k}-0", "sentence": f"both emoji are {left['category']}",
                      "label": str(left["category"] == right["category"])})
        lines.append({"identifier": f"{split}-7-{k}-1", "sentence": f"one emoji is {left['caption']}", "label": "True"})
    path = out / f"{split}.json"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path, images


def write_wds(emoji_dir: Path, out: Path, per_tar: int = 3, names: tuple[str, ...] = ("00000", "00001"),
              sidecars: bool = True) -> Path:
    """img2dataset-style shards ``out/<name>.tar`` of emoji (``NNNN.jpg``... here ``.png``, ``.txt``, ``.json``
    with the url and a DataComp-style ``uid``) and, with ``sidecars``, each tar's parquet with a CLIP-score column."""
    import io
    import tarfile

    import pyarrow as pa

    out.mkdir(parents=True, exist_ok=True)
    rows = emoji_rows(emoji_dir, per_tar * len(names))
    for t, name in enumerate(names):
        sidecar = []
        with tarfile.open(out / f"{name}.tar", "w") as tar:
            for j in range(per_tar):
                row = rows[t * per_tar + j]
                key = f"{t:05d}{j:04d}"
                meta = {"url": f"https://example.test/{row['key']}.png", "key": key, "status": "success",
                        "uid": f"uid-{row['key']}", "caption": row["caption"]}
                for ext, data in (("png", (emoji_dir / row["path"]).read_bytes()), ("txt", row["caption"].encode()),
                                  ("json", json.dumps(meta).encode())):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
                sidecar.append({"key": key, "status": "success", "clip_score": 0.25 + j / 10, "licence": "apache-2.0"})
        if sidecars:
            pq.write_table(pa.Table.from_pylist(sidecar), out / f"{name}.parquet")
    return out


def write_parquet_images(emoji_dir: Path, path: Path, n: int = 4, binary: bool = False) -> Path:
    """A hub-style parquet of emoji: ``image`` as a struct {bytes, path} (or plain binary), ``text``, ``category``."""
    import pyarrow as pa

    rows = emoji_rows(emoji_dir, n)
    images = [(emoji_dir / r["path"]).read_bytes() for r in rows]
    image_col = pa.array(images, pa.binary()) if binary else pa.array(
        [{"bytes": b, "path": Path(r["path"]).name} for b, r in zip(images, rows)],
        pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    table = pa.table({"image": image_col, "text": [r["caption"] for r in rows], "category": [r["category"] for r in rows]})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path
