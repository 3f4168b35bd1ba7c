"""proto, ridge and svm heads against straightforward references; adapt's input checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import Ridge
from sklearn.preprocessing import normalize
from sklearn.svm import LinearSVC

from fsmtl.models.heads import adapt, adapt_scores, svm_logits
from fsmtl.models.heads.svm import project_scaled_simplex
from fsmtl.core.errors import FsmtlError


def _tasks(n_tasks=30, ways=5, shots=5, queries=6, dim=32, spread=1.5, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(n_tasks, ways, 1, dim, generator=g, dtype=torch.float64)
    x = centers + spread * torch.randn(n_tasks, ways, shots + queries, dim, generator=g, dtype=torch.float64)
    support = x[:, :, :shots].reshape(n_tasks, ways * shots, dim)
    query = x[:, :, shots:].reshape(n_tasks, ways * queries, dim)
    # shuffle the support order so heads cannot rely on class-major layout
    perm = torch.randperm(ways * shots, generator=g)
    labels = torch.arange(ways).repeat_interleave(shots)[perm].expand(n_tasks, -1).contiguous()
    return support[:, perm], labels, query


def test_proto_cosine_picks_the_most_similar_normalised_centroid():
    support, labels, query = _tasks()
    pred = adapt(support, labels, query, head="proto")
    for t in range(support.shape[0]):
        s, q = normalize(support[t].numpy()), normalize(query[t].numpy())
        cents = np.stack([s[labels[t].numpy() == c].mean(0) for c in range(5)])
        ref = (q @ normalize(cents).T).argmax(1)
        np.testing.assert_array_equal(pred[t].numpy(), ref)


def test_proto_euclidean_picks_the_nearest_centroid():
    support, labels, query = _tasks(seed=1)
    pred = adapt(support, labels, query, head="proto_euclidean", normalize=False)
    for t in range(support.shape[0]):
        s, q = support[t].numpy(), query[t].numpy()
        cents = np.stack([s[labels[t].numpy() == c].mean(0) for c in range(5)])
        dist = ((q[:, None, :] - cents[None]) ** 2).sum(-1)
        np.testing.assert_array_equal(pred[t].numpy(), dist.argmin(1))


@pytest.mark.parametrize("lam", [0.1, 1.0, 10.0])
def test_ridge_scores_equal_sklearn_ridge_to_one_hot_targets(lam):
    support, labels, query = _tasks(n_tasks=10, seed=2)
    scores = adapt_scores(support, labels, query, head="ridge", lam=lam)
    for t in range(10):
        y = np.eye(5)[labels[t].numpy()]
        ref = Ridge(alpha=lam, fit_intercept=False).fit(normalize(support[t].numpy()), y)
        np.testing.assert_allclose(scores[t].numpy(), ref.predict(normalize(query[t].numpy())), atol=1e-8)


@pytest.mark.parametrize("C", [0.1, 1.0])
def test_svm_matches_liblinear_crammer_singer_weights_and_predictions(C):
    support, labels, query = _tasks(n_tasks=20, dim=48, seed=3)
    s, q = support / support.norm(dim=-1, keepdim=True), query / query.norm(dim=-1, keepdim=True)
    pred = adapt(support, labels, query, head="svm", C=C, iters=500)
    for t in range(20):
        ref = LinearSVC(C=C, multi_class="crammer_singer", fit_intercept=False, tol=1e-8, max_iter=100000)
        ref.fit(s[t].numpy(), labels[t].numpy())
        np.testing.assert_array_equal(pred[t].numpy(), ref.predict(q[t].numpy()))
        scores = svm_logits(s[t : t + 1], labels[t : t + 1], q[t : t + 1], C=C, iters=500)[0]
        np.testing.assert_allclose(scores.numpy(), ref.decision_function(q[t].numpy()), atol=1e-5)


def test_svm_logits_are_differentiable_with_respect_to_the_features():
    support, labels, query = _tasks(n_tasks=3, dim=8, seed=4)
    s = support.clone().requires_grad_(True)
    q = query.clone().requires_grad_(True)
    logits = svm_logits(s, labels, q, C=0.5, iters=50)
    torch.nn.functional.cross_entropy(logits.reshape(-1, 5), torch.arange(5).repeat_interleave(6).repeat(3)).backward()
    assert s.grad is not None and q.grad is not None
    assert torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0 and q.grad.abs().sum() > 0


def test_simplex_projection_is_feasible_and_closest():
    v = torch.randn(200, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(5)) * 3
    u = project_scaled_simplex(v, 2.0)
    assert (u >= 0).all()
    torch.testing.assert_close(u.sum(-1), torch.full((200,), 2.0, dtype=torch.float64))
    # optimality: no feasible random point is closer
    other = torch.distributions.Dirichlet(torch.ones(5, dtype=torch.float64)).sample((200,)) * 2.0
    assert ((v - u).norm(dim=-1) <= (v - other).norm(dim=-1) + 1e-12).all()


@pytest.mark.parametrize("head", ["logreg", "proto", "proto_euclidean", "ridge", "svm"])
def test_every_head_accepts_one_task_or_a_batch_and_returns_labels(head):
    support, labels, query = _tasks(n_tasks=4, seed=6)
    batch = adapt(support, labels, query, head=head)
    one = adapt(support[2], labels[2], query[2], head=head)
    assert batch.dtype == torch.int64 and batch.shape == (4, 30) and one.shape == (30,)
    torch.testing.assert_close(batch[2], one)
    assert (batch >= 0).all() and (batch < 5).all()


def test_adapt_raises_when_a_class_has_no_support_example():
    support, labels, query = _tasks(n_tasks=2, seed=7)
    labels = labels.clone()
    labels[1][labels[1] == 3] = 2
    with pytest.raises(FsmtlError, match="task 1 has no support example of class 3"):
        adapt(support, labels, query, ways=5)


def test_adapt_raises_when_labels_are_outside_zero_to_ways_minus_one():
    support, labels, query = _tasks(n_tasks=2, seed=8)
    with pytest.raises(FsmtlError, match="in 0..3"):
        adapt(support, labels, query, ways=4)
    with pytest.raises(FsmtlError, match="got values in -1..3"):
        adapt(support, labels - 1, query)


@pytest.mark.parametrize(
    "mutate,match",
    [
        (lambda s, y, q: (s.long(), y, q), "floating point"),
        (lambda s, y, q: (s, y.float(), q), "integers"),
        (lambda s, y, q: (s, y[:, :-1], q), "labels must be"),
        (lambda s, y, q: (s, y, q[..., :-1]), "query must be"),
        (lambda s, y, q: (s[0], y, q), "one task needs"),
        (lambda s, y, q: (s[None], y, q), "batch of tasks needs"),
        (lambda s, y, q: (s.clone().fill_(float("nan")), y, q), "NaN"),
    ],
    ids=["int-features", "float-labels", "label-count", "query-dim", "rank-mix", "rank-4", "nan"],
)
def test_adapt_raises_a_clear_error_for_bad_dtypes_and_shapes(mutate, match):
    support, labels, query = _tasks(n_tasks=2, seed=9)
    with pytest.raises(FsmtlError, match=match):
        adapt(*mutate(support, labels, query))


def test_adapt_rejects_unknown_heads_and_options():
    support, labels, query = _tasks(n_tasks=1, seed=10)
    with pytest.raises(FsmtlError, match="expected one of"):
        adapt(support, labels, query, head="knn")
    with pytest.raises(FsmtlError, match="unknown option"):
        adapt(support, labels, query, head="logreg", lam=1.0)


@pytest.mark.parametrize("head,options", [("logreg", {"C": 0.0}), ("logreg", {"C": -1.0}), ("ridge", {"lam": -1.0}),
                                          ("svm", {"iters": 0}), ("logreg", {"max_iter": 2.5})])
def test_adapt_rejects_options_out_of_range(head, options):
    support, labels, query = _tasks(n_tasks=1, seed=11)
    with pytest.raises(FsmtlError, match=f"head {head}: {next(iter(options))} must be"):
        adapt(support, labels, query, head=head, **options)
    with pytest.raises(FsmtlError, match="ways must be an int"):
        adapt(support, labels, query, head=head, ways=5.0)


def test_every_feature_head_accepts_features_that_require_grad():
    support, labels, query = _tasks(n_tasks=2, seed=12)
    s, q = support.clone().requires_grad_(True), query.clone().requires_grad_(True)
    for head in ("logreg", "proto", "proto_euclidean", "ridge", "svm"):
        assert torch.equal(adapt(s, labels, q, head=head), adapt(support, labels, query, head=head)), head


def test_fit_logreg_names_what_it_takes_when_given_numpy():
    from fsmtl.models.heads import fit_logreg

    support, labels, _ = _tasks(n_tasks=1, seed=13)
    with pytest.raises(FsmtlError, match="expected torch tensors"):
        fit_logreg(support.numpy(), labels.numpy(), 5)
