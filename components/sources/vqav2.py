"""VQAv2 (Goyal et al., "Making the V in VQA Matter", CVPR 2017) questions and annotations as a source: one sample
per image, carrying its questions with their ten human answers, for the official VQA accuracy
(``components/evaluation/vqa.py``, ``metrics.vqa``).

    vlforge run ingest --source vqav2:v2_OpenEnded_mscoco_val2014_questions.json,v2_mscoco_val2014_annotations.json \\
        --images val2014/

The questions file is ``{"data_subtype": "val2014", "questions": [{"image_id", "question", "question_id"}]}``, the
annotations file ``{"annotations": [{"question_id", "image_id", "answers": [{"answer", ...}] * 10,
"multiple_choice_answer", "answer_type", "question_type"}]}``; every question must have exactly one annotation
about the same image. An image is the file under ``--images`` (default: the questions file's folder) whose name
ends in its id (COCO's ``COCO_val2014_000000262148.jpg``). The split is the questions' ``data_subtype``
(``train2014`` -> train, ``val2014`` -> validation, ``test*`` -> test)."""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

from vlforge.components.sources.tables import IMAGE_SUFFIXES, SourceRows, local_image_rows, read_json_file

from vlforge.errors import UserError

SHOWN = 3


def split_of_subtype(subtype: str) -> str | None:
    for prefix, split in (("train", "train"), ("val", "validation"), ("test", "test")):
        if subtype.lower().startswith(prefix):
            return split
    return None


def parse_spec(path: str) -> tuple[Path, Path]:
    parts = [p.strip() for p in path.split(",")]
    if len(parts) != 2 or not all(parts):
        raise UserError(f"vqav2 source '{path}' must be QUESTIONS.json,ANNOTATIONS.json")
    return Path(parts[0]).expanduser(), Path(parts[1]).expanduser()


def images_by_id(root: Path) -> dict[int, Path]:
    """Image files under ``root`` by the number their name ends in (the first file in sorted order wins)."""
    if not root.is_dir():
        raise UserError(f"vqav2 image folder '{root}' does not exist")
    found: dict[int, Path] = {}
    for p in sorted(root.rglob("*")):
        m = re.search(r"(\d+)$", p.stem)
        if m and p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
            found.setdefault(int(m.group(1)), p)
    return found


def _listed(ids: list, what: str) -> str:
    return f"{len(ids)} {what} ({', '.join(map(str, ids[:SHOWN]))}{', ...' if len(ids) > SHOWN else ''})"


def load_vqav2(spec_path: str, images: Path | None = None) -> SourceRows:
    qpath, apath = parse_spec(spec_path)
    qdata, adata = read_json_file(qpath, "vqav2 questions"), read_json_file(apath, "vqav2 annotations")
    questions = qdata.get("questions") if isinstance(qdata, dict) else None
    annotations = adata.get("annotations") if isinstance(adata, dict) else None
    if not isinstance(questions, list) or not questions:
        raise UserError(f"vqav2 questions '{qpath}' has no 'questions' list")
    if not isinstance(annotations, list) or not annotations:
        raise UserError(f"vqav2 annotations '{apath}' has no 'annotations' list")
    by_id = {a.get("question_id"): a for a in annotations}
    unanswered = [q.get("question_id") for q in questions if q.get("question_id") not in by_id]
    asked = {q.get("question_id") for q in questions}
    unasked = [a.get("question_id") for a in annotations if a.get("question_id") not in asked]
    other_image = [q.get("question_id") for q in questions
                   if q.get("question_id") in by_id and by_id[q["question_id"]].get("image_id") != q.get("image_id")]
    problems = [_listed(ids, what) for ids, what in ((unanswered, "questions without an annotation"),
                                                     (unasked, "annotations of no question"),
                                                     (other_image, "annotations about another image than their question"))
                if ids]
    if problems:
        raise UserError(f"vqav2 annotations '{apath}' do not match questions '{qpath}': {'; '.join(problems)}")
    root = (images or qpath.parent).expanduser()
    files = images_by_id(root)
    per_image: dict[int, list[dict]] = {}
    for q in questions:
        a = by_id[q["question_id"]]
        answers = [str(x.get("answer", "")) for x in a.get("answers") or []]
        if not answers:
            raise UserError(f"vqav2 annotations '{apath}' question {q['question_id']} has no answers")
        per_image.setdefault(q["image_id"], []).append({
            "question_id": q["question_id"], "question": str(q.get("question", "")), "answers": answers,
            "answer_type": a.get("answer_type", ""), "question_type": a.get("question_type", ""),
            "multiple_choice_answer": a.get("multiple_choice_answer", "")})
    missing = sorted(i for i in per_image if i not in files)
    if missing:
        raise UserError(f"vqav2 source '{spec_path}': {_listed(missing, 'images')} of {len(per_image)} are missing "
                        f"under '{root}'")
    split = split_of_subtype(str(qdata.get("data_subtype", "")))
    ids = sorted(per_image)
    extras = [{"vqa": per_image[i], "image_id": i, **({"split": split} if split else {})} for i in ids]
    salt = hashlib.sha256(qpath.read_bytes() + b"\0" + apath.read_bytes()).hexdigest()
    return local_image_rows([files[i] for i in ids], [""] * len(ids), [files[i].relative_to(root).as_posix() for i in ids],
                            {"kind": "vqav2", "path": spec_path, "images": str(root), "questions": len(questions)},
                            extras=extras, salt=salt)
