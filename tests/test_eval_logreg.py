"""The batched logistic-regression head against real scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import normalize

from fsmtl.models.heads import adapt, fit_logreg, logreg_logits


def _tasks(n_tasks: int, ways: int, shots: int, queries: int, dim: int, spread: float, seed: int):
    """Clustered features (spread = within-class noise; large spread ~ random features)."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(n_tasks, ways, 1, dim, generator=g, dtype=torch.float64)
    x = centers + spread * torch.randn(n_tasks, ways, shots + queries, dim, generator=g, dtype=torch.float64)
    support = x[:, :, :shots].reshape(n_tasks, ways * shots, dim)
    query = x[:, :, shots:].reshape(n_tasks, ways * queries, dim)
    labels = torch.arange(ways).repeat_interleave(shots).expand(n_tasks, -1).contiguous()
    return support, labels, query


def _sklearn(support, labels, query, C=3.0, tol=1e-4):
    """The seed's per-task loop: L2-normalise, fit LogisticRegression(C, lbfgs, max_iter=1000), predict."""
    preds, coefs, intercepts = [], [], []
    for s, y, q in zip(support.numpy(), labels.numpy(), query.numpy()):
        clf = LogisticRegression(C=C, solver="lbfgs", max_iter=1000, tol=tol).fit(normalize(s), y)
        preds.append(clf.predict(normalize(q)))
        coefs.append(clf.coef_)
        intercepts.append(clf.intercept_)
    return np.stack(preds), np.stack(coefs), np.stack(intercepts)


@pytest.mark.parametrize(
    "shots,spread,dim",
    [(5, 2.0, 640), (1, 2.0, 640), (5, 30.0, 64), (1, 30.0, 64)],
    ids=["clustered-5shot", "clustered-1shot", "random-5shot", "random-1shot"],
)
def test_logreg_predicts_like_sklearn_on_at_least_99_5_percent_of_queries(shots, spread, dim):
    support, labels, query = _tasks(150, 5, shots, 15, dim, spread, seed=shots + int(spread))
    ours = adapt(support, labels, query, head="logreg").numpy()
    theirs, _, _ = _sklearn(support, labels, query)
    assert (ours == theirs).mean() >= 0.995


def test_logreg_coefficients_match_sklearn_tightly_solved():
    support, labels, query = _tasks(60, 5, 5, 15, 128, 1.5, seed=3)
    fit = fit_logreg(support, labels, 5, C=3.0)
    assert bool(fit.converged.all())
    _, coef, intercept = _sklearn(support, labels, query, tol=1e-10)
    np.testing.assert_allclose(fit.coef.numpy(), coef, atol=2e-5)
    np.testing.assert_allclose(fit.intercept.numpy(), intercept, atol=2e-5)


def test_logreg_coefficients_close_to_sklearn_defaults_and_other_C():
    support, labels, query = _tasks(40, 4, 3, 5, 40, 3.0, seed=4)
    fit = fit_logreg(support, labels, 4, C=0.5)
    _, coef, intercept = _sklearn(support, labels, query, C=0.5)
    np.testing.assert_allclose(fit.coef.numpy(), coef, atol=1e-3)
    np.testing.assert_allclose(fit.intercept.numpy(), intercept, atol=1e-3)


def test_logreg_float32_features_give_the_float64_predictions():
    support, labels, query = _tasks(100, 5, 5, 15, 256, 2.0, seed=5)
    p64 = adapt(support, labels, query)
    p32 = adapt(support.float(), labels, query.float())
    assert (p64 == p32).double().mean() >= 0.999


@pytest.mark.parametrize("dim", [8, 64], ids=["more-points-than-dims", "fewer-points-than-dims"])
def test_logreg_handles_repeated_support_points(dim):
    # 25 points in 8 dims take the thin (primal) factor; in 64 dims the Gram's, here singular
    # (the exact duplicate), so eigen-factored
    support, labels, query = _tasks(30, 5, 5, 5, dim, 1.0, seed=6)
    support[:, 1] = support[:, 0]  # an exact duplicate
    fit = fit_logreg(support, labels, 5)
    assert bool(fit.converged.all())
    _, coef, intercept = _sklearn(support, labels, query, tol=1e-10)
    np.testing.assert_allclose(fit.coef.numpy(), coef, atol=1e-4)
    np.testing.assert_allclose(fit.intercept.numpy(), intercept, atol=1e-4)


def test_logreg_many_classes_with_more_points_than_dims_match_sklearn():
    # 40 classes x 5 shots = 200 points in 24 dims: the thin (primal) factor, as symmetry classes use
    support, labels, query = _tasks(6, 40, 5, 2, 24, 0.8, seed=10)
    fit = fit_logreg(support.float(), labels, 40, C=10.0)
    assert bool(fit.converged.all()) and fit.coef.dtype == torch.float32
    preds, coef, intercept = _sklearn(support, labels, query, C=10.0, tol=1e-10)
    np.testing.assert_allclose(fit.coef.numpy(), coef, atol=2e-4)
    np.testing.assert_allclose(fit.intercept.numpy(), intercept, atol=2e-4)
    assert (logreg_logits(fit, query.float()).argmax(-1).numpy() == preds).mean() >= 0.99


def test_logreg_scores_of_one_task_equal_its_scores_in_a_batch():
    support, labels, query = _tasks(7, 3, 2, 4, 16, 1.0, seed=7)
    batch = logreg_logits(fit_logreg(support, labels, 3), query)
    single = logreg_logits(fit_logreg(support[4:5], labels[4:5], 3), query[4:5])
    torch.testing.assert_close(batch[4:5], single, atol=1e-6, rtol=0)  # both within tol of the optimum
    assert adapt(support[4], labels[4], query[4]).shape == (12,)


def test_logreg_with_unnormalised_features_matches_sklearn_without_normalising():
    support, labels, query = _tasks(8, 3, 4, 5, 10, 1.0, seed=8)
    fit = fit_logreg(support, labels, 3, normalize=False)
    for t in range(8):
        clf = LogisticRegression(C=3.0, max_iter=1000, tol=1e-10).fit(support[t].numpy(), labels[t].numpy())
        np.testing.assert_allclose(fit.coef[t].numpy(), clf.coef_, atol=1e-4)
