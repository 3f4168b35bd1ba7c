"""The seed's test head: L2-regularised multinomial logistic regression, fitted for many tasks at once.

Same optimum as ``sklearn.linear_model.LogisticRegression(C=C, solver="lbfgs")`` on L2-normalised
support features: minimise ``C * sum_i CE(W x_i + b, y_i) + 0.5 * ||W||^2`` (sklearn 1.9 divides
this by ``C * n``, which moves no optimum), intercept unpenalised, one weight row per class.

Why it is fast: an N-way K-shot task has only S = N*K support points, so the optimal W lies in
their span (the gradient of the loss does, and the penalty removes anything else). With a factor
Z [S,S] of the Gram matrix (Z Z^T = X X^T) the problem becomes an S-dimensional one for every
task (when S > D, Z is the normalised features themselves, [S,D]: the primal D-dimensional
problem, which is then the smaller one), solved by batched truncated Newton: conjugate gradients
on Hessian-vector products, in coordinates where the Hessian at the starting point is the
identity (one (min(S, D)+1)-square Cholesky factor per task, computed once; see ``_Problem``).
At the optimum the weights are W = C (Y - P)^T X (the representer theorem), so mapping back needs
no inverse. The free shift of
the intercepts (adding a constant to every b_k changes nothing) stays at sum(b) = 0, as in
sklearn's lbfgs. Features enter only through two matrix products per batch (the support Gram,
and query x W^T), in float32 on CPU (float64 when given float64, and on CUDA); the small solve
runs in float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from fsmtl.models.heads.checks import one_hot
from fsmtl.core.errors import FsmtlError


@dataclass
class LogregFit:
    """Fitted heads for T tasks: coef float [T, ways, D] (on normalised features), intercept [T, ways]."""

    coef: Tensor
    intercept: Tensor
    n_iter: int
    converged: Tensor  # bool [T]
    normalize: bool


def _gram_dtype(x: Tensor) -> torch.dtype:
    # float64 on CUDA: a run may enable TF32 matmuls (10-bit mantissa), far too coarse to match
    # sklearn; float64 throughput is ample on the GPU. CPU float32 matmuls are full IEEE float32.
    return torch.float64 if x.dtype == torch.float64 or x.device.type == "cuda" else torch.float32


def _row_norms(x: Tensor) -> Tensor:
    n = torch.linalg.vector_norm(x, dim=-1)
    return torch.where(n > 0, n, torch.ones_like(n))  # zero rows stay zero, as sklearn's normalize


def _gram_factor(k: Tensor) -> Tensor:
    """Z [T,S,S] with Z Z^T = K for PSD K [T,S,S] float64: Cholesky, eigh where Cholesky fails."""
    z, info = torch.linalg.cholesky_ex(k)
    bad = (info != 0).nonzero().flatten()
    if bad.numel():  # singular Gram (repeated points, or S > D): eigen-factor those tasks only
        evals, evecs = torch.linalg.eigh(k[bad])
        z = z.clone()
        z[bad] = evecs * evals.clamp_min(0).sqrt().unsqueeze(1)
    return z


def _thin_factor(x: Tensor, inv_norms: Tensor) -> Tensor:
    """Z [T,S,D] float64 with Z Z^T = K when S > D: the (normalised) support features themselves.

    K has rank at most D then, so this factor is thinner than a Cholesky factor [T,S,S] and the
    reduced problem is the primal one (W itself, D+1 numbers a class): its Hessian products cost
    S*D instead of S^2 a class, and its whitening Cholesky (D+1)^3 instead of (S+1)^3.
    """
    return x.to(torch.float64) * inv_norms[:, :, None]


class _Problem:
    """The reduced problem of a set of tasks, in whitened coordinates phi [T, ways, R+1], where R
    is the factor's width (S, or D for the thin factor of S > D points).

    theta (W rows in Z's basis, then b) would be the plain variables. The Hessian there is
    H = C Zt^T S Zt + D (S: the softmax curvatures diag(p) - p p^T of every point, D: the penalty,
    0 for b). Its value at the start (theta = 0, p uniform) is M = (C / ways) Zt^T Zt + D on
    class-centred matrices. With M = L L^T and phi = L^T theta, that starting Hessian is the
    identity, each Newton system near the start needs ~2 conjugate-gradient steps (far from it
    more: ~20 on real Omniglot features at C=10, 5 shots), and only Zr = Zt L^-T [T, S, R+1] is
    ever used. Iterates stay class-centred (the gradients are, and the free shift
    of the intercepts stays at 0, where sklearn's lbfgs also stays since it starts at 0), so the
    centred-subspace identities hold exactly. Class-major layouts ([T, ways, .]) give the small
    batched matmuls a wide output, which runs ~2x faster than [T, ., ways].
    """

    def __init__(self, zt: Tensor, y: Tensor, c: float) -> None:
        self.y, self.c = y, c  # y one-hot, class-major [T, ways, S]
        self.gamma = 1.0 / y.shape[1]
        r1 = zt.shape[-1]
        pen = torch.ones(r1, dtype=zt.dtype, device=zt.device)
        pen[-1] = 0.0  # the intercept is not penalised
        d = torch.diag_embed(pen).expand(zt.shape[0], r1, r1)
        m = torch.baddbmm(d, zt.transpose(1, 2), zt, alpha=c * self.gamma)
        self.l = torch.linalg.cholesky(m)  # positive definite: D covers W, the S points cover b
        # Zr^T = L^-1 Zt^T, a left-sided solve: ~2.5x faster on 2 CPU threads than the same
        # right-sided solve Zt R^-1 with R = L^T (0.9 vs 2.3 ms for 500 tasks, MKL)
        self.zr_t = torch.linalg.solve_triangular(self.l, zt.transpose(1, 2), upper=False)  # [T, S+1, S]
        self.zr = self.zr_t.transpose(1, 2).contiguous()  # [T, S, S+1]

    def subset(self, idx: Tensor) -> "_Problem":
        """The same problem restricted to tasks ``idx`` (so finished tasks stop costing work)."""
        sub = object.__new__(_Problem)
        sub.__dict__.update(self.__dict__)
        sub.y, sub.l, sub.zr, sub.zr_t = self.y[idx], self.l[idx], self.zr[idx], self.zr_t[idx]
        return sub

    def logits(self, phi: Tensor) -> Tensor:
        """Support logits f [T, ways, S]."""
        return phi @ self.zr_t

    def evaluate(self, f: Tensor, phi: Tensor) -> tuple[Tensor, Tensor]:
        """(C * sum_i CE(f_i) + 0.5 ||W||^2 [T], softmax p [T, ways, S]): one exp pass for both."""
        m = f.amax(1, keepdim=True)
        e = (f - m).exp()
        se = e.sum(1, keepdim=True)
        ce = (se.log() + m).sum((1, 2)) - (f * self.y).sum((1, 2))
        # theta^T D theta = |phi|^2 - gamma C |f|^2, since L^-1 D L^-T = I - gamma C Zr^T Zr
        pen = _dot(phi, phi) - (self.gamma * self.c) * _dot(f, f)
        return self.c * ce + 0.5 * pen, e.div_(se)

    def gradient(self, p: Tensor, f: Tensor, phi: Tensor) -> Tensor:
        return torch.baddbmm(phi, (p - self.y).sub_(f, alpha=self.gamma), self.zr, alpha=self.c)

    def theta_gradient(self, g: Tensor) -> Tensor:
        """The gradient in the plain variables (L g), for the stopping rule."""
        return g @ self.l.transpose(1, 2)

    def hvp(self, p: Tensor, v: Tensor) -> Tensor:
        u = v @ self.zr_t
        pu = p * u
        s = (u - pu.sum(1, keepdim=True)).mul_(p).sub_(u, alpha=self.gamma)  # (diag(p) - p p^T - gamma) u
        return torch.baddbmm(v, s, self.zr, alpha=self.c)


def _dot(a: Tensor, b: Tensor) -> Tensor:
    return (a * b).sum((1, 2))


def _cg(prob: _Problem, p: Tensor, g: Tensor, rtol: Tensor, max_iter: int) -> Tensor:
    """Approximately solve H d = -g per task, stopping each task at ||r|| <= rtol * ||g||."""
    d = torch.zeros_like(g)
    r = -g
    q = r
    rr = _dot(r, r)
    target = rtol.square() * rr
    tiny = torch.finfo(g.dtype).tiny
    for _ in range(max_iter):
        hq = prob.hvp(p, q)
        alpha = (rr / _dot(q, hq).clamp_min(tiny))[:, None, None]
        d = d.addcmul_(alpha, q)
        r = torch.addcmul(r, alpha, hq, value=-1.0)
        rr_new = _dot(r, r)
        if bool((rr_new <= target).all()):
            break
        q = torch.addcmul(r, (rr_new / rr.clamp_min(tiny))[:, None, None], q)
        rr = rr_new
    return d


def _line_search(
    prob: _Problem, phi: Tensor, f: Tensor, obj: Tensor, d: Tensor, g: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-task Armijo backtracking from step 1 (Newton steps are nearly always accepted).

    Returns the new (phi, f, objective, p), so the next Newton step needs no logits or softmax pass.
    """
    f_d = prob.logits(d)
    slope = _dot(g, d)
    step = torch.ones_like(obj)
    for _ in range(40):
        s = step[:, None, None]
        phi_s, f_s = torch.addcmul(phi, s, d), torch.addcmul(f, s, f_d)
        obj_s, p_s = prob.evaluate(f_s, phi_s)
        ok = obj_s <= obj + 1e-4 * step * slope
        if bool(ok.all()):
            break
        step = torch.where(ok, step, 0.5 * step)
    # stay exactly class-centred (f is linear in phi, so it moves with it; p and the objective do not)
    return phi_s - phi_s.mean(1, keepdim=True), f_s - f_s.mean(1, keepdim=True), obj_s, p_s


def _solve(prob: _Problem, tol: float, max_iter: int) -> tuple[Tensor, Tensor, int, Tensor]:
    """Truncated Newton for every task.

    Returns (support logits [T,ways,S], their softmax [T,ways,S], iterations, converged bool [T]).
    """
    t, n, r1 = prob.zr.shape
    ways = prob.y.shape[1]
    phi = torch.zeros(t, ways, r1, dtype=prob.zr.dtype, device=prob.zr.device)
    f = torch.zeros(t, ways, n, dtype=phi.dtype, device=phi.device)
    obj, p = prob.evaluate(f, phi)
    f_out, p_out = f.clone(), p.clone()  # finished tasks' logits and probabilities land here
    converged = torch.zeros(t, dtype=torch.bool, device=phi.device)
    active = torch.arange(t, device=phi.device)
    sub = prob
    it = 0
    for it in range(1, max_iter + 1):
        g = sub.gradient(p, f, phi)
        # sklearn's stopping rule: max |gradient| of its objective, which is ours divided by C * n
        gscaled = sub.theta_gradient(g).abs().amax((1, 2)) / (prob.c * n)
        done = gscaled <= tol
        if bool(done.any()):
            converged[active[done]] = True
            f_out[active[done]], p_out[active[done]] = f[done], p[done]
            keep = (~done).nonzero().flatten()
            if keep.numel() == 0:
                return f_out, p_out, it, converged
            active, phi, f, obj, p, g, gscaled = (v[keep] for v in (active, phi, f, obj, p, g, gscaled))
            sub = prob.subset(active)
        rtol = gscaled.sqrt().clamp(max=0.5)  # forcing term: superlinear convergence near the optimum
        # at the start the whitened Hessian is the identity, so the Newton step is -g exactly
        # (conjugate gradients would return it after one Hessian product)
        d = -g if it == 1 else _cg(sub, p, g, rtol, max_iter=r1 * ways)
        phi, f, obj, p = _line_search(sub, phi, f, obj, d, g)
    f_out[active], p_out[active] = f, p
    return f_out, p_out, it, converged


def fit_logreg(
    support: Tensor,
    labels: Tensor,
    ways: int,
    C: float = 3.0,
    tol: float = 1e-6,
    max_iter: int = 100,
    normalize: bool = True,
) -> LogregFit:
    """Fit one multinomial logistic regression per task, all tasks at once.

    Args:
        support: float [T, S, D] support features (any float dtype; L2-normalised here if ``normalize``).
        labels: int64 [T, S] in [0, ways), every class present (see ``checks.as_head_tasks``).
        ways: number of classes.
        C: inverse L2 strength, as sklearn's ``C``.
        tol: stop a task when max |gradient| of sklearn's scaled objective is below this
            (sklearn's own default is 1e-4: this reaches a 100x tighter optimum).
        max_iter: Newton iterations at most.

    Returns:
        LogregFit with coef float [T, ways, D] (float64 for float64 input, else float32) and
        intercept float64 [T, ways].
    """
    if not isinstance(support, Tensor) or not isinstance(labels, Tensor):
        raise FsmtlError("fit_logreg: expected torch tensors (support float [T,S,D], labels int64 [T,S]); "
                         "fsmtl.eval.adapt also takes numpy arrays")  # fmt: skip
    gdt = _gram_dtype(support)
    x = support.to(gdt)
    k = (x @ x.transpose(1, 2)).to(torch.float64)  # the one pass over the support features
    inv64 = torch.ones(k.shape[:2], dtype=torch.float64, device=k.device)
    if normalize:  # squared norms are the Gram's diagonal; zero rows stay zero, as sklearn's normalize
        sq = k.diagonal(dim1=1, dim2=2).clamp_min(0)
        inv64 = torch.where(sq > 0, sq.rsqrt(), inv64)
        k = k * inv64[:, :, None] * inv64[:, None, :]
    if not bool(torch.isfinite(k).all()):
        raise FsmtlError("logreg: support features contain NaN or infinite values")
    z = _thin_factor(x, inv64) if x.shape[2] < x.shape[1] else _gram_factor(k)
    zt = torch.cat([z, torch.ones_like(z[:, :, :1])], dim=2)
    y = one_hot(labels, ways, torch.float64).transpose(1, 2).contiguous()  # class-major [T, ways, S]
    f, p, n_iter, converged = _solve(_Problem(zt, y, float(C)), tol, max_iter)
    dual = float(C) * (y - p)  # [T,ways,S]: W = dual (normalised support), the representer theorem
    coef = (dual * inv64[:, None, :]).to(gdt) @ x  # [T,ways,D] contiguous: the fast layout for queries
    # the intercept: support logits minus their W part (W x_i = sum_j dual_j K_ij; K is symmetric)
    intercept = torch.baddbmm(f, dual, k, alpha=-1.0).mean(2)
    return LogregFit(coef, intercept, n_iter, converged, normalize)


def _query_pass(q: Tensor, coef: Tensor, normalize: bool, chunk_bytes: int) -> tuple[Tensor, Tensor]:
    """(q W^T float [T, Q, ways], row norms [T, Q]) for q [T, Q, D], coef [T, ways, D].

    Slices of ~``chunk_bytes`` of queries: the norm then re-reads a slice the matmul just pulled
    into cache, not all of q from memory again (the pass is memory-bound on the CPU).
    """
    t, nq, _ = q.shape
    step = max(1, chunk_bytes // max(1, q[:1].numel() * q.element_size()))
    scores = q.new_empty(t, nq, coef.shape[1])
    norms = q.new_ones(t, nq)
    for i in range(0, t, step):
        qi = q[i : i + step]
        # coef [T, ways, D] contiguous, used transposed: ~3x faster than a contiguous [T, D, ways]
        torch.bmm(qi, coef[i : i + step].transpose(1, 2), out=scores[i : i + step])
        if normalize:
            norms[i : i + step] = _row_norms(qi)
    return scores, norms


def logreg_logits(fit: LogregFit, query: Tensor) -> Tensor:
    """Decision values float64 [T, Q, ways] for query float [T, Q, D]."""
    q = query.to(fit.coef.dtype)
    chunk = 4 << 20 if q.device.type == "cpu" else q.numel() * q.element_size()  # one call on the GPU
    scores, norms = _query_pass(q, fit.coef, fit.normalize, chunk)
    scores = scores.to(torch.float64)
    if fit.normalize:
        scores = scores / norms.to(torch.float64)[:, :, None]
    return scores + fit.intercept[:, None, :]


def fit_predict_logreg(
    support: Tensor, labels: Tensor, query: Tensor, ways: int, C: float = 3.0, tol: float = 1e-6,
    max_iter: int = 100, normalize: bool = True,
) -> Tensor:
    """Predicted labels int64 [T, Q] of the queries, after fitting every task's head (see fit_logreg)."""
    fit = fit_logreg(support, labels, ways, C=C, tol=tol, max_iter=max_iter, normalize=normalize)
    return logreg_logits(fit, query).argmax(-1)
