"""The seed's test head: L2-regularised multinomial logistic regression, fitted for many tasks at once.

Same optimum as ``sklearn.linear_model.LogisticRegression(C=C, solver="lbfgs")`` on L2-normalised
support features: minimise ``C * sum_i CE(W x_i + b, y_i) + 0.5 * ||W||^2`` (sklearn 1.9 divides
this by ``C * n``, which moves no optimum), intercept unpenalised, one weight row per class.

Why it is fast: an N-way K-shot task has only S = N*K support points, so the optimal W lies in
their span (the gradient of the loss does, and the penalty removes anything else). With a factor
Z [S,S] of the Gram matrix (Z Z^T = X X^T) the problem becomes an S-dimensional one for every
task, solved by batched truncated Newton: conjugate gradients on Hessian-vector products,
preconditioned by the Hessian at the starting point (one (S+1)-square inverse per task, computed
once; it has the class structure of Boehning's bound on the softmax Hessian). At the optimum
the weights are W = C (Y - P)^T X (the representer theorem), so mapping back needs no inverse.
The free shift of the intercepts (adding a constant to every b_k changes nothing) is pinned at
sum(b) = 0, where sklearn's lbfgs also stays, since its iterates start at 0 and every gradient
has zero sum over classes. Features enter only through two matrix
products per batch (the support Gram, and query x W^T), done in the features' precision
(float32, or float64 when given float64); the small solve runs in float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from eval.heads.checks import one_hot
from fsmtl.errors import FsmtlError


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


def _softmax(f: Tensor) -> Tensor:
    e = (f - f.amax(-1, keepdim=True)).exp()
    return e / e.sum(-1, keepdim=True)


class _Problem:
    """The reduced problem for a set of tasks: theta [T, S+1, ways], last row the intercept."""

    def __init__(self, zt: Tensor, y: Tensor, c: float) -> None:
        self.zt, self.y, self.c = zt, y, c  # zt [T,S,S+1] = [Z, 1]; y one-hot [T,S,ways]
        r1 = zt.shape[-1]
        self.pen = torch.ones(r1, 1, dtype=zt.dtype, device=zt.device)
        self.pen[-1] = 0.0  # the intercept is not penalised
        ways = y.shape[-1]
        # Preconditioner: the Hessian with every softmax curvature diag(p) - p p^T replaced by the
        # constant (I - 11^T/ways) / ways. That is the exact Hessian at the start (theta = 0, p
        # uniform), and shares Boehning's bound's structure (1/2 in place of 1/ways), so one
        # (S+1)-square matrix per task serves every class. Measured: ~2 CG steps per Newton step.
        m = (c / ways) * zt.transpose(1, 2) @ zt + torch.diag_embed(self.pen.squeeze(1)).expand(zt.shape[0], r1, r1)
        # an explicit inverse: a batched matmul per CG step is ~5x cheaper than two triangular
        # solves; M is positive definite (the penalty covers W, the S support points cover b)
        self.m_inv = torch.cholesky_inverse(torch.linalg.cholesky(m))
        self.mean_scale = self.pen.clone()
        self.mean_scale[-1] = 1.0 / ways

    def subset(self, idx: Tensor) -> "_Problem":
        """The same problem restricted to tasks ``idx`` (so finished tasks stop costing work)."""
        sub = object.__new__(_Problem)
        sub.__dict__.update(self.__dict__)
        sub.zt, sub.y, sub.m_inv = self.zt[idx], self.y[idx], self.m_inv[idx]
        return sub

    def objective(self, f: Tensor, theta: Tensor) -> Tensor:
        """C * sum CE + 0.5 ||W||^2 + 0.5 (sum b)^2, per task [T]; the last term pins the free shift of b."""
        ce = torch.logsumexp(f, -1) - (f * self.y).sum(-1)
        pen = (theta.square() * self.pen).sum((1, 2)) + theta[:, -1].sum(-1).square()
        return self.c * ce.sum(-1) + 0.5 * pen

    def gradient(self, p: Tensor, theta: Tensor) -> Tensor:
        g = self.c * self.zt.transpose(1, 2) @ (p - self.y) + self.pen * theta
        g[:, -1] += theta[:, -1].sum(-1, keepdim=True)
        return g

    def hvp(self, p: Tensor, v: Tensor) -> Tensor:
        f = self.zt @ v
        pf = p * f
        s = pf - p * pf.sum(-1, keepdim=True)  # (diag(p) - p p^T) f, row by row
        out = self.c * self.zt.transpose(1, 2) @ s + self.pen * v
        out[:, -1] += v[:, -1].sum(-1, keepdim=True)
        return out

    def precondition(self, r: Tensor) -> Tensor:
        mean = r.mean(-1, keepdim=True)
        return self.m_inv @ (r - mean) + self.mean_scale * mean


def _dot(a: Tensor, b: Tensor) -> Tensor:
    return (a * b).sum((1, 2))


def _pcg(prob: _Problem, p: Tensor, g: Tensor, rtol: Tensor, max_iter: int) -> Tensor:
    """Approximately solve H d = -g per task, stopping each task at ||r|| <= rtol * ||g||."""
    d = torch.zeros_like(g)
    r = -g
    z = prob.precondition(r)
    q = z
    rz = _dot(r, z)
    target = (rtol * torch.linalg.vector_norm(g, dim=(1, 2))).square()
    tiny = torch.finfo(g.dtype).tiny
    for _ in range(max_iter):
        hq = prob.hvp(p, q)
        alpha = rz / _dot(q, hq).clamp_min(tiny)
        d = d + alpha[:, None, None] * q
        r = r - alpha[:, None, None] * hq
        rr = _dot(r, r)
        if bool((rr <= target).all()):
            break
        z = prob.precondition(r)
        rz_new = _dot(r, z)
        beta = rz_new / rz.clamp_min(tiny)
        rz = rz_new
        q = z + beta[:, None, None] * q
    return d


def _line_search(prob: _Problem, theta: Tensor, f: Tensor, d: Tensor, g: Tensor) -> Tensor:
    """Per-task Armijo backtracking from step 1 (Newton steps are nearly always accepted)."""
    f_d = prob.zt @ d
    obj = prob.objective(f, theta)
    slope = _dot(g, d)
    step = torch.ones_like(obj)
    for _ in range(40):
        s = step[:, None, None]
        ok = prob.objective(f + s * f_d, theta + s * d) <= obj + 1e-4 * step * slope
        if bool(ok.all()):
            break
        step = torch.where(ok, step, 0.5 * step)
    return step


def _solve(prob: _Problem, tol: float, max_iter: int) -> tuple[Tensor, int, Tensor]:
    t, r1, ways = prob.zt.shape[0], prob.zt.shape[2], prob.y.shape[2]
    n = prob.zt.shape[1]
    theta = torch.zeros(t, r1, ways, dtype=prob.zt.dtype, device=prob.zt.device)
    converged = torch.zeros(t, dtype=torch.bool, device=theta.device)
    active = torch.arange(t, device=theta.device)
    sub = prob
    it = 0
    for it in range(1, max_iter + 1):
        th = theta[active]
        f = sub.zt @ th
        p = _softmax(f)
        g = sub.gradient(p, th)
        # sklearn's stopping rule is on the gradient of the loss divided by C * n
        gscaled = g.abs().amax((1, 2)) / (prob.c * n)
        done = gscaled <= tol
        if bool(done.any()):
            converged[active[done]] = True
            keep = (~done).nonzero().flatten()
            if keep.numel() == 0:
                break
            active, th, f, p, g = active[keep], th[keep], f[keep], p[keep], g[keep]
            sub = prob.subset(active)
            gscaled = gscaled[keep]
        rtol = gscaled.sqrt().clamp(max=0.5)  # forcing term: superlinear convergence near the optimum
        d = _pcg(sub, p, g, rtol, max_iter=r1 * ways)
        step = _line_search(sub, th, f, d, g)
        theta[active] = th + step[:, None, None] * d
    return theta, it, converged


def fit_logreg(
    support: Tensor,
    labels: Tensor,
    ways: int,
    C: float = 3.0,
    tol: float = 1e-8,
    max_iter: int = 100,
    normalize: bool = True,
) -> LogregFit:
    """Fit one multinomial logistic regression per task, all tasks at once.

    Args:
        support: float [T, S, D] support features (any float dtype; L2-normalised here if ``normalize``).
        labels: int64 [T, S] in [0, ways), every class present (see ``checks.as_task_batch``).
        ways: number of classes.
        C: inverse L2 strength, as sklearn's ``C``.
        tol: stop a task when max |gradient| of sklearn's scaled objective is below this
            (sklearn's own default is 1e-4, so 1e-8 is a tighter optimum than sklearn reaches).
        max_iter: Newton iterations at most.

    Returns:
        LogregFit with coef float [T, ways, D] (float64 for float64 input, else float32) and
        intercept float64 [T, ways].
    """
    gdt = _gram_dtype(support)
    x = support.to(gdt)
    inv_norm = (1.0 / _row_norms(x)) if normalize else torch.ones(x.shape[:2], dtype=gdt, device=x.device)
    k = (x @ x.transpose(1, 2)).to(torch.float64)
    inv64 = inv_norm.to(torch.float64)
    k = k * inv64[:, :, None] * inv64[:, None, :]
    if not bool(torch.isfinite(k).all()):
        raise FsmtlError("logreg: support features contain NaN or infinite values")
    z = _gram_factor(k)
    zt = torch.cat([z, torch.ones_like(z[:, :, :1])], dim=2)
    y = one_hot(labels, ways, torch.float64)
    prob = _Problem(zt, y, float(C))
    theta, n_iter, converged = _solve(prob, tol, max_iter)
    p = _softmax(zt @ theta)
    dual = float(C) * (y - p) * inv64[:, :, None]  # [T,S,ways]; W = dual^T x (unnormalised rows)
    coef = dual.to(gdt).transpose(1, 2) @ x
    return LogregFit(coef, theta[:, -1, :], n_iter, converged, normalize)


def logreg_logits(fit: LogregFit, query: Tensor) -> Tensor:
    """Decision values float64 [T, Q, ways] for query float [T, Q, D]."""
    gdt = fit.coef.dtype
    q = query.to(gdt)
    scores = (q @ fit.coef.transpose(1, 2)).to(torch.float64)
    if fit.normalize:
        scores = scores / _row_norms(q).to(torch.float64)[:, :, None]
    return scores + fit.intercept[:, None, :]


def fit_predict_logreg(
    support: Tensor, labels: Tensor, query: Tensor, ways: int, C: float = 3.0, tol: float = 1e-8,
    max_iter: int = 100, normalize: bool = True,
) -> Tensor:
    """Predicted labels int64 [T, Q] of the queries, after fitting every task's head (see fit_logreg)."""
    fit = fit_logreg(support, labels, ways, C=C, tol=tol, max_iter=max_iter, normalize=normalize)
    return logreg_logits(fit, query).argmax(-1)
