"""Evaluation metrics as their reference implementations define them: plain typed functions, no model, no I/O
(except the two small file readers in ``zeroshot``).

* ``retrieval``: image->text and text->image recall@k with several captions per image
  (``zeroshot_retrieval_metrics``), as LAION-AI/CLIP_benchmark ``clip_benchmark/metrics/zeroshot_retrieval.py``:
  an image hits at k when any of its captions is in its top k, a caption when its image is in its top k,
  top k by ``torch.topk``; k larger than the candidates is clipped (the reference raises).
* ``zeroshot``: zero-shot classification (``classifier_weights``, ``zeroshot_logits``, ``topk_accuracy``,
  ``mean_per_class_recall``, ``zeroshot_classification_metrics``) as LAION-AI/CLIP_benchmark
  ``clip_benchmark/metrics/zeroshot_classification.py``: template-ensembled class weights, acc1/acc5 from one
  ``torch.topk``, mean per-class recall as scikit-learn's balanced accuracy; acc5 clips k to the number of
  classes (the reference reports nan below 5). Also ``read_templates`` / ``read_classnames``.
* ``vqa``: VQAv2 accuracy (``normalize_answer``, ``vqa_accuracy``, ``vqa_score``) as GT-Vision-Lab/VQA
  ``PythonEvaluationTools/vqaEvaluation/vqaEval.py``: its answer normalisation and the average over the
  leave-one-annotator-out subsets of min(#matches / 3, 1).
* ``captioning``: COCO caption metrics (``ptb_tokenize``, ``bleu_scores``, ``rouge_l``, ``cider_d``, ``meteor``,
  ``caption_metrics``) as pycocoevalcap 1.2 computes them: its PTB tokenisation restated in Python, BLEU-1..4
  (option 'closest'), ROUGE-L (beta 1.2), CIDEr-D (sigma 6, idf from the evaluated references); METEOR only
  through pycocoevalcap's own jar (``meteor_jar``).
* ``glue``: each GLUE task's metric (``glue_metrics``) with the keys of huggingface/evaluate
  ``metrics/glue/glue.py``: Matthews correlation (cola), accuracy, F1 + accuracy (mrpc, qqp), Pearson +
  Spearman (stsb), in numpy to match scikit-learn / SciPy."""
from vlforge.components.evaluation.metrics.captioning import (
    bleu_scores,
    caption_metrics,
    cider_d,
    meteor,
    meteor_jar,
    ptb_tokenize,
    rouge_l,
)
from vlforge.components.evaluation.metrics.glue import glue_metrics
from vlforge.components.evaluation.metrics.retrieval import zeroshot_retrieval_metrics
from vlforge.components.evaluation.metrics.vqa import normalize_answer, vqa_accuracy, vqa_score
from vlforge.components.evaluation.metrics.zeroshot import (
    classifier_weights,
    mean_per_class_recall,
    read_classnames,
    read_templates,
    topk_accuracy,
    zeroshot_classification_metrics,
    zeroshot_logits,
)

__all__ = [
    "bleu_scores",
    "caption_metrics",
    "cider_d",
    "classifier_weights",
    "glue_metrics",
    "mean_per_class_recall",
    "meteor",
    "meteor_jar",
    "normalize_answer",
    "ptb_tokenize",
    "read_classnames",
    "read_templates",
    "rouge_l",
    "topk_accuracy",
    "vqa_accuracy",
    "vqa_score",
    "zeroshot_classification_metrics",
    "zeroshot_logits",
    "zeroshot_retrieval_metrics",
]
