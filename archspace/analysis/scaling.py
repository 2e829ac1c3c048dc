"""Scaling laws: Chinchilla's parametric fit with bootstrap intervals, the iso-FLOP cross-check,
compute-optimal allocation and the state-optimal frontier. numpy only; float64 throughout.

The law (Hoffmann et al. 2022, "Training Compute-Optimal Large Language Models", eq. 2), N parameters and
D training tokens:

    L(N, D) = E + A / N^alpha + B / D^beta

Approach 3 of that paper (its appendix D.2), with the procedure as re-derived by Besiroglu et al. 2024
("Chinchilla Scaling: A replication attempt", arXiv:2404.10102):

1. Parametrise A = exp(a), B = exp(b), E = exp(e). The predicted log-loss is a log-sum-exp,
       log L(N, D) = LSE(a - alpha log N, b - beta log D, e),
   so A, B, E stay positive for any start and nothing overflows.
2. Minimise the *sum* over points of Huber_delta(LSE_i - log L_i), delta = 1e-3. Besiroglu et al. traced
   Hoffmann et al.'s implausibly narrow intervals to L-BFGS stopping early on the mean's small scale.
3. L-BFGS from every point of the grid alpha, beta in {0, 0.5, ..., 2}, e in {-1, -0.5, ..., 1},
   a, b in {0, 5, ..., 25} (4,500 starts); keep the lowest objective. `starts=K` runs L-BFGS only from the K
   grid points with the lowest objective (the objective is cheap to evaluate everywhere; the descent is not).
4. Intervals: nonparametric bootstrap over the data points (Besiroglu et al. used 4,000 resamples). Each
   resample is refit by L-BFGS from the full-data optimum (optionally also from its own best grid points:
   `boot_grid_starts`); percentile intervals.

Approach 2 (iso-FLOP profiles, Hoffmann et al. section 3.2), the cross-check: at each compute budget C fit a
parabola of the loss in log N, take its vertex N*(C), then fit N* ~ C^a and D* ~ C^b by least squares in
log-log. With C proportional to N D the parametric law predicts a = beta / (alpha + beta) and
b = alpha / (alpha + beta).

Compute-optimal N and D for a budget C minimise L(N, D) subject to C = f(N) D, where f(N) is the training FLOPs
per token of the design at size N, taken from archspace's accounting (a straight line c0 + k N fitted to the
study's trials), not only Kaplan's 6 N.

The state-optimal frontier: the designs that no other design beats on both loss and recurrent state size.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np

HUBER_DELTA = 1e-3
# Hoffmann et al. / Besiroglu et al.'s grid of initialisations, in the order of THETA.
HOFFMANN_GRID = {
    "a": (0.0, 5.0, 10.0, 15.0, 20.0, 25.0),
    "b": (0.0, 5.0, 10.0, 15.0, 20.0, 25.0),
    "e": (-1.0, -0.5, 0.0, 0.5, 1.0),
    "alpha": (0.0, 0.5, 1.0, 1.5, 2.0),
    "beta": (0.0, 0.5, 1.0, 1.5, 2.0),
}
THETA = ("a", "b", "e", "alpha", "beta")  # the optimiser's coordinates
COEFFS = ("E", "A", "B", "alpha", "beta")  # what is reported
# Per bootstrap resample, extra starts at its own best grid points besides the full-data optimum. Off by default:
# on Chinchilla-like synthetic data (36 points, 0.1-0.3% noise, 2,000 resamples) they found a lower objective in
# 0.7% of resamples, by at most 2e-6 relative, moving no coefficient by more than 2e-4 relative, at 15x the cost.
BOOT_GRID_STARTS = 0


# ----------------------------------------------------------------------------------------------
# The objective
# ----------------------------------------------------------------------------------------------
def huber(r: np.ndarray, delta: float = HUBER_DELTA) -> np.ndarray:
    """Huber's loss: r^2 / 2 inside [-delta, delta], delta (|r| - delta / 2) outside."""
    a = np.abs(r)
    return np.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta))


def huber_lse_objective(theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, log_l: np.ndarray,
                        weight: np.ndarray, delta: float = HUBER_DELTA) -> tuple[np.ndarray, np.ndarray]:
    """Objective and gradient of P independent fits at once.

    theta (P, 5) in THETA order; log_n, log_d, log_l, weight (P, n): the data of each problem, weight the
    multiplicity of each point (bootstrap counts; 0 pads a shorter data set). Returns f (P,), grad (P, 5).
    """
    a, b, e, alpha, beta = (theta[:, i:i + 1] for i in range(5))
    t1 = a - alpha * log_n  # (P, n)  log(A / N^alpha)
    t2 = b - beta * log_d  # (P, n)  log(B / D^beta)
    m = np.maximum(np.maximum(t1, t2), e)  # shift for a stable log-sum-exp
    p1, p2, p3 = np.exp(t1 - m), np.exp(t2 - m), np.exp(e - m)
    s = p1 + p2 + p3
    r = m + np.log(s) - log_l  # (P, n) residual in log space
    c = np.clip(r, -delta, delta)  # Huber's derivative
    f = np.einsum("pn,pn->p", weight, c * (r - 0.5 * c))  # c (r - c/2) is r^2/2 inside, delta (|r| - delta/2) out
    dr = weight * c / s  # d(sum w Huber)/dr times the softmax denominator of dLSE
    q1, q2 = dr * p1, dr * p2
    g = np.stack([q1.sum(1), q2.sum(1), np.einsum("pn,pn->p", dr, p3),
                  -np.einsum("pn,pn->p", q1, log_n), -np.einsum("pn,pn->p", q2, log_d)], axis=1)
    return f, g


def lse_predict(theta: np.ndarray, n, d) -> np.ndarray:
    """L(N, D) for parameters theta (..., 5) in THETA order (broadcast against n and d)."""
    theta = np.asarray(theta, dtype=np.float64)
    a, b, e, alpha, beta = (theta[..., i] for i in range(5))
    return np.exp(e) + np.exp(a - alpha * np.log(n)) + np.exp(b - beta * np.log(d))


# ----------------------------------------------------------------------------------------------
# Batched L-BFGS
# ----------------------------------------------------------------------------------------------
@dataclass
class Minimised:
    x: np.ndarray  # (P, k)
    f: np.ndarray  # (P,)
    iterations: np.ndarray  # (P,) iterations each problem ran
    converged: np.ndarray  # (P,) bool: stopped by a tolerance (not by max_iter)


def lbfgs(fun: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]], x0: np.ndarray, *,
          memory: int = 10, max_iter: int = 2000, ftol: float = 1e-10, gtol: float = 1e-12,
          patience: int = 3) -> Minimised:
    """Minimise P independent smooth functions at once with L-BFGS (Nocedal & Wright 2006, algorithms 7.4, 7.5).

    `fun(x, rows)` returns (f, grad) of the problems `rows` at x (len(rows), k). Every problem keeps its own
    curvature pairs and backtracking (Armijo) line search; pairs with s^T y <= 0 are skipped. A problem stops when
    its gradient's largest entry is below `gtol`, or when its objective fell by less than `ftol` (relative) for
    `patience` iterations in a row (one short step does not stop it), or when its line search cannot decrease
    the objective at all. ftol 1e-10 moved no coefficient of a Chinchilla fit by more than 1e-8 relative against
    1e-13, where a few hundred problems out of 1,600 ran to 2,000 iterations zigzagging over Huber's kinks.
    The running problems are kept compacted (finished ones leave the arrays), so the cost follows the stragglers.
    """
    x_out = np.array(x0, dtype=np.float64)
    p, k = x_out.shape
    ids = np.arange(p)  # the running problems, in the order of the state arrays below
    x = x_out.copy()
    f, g = fun(x, ids)
    f_out = f.copy()
    iters_out = np.zeros(p, dtype=int)
    conv_out = np.zeros(p, dtype=bool)
    S = np.zeros((memory, p, k))  # ring buffer of steps s = x_{t+1} - x_t
    Y = np.zeros((memory, p, k))  # and gradient changes y = g_{t+1} - g_t
    rho = np.zeros((memory, p))  # 1 / s^T y, 0 for an empty or skipped slot
    gamma = np.ones(p)  # initial inverse-Hessian scale s^T y / y^T y of the newest pair
    has_pair = np.zeros(p, dtype=bool)
    stall = np.zeros(p, dtype=int)
    iters = np.zeros(p, dtype=int)
    running = np.isfinite(f) & (np.max(np.abs(g), axis=1) > gtol)
    conv_out[~running] = True
    for it in range(max_iter):
        if not running.all():  # compact: finished problems leave the state
            x_out[ids[~running]], f_out[ids[~running]] = x[~running], f[~running]
            iters_out[ids[~running]] = iters[~running]
            ids, x, f, g = ids[running], x[running], f[running], g[running]
            S, Y, rho = S[:, running], Y[:, running], rho[:, running]
            gamma, has_pair, stall, iters = gamma[running], has_pair[running], stall[running], iters[running]
        if ids.size == 0:
            break
        # two-loop recursion over the ring buffer, newest pair first (slots of skipped pairs have rho = 0)
        q = g.copy()
        order = [(it - 1 - j) % memory for j in range(min(it, memory))]
        alphas = []
        for slot in order:
            aj = rho[slot] * np.einsum("pk,pk->p", S[slot], q)
            q -= aj[:, None] * Y[slot]
            alphas.append(aj)
        r = gamma[:, None] * q
        for slot, aj in zip(reversed(order), reversed(alphas)):
            bj = rho[slot] * np.einsum("pk,pk->p", Y[slot], r)
            r += S[slot] * (aj - bj)[:, None]
        d = -r
        gd = np.einsum("pk,pk->p", g, d)
        bad = ~(gd < 0)  # not a descent direction (or NaN): restart from steepest descent
        if bad.any():
            d[bad] = -g[bad]
            gd[bad] = -np.einsum("pk,pk->p", g[bad], g[bad])
            rho[:, bad] = 0.0
            gamma[bad] = 1.0
            has_pair[bad] = False
        step = np.where(has_pair, 1.0, 1.0 / np.maximum(1.0, np.max(np.abs(d), axis=1)))
        x_new, f_new, g_new = x.copy(), f.copy(), g.copy()
        pending = np.ones(ids.size, dtype=bool)
        for _ in range(60):  # backtracking: halve the step until the Armijo condition holds
            idx = np.flatnonzero(pending)
            if idx.size == 0:
                break
            xt = x[idx] + step[idx, None] * d[idx]
            ft, gt = fun(xt, ids[idx])
            ok = np.isfinite(ft) & (ft <= f[idx] + 1e-4 * step[idx] * gd[idx])
            acc = idx[ok]
            x_new[acc], f_new[acc], g_new[acc] = xt[ok], ft[ok], gt[ok]
            pending[acc] = False
            step[idx[~ok]] *= 0.5
        moved = ~pending
        s = x_new - x
        y = g_new - g
        sy = np.einsum("pk,pk->p", s, y)
        yy = np.einsum("pk,pk->p", y, y)
        good = moved & (yy > 0) & (sy > 1e-16 * np.sqrt(np.einsum("pk,pk->p", s, s) * yy))
        slot = it % memory
        S[slot] = np.where(good[:, None], s, 0.0)
        Y[slot] = np.where(good[:, None], y, 0.0)
        rho[slot] = np.where(good, 1.0 / np.where(good, sy, 1.0), 0.0)
        gamma = np.where(good, sy / np.where(good, yy, 1.0), gamma)
        has_pair |= good
        small = (f - f_new) <= ftol * np.maximum(np.maximum(np.abs(f), np.abs(f_new)), 1e-300)
        stall = np.where(small, stall + 1, 0)
        x, f, g = x_new, f_new, g_new
        iters += 1
        done = (np.max(np.abs(g), axis=1) <= gtol) | (stall >= patience) | ~moved
        conv_out[ids[done]] = True
        running = ~done
    x_out[ids], f_out[ids], iters_out[ids] = x, f, iters  # whatever still ran at max_iter
    return Minimised(x=x_out, f=f_out, iterations=iters_out, converged=conv_out)


# ----------------------------------------------------------------------------------------------
# Approach 3: the parametric fit
# ----------------------------------------------------------------------------------------------
def grid_points(grid: Optional[dict] = None) -> np.ndarray:
    """The initialisations (G, 5) in THETA order (default: Hoffmann et al.'s 4,500)."""
    grid = grid or HOFFMANN_GRID
    return np.array(list(itertools.product(*(grid[name] for name in THETA))), dtype=np.float64)


def theta_to_coeffs(theta: np.ndarray) -> np.ndarray:
    """(..., 5) THETA (a, b, e, alpha, beta) -> COEFFS (E, A, B, alpha, beta)."""
    theta = np.asarray(theta, dtype=np.float64)
    return np.stack([np.exp(theta[..., 2]), np.exp(theta[..., 0]), np.exp(theta[..., 1]), theta[..., 3],
                     theta[..., 4]], axis=-1)


def coeffs_to_theta(coeffs: np.ndarray) -> np.ndarray:
    c = np.asarray(coeffs, dtype=np.float64)
    with np.errstate(divide="ignore"):  # a coefficient that underflowed to 0 maps back to -inf (exp(-inf) = 0)
        return np.stack([np.log(c[..., 1]), np.log(c[..., 2]), np.log(c[..., 0]), c[..., 3], c[..., 4]], axis=-1)


@dataclass
class ChinchillaFit:
    """A fitted L(N, D) = E + A / N^alpha + B / D^beta, with its bootstrap replicates."""

    coeffs: np.ndarray  # (5,) COEFFS order
    objective: float  # the summed Huber loss at the optimum
    n_points: int
    converged: bool
    boot: np.ndarray = field(default_factory=lambda: np.zeros((0, 5)))  # (B, 5) COEFFS of each resample
    level: float = 0.95

    E = property(lambda self: float(self.coeffs[0]))
    A = property(lambda self: float(self.coeffs[1]))
    B = property(lambda self: float(self.coeffs[2]))
    alpha = property(lambda self: float(self.coeffs[3]))
    beta = property(lambda self: float(self.coeffs[4]))

    @property
    def theta(self) -> np.ndarray:
        return coeffs_to_theta(self.coeffs)

    def predict(self, n, d) -> np.ndarray:
        return lse_predict(self.theta, n, d)

    def interval(self, name: str, level: Optional[float] = None) -> Optional[tuple[float, float]]:
        """Percentile bootstrap interval of a coefficient (None without resamples)."""
        if len(self.boot) == 0:
            return None
        return percentile_interval(self.boot[:, COEFFS.index(name)], level or self.level)

    @property
    def allocation_exponents(self) -> tuple[float, float]:
        """(a, b) with N* ~ C^a, D* ~ C^b when C is proportional to N D (Hoffmann et al. eq. 4)."""
        return allocation_exponents(self.alpha, self.beta)

    def to_dict(self) -> dict:
        out: dict = {"law": "L = E + A/N^alpha + B/D^beta", "objective": self.objective, "n_points": self.n_points,
                     "converged": self.converged, "bootstrap": len(self.boot), "level": self.level}
        for name in COEFFS:
            out[name] = getattr(self, name)
            iv = self.interval(name)
            if iv is not None:
                out[f"{name}_interval"] = list(iv)
        a, b = self.allocation_exponents
        out["a"], out["b"] = a, b
        if len(self.boot):
            ab = allocation_exponents(self.boot[:, 3], self.boot[:, 4])
            out["a_interval"] = list(percentile_interval(ab[0], self.level))
            out["b_interval"] = list(percentile_interval(ab[1], self.level))
        return out


def allocation_exponents(alpha, beta):
    alpha, beta = np.asarray(alpha, dtype=np.float64), np.asarray(beta, dtype=np.float64)
    total = alpha + beta
    a, b = beta / total, alpha / total
    return (float(a), float(b)) if a.ndim == 0 else (a, b)


def percentile_interval(samples: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    samples = np.asarray(samples, dtype=np.float64)
    samples = samples[np.isfinite(samples)]
    if samples.size == 0:
        return (math.nan, math.nan)
    lo, hi = np.quantile(samples, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def _as_rows(x, n_sets: int) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return np.broadcast_to(x, (n_sets, x.shape[-1])) if x.ndim == 1 else x


def _best_of(res: Minimised, groups: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per group, the problem with the lowest objective: (theta (G, 5), f (G,), converged (G,))."""
    f = np.where(np.isfinite(res.f), res.f, np.inf)
    order = np.lexsort((f, groups))  # by group, then objective
    first = order[np.r_[True, groups[order][1:] != groups[order][:-1]]]
    out = np.full((n_groups, res.x.shape[1]), np.nan)
    fo = np.full(n_groups, np.inf)
    conv = np.zeros(n_groups, dtype=bool)
    out[groups[first]] = res.x[first]
    fo[groups[first]] = f[first]
    conv[groups[first]] = res.converged[first]
    return out, fo, conv


def _descend(starts: np.ndarray, owner: np.ndarray, log_n, log_d, log_l, weight, delta, n_sets):
    """L-BFGS from `starts` (S, 5), start i fitting data set owner[i]; best per data set."""
    data = [z[owner] for z in (log_n, log_d, log_l, weight)]  # (S, n) each: gathered once

    def fun(x, rows):
        return huber_lse_objective(x, *(z[rows] for z in data), delta)

    return _best_of(lbfgs(fun, starts), owner, n_sets)


def _grid_starts(grid: np.ndarray, keep: Optional[int], log_n, log_d, log_l, weight, delta,
                 parent: Optional[np.ndarray] = None):
    """Per data set, the `keep` grid points with the lowest objective (all of them when keep is None).

    `parent[i]` names the row of (log_n, log_d, log_l) that data set i uses (bootstrap resamples share their
    parent's points and differ only in `weight`): the per-point Huber values of every grid point are computed
    once per parent, and each data set's grid objective is then one product with its weights.
    Returns (starts (S, 5), owner (S,))."""
    n_sets, g = weight.shape[0], grid.shape[0]
    if keep is None or keep >= g:
        return np.tile(grid, (n_sets, 1)), np.repeat(np.arange(n_sets), g)
    parent = np.arange(n_sets) if parent is None else parent
    scores = np.empty((n_sets, g))
    for j in np.unique(parent):
        pred = lse_predict(grid[:, None, :], np.exp(log_n[j]), np.exp(log_d[j]))  # (G, n)
        with np.errstate(divide="ignore"):
            per_point = huber(np.log(pred) - log_l[j], delta)
        mine = np.flatnonzero(parent == j)
        scores[mine] = np.einsum("sn,gn->sg", weight[mine], per_point)  # no BLAS: the same sums on any thread count
    best = np.argsort(np.where(np.isfinite(scores), scores, np.inf), axis=1, kind="stable")[:, :keep]
    return grid[best.reshape(-1)], np.repeat(np.arange(n_sets), keep)


def fit_chinchilla_many(n, d, loss, *, weight=None, bootstrap: int = 0, seed: int = 0, starts: Optional[int] = None,
                        grid: Optional[dict] = None, delta: float = HUBER_DELTA, level: float = 0.95,
                        boot_grid_starts: int = BOOT_GRID_STARTS) -> list[ChinchillaFit]:
    """Fit R data sets at once (the same procedure as `fit_chinchilla`, vectorised across them).

    n, d, loss: (R, n) arrays, or (n,) for n and d shared by every data set; weight (R, n) multiplicities
    (0 drops a point, e.g. to pad data sets of different lengths). `bootstrap` resamples per data set, drawn
    from numpy's PCG64 seeded with `seed` (the same seed gives the same intervals).
    """
    loss = np.asarray(loss, dtype=np.float64)
    loss = loss[None] if loss.ndim == 1 else loss
    n_sets, n_pts = loss.shape
    log_n = np.log(_as_rows(n, n_sets))
    log_d = np.log(_as_rows(d, n_sets))
    log_l = np.log(loss)
    w = np.ones_like(log_l) if weight is None else np.array(_as_rows(weight, n_sets), dtype=np.float64)
    if np.any(~np.isfinite(log_n) | ~np.isfinite(log_d) | ~np.isfinite(log_l)) or np.any(w < 0):
        raise ValueError("scaling fit: N, D and the loss must be finite and positive, weights non-negative")
    g = grid_points(grid)
    st, owner = _grid_starts(g, starts, log_n, log_d, log_l, w, delta)
    theta, fbest, conv = _descend(st, owner, log_n, log_d, log_l, w, delta, n_sets)
    fits = [ChinchillaFit(coeffs=theta_to_coeffs(theta[i]), objective=float(fbest[i]),
                          n_points=int(np.count_nonzero(w[i])), converged=bool(conv[i]), level=level)
            for i in range(n_sets)]
    if bootstrap <= 0:
        return fits
    # Resample the points of each data set with replacement: multinomial counts over its points.
    rng = np.random.Generator(np.random.PCG64(seed))
    bw = np.empty((n_sets, bootstrap, n_pts))
    for i in range(n_sets):
        present = w[i] > 0
        probs = np.where(present, w[i], 0.0) / w[i][present].sum()
        bw[i] = rng.multinomial(int(round(w[i][present].sum())), probs, size=bootstrap)
    bw = bw.reshape(n_sets * bootstrap, n_pts)
    parent = np.repeat(np.arange(n_sets), bootstrap)
    b_n, b_d, b_l = log_n[parent], log_d[parent], log_l[parent]
    warm = theta[parent]  # the full-data optimum of its data set
    gs, gown = _grid_starts(g, boot_grid_starts, log_n, log_d, log_l, bw, delta, parent) if boot_grid_starts else (
        np.zeros((0, 5)), np.zeros(0, dtype=int))
    all_starts = np.concatenate([warm, gs])
    all_owner = np.concatenate([np.arange(n_sets * bootstrap), gown])
    btheta, _, _ = _descend(all_starts, all_owner, b_n, b_d, b_l, bw, delta, n_sets * bootstrap)
    boot = theta_to_coeffs(btheta).reshape(n_sets, bootstrap, 5)
    for i, fit in enumerate(fits):
        fit.boot = boot[i]
    return fits


def fit_chinchilla(n, d, loss, **kwargs) -> ChinchillaFit:
    """Fit L(N, D) = E + A / N^alpha + B / D^beta to points (n_i, d_i, loss_i) (module docstring: approach 3).

    bootstrap: resamples for the intervals (0: none); starts: run L-BFGS only from the best `starts` grid
    points (default: every one of the 4,500); level: interval coverage.
    """
    loss = np.asarray(loss, dtype=np.float64)
    if loss.ndim != 1 or loss.size < 5:
        raise ValueError(f"scaling fit: needs at least 5 points (one per coefficient), got {loss.size}")
    return fit_chinchilla_many(np.asarray(n, dtype=np.float64), np.asarray(d, dtype=np.float64), loss, **kwargs)[0]


# ----------------------------------------------------------------------------------------------
# Compute-optimal allocation
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FlopsModel:
    """Training FLOPs per token as a function of the parameter count: f(N) = c0 + k N."""

    k: float
    c0: float = 0.0

    def __call__(self, n):
        return self.c0 + self.k * np.asarray(n, dtype=np.float64)

    @staticmethod
    def fit(n: Sequence[float], flops_per_token: Sequence[float]) -> "FlopsModel":
        """Least squares c0 + k N through the trials' (N, training FLOPs per token); c0 clipped at 0."""
        n = np.asarray(n, dtype=np.float64)
        f = np.asarray(flops_per_token, dtype=np.float64)
        if np.unique(n).size < 2:
            return FlopsModel(k=float(np.mean(f / n)))
        k, c0 = np.polyfit(n, f, 1)
        if c0 < 0 or k <= 0:
            return FlopsModel(k=float(np.sum(f * n) / np.sum(n * n)))
        return FlopsModel(k=float(k), c0=float(c0))


KAPLAN = FlopsModel(k=6.0)  # C = 6 N D (Kaplan et al. 2020): forward 2 N, backward 4 N FLOPs per token


def compute_optimal(theta: np.ndarray, budgets, flops: FlopsModel = KAPLAN, *, span: float = 12.0,
                    points: int = 481, refine: int = 60) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """N*, D*, L* minimising L(N, D) subject to C = f(N) D, for each budget C.

    theta (..., 5) (one fit or a stack of bootstrap fits) against budgets (C,): returns arrays (..., C).
    Along the constraint, log L is unimodal in log N (a falling and a rising power of N): a log-spaced grid of
    `points` values spanning e^{+-span} around the 6ND closed form brackets the minimum, golden-section search
    (`refine` steps, each shrinking the bracket by 0.618) narrows it to below 1e-9 in log N.
    """
    theta = np.asarray(theta, dtype=np.float64)
    budgets = np.asarray(budgets, dtype=np.float64)
    a, b, e, alpha, beta = (theta[..., i, None, None] for i in range(5))
    c = budgets[:, None]

    def loss_at(log_n):  # (..., C, P) -> L on the constraint, inf where the budget buys no token
        d = c / flops(np.exp(log_n))
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            out = np.exp(e) + np.exp(a - alpha * log_n) + np.exp(b - beta * np.log(np.where(d > 0, d, 1.0)))
        return np.where((d > 0) & np.isfinite(out), out, np.inf)

    # centre: the closed form for f = k N, N* = G (C/k)^(beta/(alpha+beta)), G = (alpha A / (beta B))^(1/(alpha+beta))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        log_g = (np.log(np.maximum(alpha, 1e-12)) + a - np.log(np.maximum(beta, 1e-12)) - b) / (alpha + beta)
        centre = log_g + beta / (alpha + beta) * np.log(c / flops.k)  # (..., C, 1)
    centre = np.where(np.isfinite(centre), centre, np.log(np.sqrt(c / flops.k)))
    offs = np.linspace(-span, span, points)
    grid = centre + offs
    i = np.clip(np.argmin(loss_at(grid), axis=-1), 1, points - 2)
    lo = np.take_along_axis(grid, (i - 1)[..., None], axis=-1)
    hi = np.take_along_axis(grid, (i + 1)[..., None], axis=-1)
    ratio = (math.sqrt(5) - 1) / 2
    x1, x2 = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    f1, f2 = loss_at(x1), loss_at(x2)
    for _ in range(refine):
        left = f1 <= f2  # the minimum lies in [lo, x2] (else in [x1, hi]): keep that part, reuse the inner point
        lo, hi = np.where(left, lo, x1), np.where(left, x2, hi)
        x1, x2, f1_old, f2_old = (np.where(left, hi - ratio * (hi - lo), x2), np.where(left, x1, lo + ratio * (hi - lo)),
                                  f1, f2)
        f_new = loss_at(np.where(left, x1, x2))  # one new evaluation per step
        f1, f2 = np.where(left, f_new, f2_old), np.where(left, f1_old, f_new)
    best_log_n = ((lo + hi) / 2)[..., 0]
    n_opt = np.exp(best_log_n)
    d_opt = budgets / flops(n_opt)
    l_opt = lse_predict(theta[..., None, :], n_opt, d_opt)
    return n_opt, d_opt, l_opt


# ----------------------------------------------------------------------------------------------
# Approach 2: iso-FLOP profiles
# ----------------------------------------------------------------------------------------------
@dataclass
class IsoFlopFit:
    """Approach 2: per budget the parabola's vertex N*(C); N* ~ C^a and D* ~ C^b fitted in log-log."""

    budgets: np.ndarray  # (K,) compute of each profile whose parabola has a minimum inside its points
    n_opt: np.ndarray  # (K,)
    d_opt: np.ndarray  # (K,)
    parabolas: list  # per budget: (C, coefficients of loss vs log N (deg 2), log N range)
    a: float  # N* exponent
    b: float  # D* exponent
    boot: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))  # (B, 2) resampled (a, b)
    level: float = 0.95

    def interval(self, name: str) -> Optional[tuple[float, float]]:
        if len(self.boot) == 0:
            return None
        return percentile_interval(self.boot[:, ("a", "b").index(name)], self.level)

    def to_dict(self) -> dict:
        out = {"budgets": self.budgets.tolist(), "n_opt": self.n_opt.tolist(), "d_opt": self.d_opt.tolist(),
               "a": self.a, "b": self.b, "bootstrap": len(self.boot)}
        for name in ("a", "b"):
            iv = self.interval(name)
            if iv is not None:
                out[f"{name}_interval"] = list(iv)
        return out


def _iso_vertices(groups: list, flops: FlopsModel):
    """groups: [(C, log_n (m,), loss (m,))] -> [(C, N*, D*, coefficients, (lo, hi))] for convex profiles whose
    vertex lies within the sampled range of N (an extrapolated vertex says nothing about the optimum)."""
    out = []
    for c, log_n, loss in groups:
        if np.unique(log_n).size < 3:
            continue
        coef = np.polyfit(log_n, loss, 2)
        if not coef[0] > 0:
            continue
        v = -coef[1] / (2 * coef[0])
        lo, hi = float(np.min(log_n)), float(np.max(log_n))
        if not lo <= v <= hi:
            continue
        n_star = math.exp(v)
        out.append((c, n_star, c / float(flops(n_star)), coef, (lo, hi)))
    return out


def _loglog_slope(x, y) -> float:
    return float(np.polyfit(np.log(x), np.log(y), 1)[0])


def fit_isoflop(budget, n, loss, flops: FlopsModel = KAPLAN, *, bootstrap: int = 0, seed: int = 0,
                level: float = 0.95) -> Optional[IsoFlopFit]:
    """Approach 2 over points (budget_i, n_i, loss_i), grouped by equal budget. None with fewer than two usable
    profiles (a slope needs two budgets). Bootstrap: points resampled within each profile."""
    budget, n, loss = (np.asarray(z, dtype=np.float64) for z in (budget, n, loss))
    keys = np.unique(budget)
    groups = [(float(c), np.log(n[budget == c]), loss[budget == c]) for c in keys]
    verts = _iso_vertices(groups, flops)
    if len(verts) < 2:
        return None
    cs = np.array([v[0] for v in verts])
    ns = np.array([v[1] for v in verts])
    ds = np.array([v[2] for v in verts])
    fit = IsoFlopFit(budgets=cs, n_opt=ns, d_opt=ds, parabolas=[(v[0], v[3], v[4]) for v in verts],
                     a=_loglog_slope(cs, ns), b=_loglog_slope(cs, ds), level=level)
    if bootstrap > 0:
        rng = np.random.Generator(np.random.PCG64(seed))
        boot = []
        for _ in range(bootstrap):
            resampled = []
            for c, ln, ls in groups:
                j = rng.integers(0, ln.size, ln.size)
                resampled.append((c, ln[j], ls[j]))
            v = _iso_vertices(resampled, flops)
            if len(v) >= 2:
                bc = np.array([x[0] for x in v])
                boot.append((_loglog_slope(bc, [x[1] for x in v]), _loglog_slope(bc, [x[2] for x in v])))
        fit.boot = np.array(boot).reshape(-1, 2)
    return fit


# ----------------------------------------------------------------------------------------------
# The state-optimal frontier
# ----------------------------------------------------------------------------------------------
def lower_frontier(x, y) -> np.ndarray:
    """Indices of the points that no other point beats on both x and y (both minimised), sorted by x.

    For (recurrent state size, loss): the state-optimal frontier, the least loss reachable with at most that
    much state."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    order = np.lexsort((y, x))
    keep, best = [], math.inf
    for i in order:
        if y[i] < best:
            keep.append(int(i))
            best = y[i]
    return np.array(keep, dtype=int)


__all__ = ["HUBER_DELTA", "HOFFMANN_GRID", "THETA", "COEFFS", "huber", "huber_lse_objective", "lse_predict", "lbfgs",
           "grid_points", "ChinchillaFit", "fit_chinchilla", "fit_chinchilla_many", "allocation_exponents",
           "percentile_interval", "FlopsModel", "KAPLAN", "compute_optimal", "IsoFlopFit", "fit_isoflop",
           "lower_frontier", "theta_to_coeffs", "coeffs_to_theta"]
