"""Evaluation: batched adaptation heads, fixed seeded test episodes, and a Python API for new tasks.

    import fsmtl.eval as fe
    run = fe.load_run("runs/mini5", checkpoint="best", device="cpu")
    feats = run.embed(images_uint8_nhwc)            # float32 [N, D]
    pred = fe.adapt(support_feats, support_labels, query_feats, head="logreg")
"""

from fsmtl.eval.config import EvalConfig
from fsmtl.models.heads import HEAD_NAMES, adapt, adapt_scores, fit_logreg, fit_predict_logreg, svm_logits
from fsmtl.train.protocol import evaluate_backbone, evaluate_features
from fsmtl.eval.run import Run, load_run

__all__ = [
    "EvalConfig", "HEAD_NAMES", "Run", "adapt", "adapt_scores", "evaluate_backbone", "evaluate_features",
    "fit_logreg", "fit_predict_logreg", "load_run", "svm_logits",
]
