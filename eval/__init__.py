"""Evaluation: batched adaptation heads, fixed seeded test episodes, and a Python API for new tasks.

    import eval
    run = eval.load_run("runs/mini5", checkpoint="best", device="cpu")
    feats = run.embed(images_uint8_nhwc)            # float32 [N, D]
    pred = eval.adapt(support_feats, support_labels, query_feats, head="logreg")
"""

from eval.config import EvalConfig
from eval.heads import HEAD_NAMES, adapt, adapt_scores, fit_logreg, fit_predict_logreg, svm_logits
from eval.protocol import evaluate_backbone, evaluate_features
from eval.run import Run, load_run

__all__ = [
    "EvalConfig", "HEAD_NAMES", "Run", "adapt", "adapt_scores", "evaluate_backbone", "evaluate_features",
    "fit_logreg", "fit_predict_logreg", "load_run", "svm_logits",
]
