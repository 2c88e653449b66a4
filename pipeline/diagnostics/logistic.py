"""The L2-penalised logistic regression of the diagnostics (the separation probe, the text-only bias audit).

`fit(x, labels, penalty)` gives the weights w minimising

    sum_i [log(1 + exp(w.x_i)) - labels_i w.x_i] + 1/2 sum_j penalty_j w_j^2

for rows x (n, d), labels in {0, 1} and a penalty per feature (one number for all, or one per column:
an intercept is a column of ones that its caller may penalise less). No intercept is added. Every
penalty is positive, so the objective is strictly convex: one minimum, finite on separable data too.

Solved by Newton's method in its dual form: the weights are P^-1 X^T alpha (P the diagonal of the
penalties), so a step solves an n x n system for n rows whatever the width d (hashed words, embeddings).
A step is halved until the objective does not rise. At the minimum alpha_i = labels_i - sigmoid(w.x_i),
within [-1, 1] whatever the scale of x or of the penalties, which is what the stopping rule measures.
Deterministic: no random start, no randomness anywhere.
"""

from __future__ import annotations

import numpy as np

# Newton's method stops when a step changes no dual weight by more than NEWTON_TOLERANCE (quadratic
# convergence gets there in a handful of steps), or after NEWTON_STEPS. Step halving stops at a scale of
# NEWTON_TOLERANCE: near the minimum the objective's rounding noise can make every step look uphill.
NEWTON_STEPS = 100
NEWTON_TOLERANCE = 1e-10


def sigmoid(z: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-z)), elementwise, without overflow."""
    return np.asarray(0.5 * (1.0 + np.tanh(0.5 * np.asarray(z, dtype=np.float64))))


def fit(x: np.ndarray, labels: np.ndarray, penalty: float | np.ndarray) -> np.ndarray:
    """The weights (d,) of the L2-penalised logistic regression of `labels` (n,) in {0, 1} on rows `x` (n, d),
    with `penalty` > 0 on each weight (a scalar, or one per column of x)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise ValueError(f"logistic fit: rows {x.shape} and labels {y.shape} do not match: pass x (n, d) and labels (n,)")
    if not np.all((y == 0.0) | (y == 1.0)):
        raise ValueError(f"logistic fit: labels must be 0 or 1, got {sorted(set(y.tolist()) - {0.0, 1.0})[:5]}")
    penalties = np.asarray(penalty, dtype=np.float64)
    if penalties.ndim not in (0, 1) or (penalties.ndim == 1 and penalties.shape != (x.shape[1],)):
        raise ValueError(f"logistic fit: penalty of shape {penalties.shape} for {x.shape[1]} features: "
                         f"pass one number or one per feature")
    if not np.all(np.isfinite(penalties) & (penalties > 0)):
        raise ValueError("logistic fit: every penalty must be a positive finite number")
    if not np.all(np.isfinite(x)):
        raise ValueError("logistic fit: the rows hold a NaN or an infinity")
    scaled = x / np.broadcast_to(penalties, (x.shape[1],))  # X P^-1
    kernel = scaled @ x.T
    alpha: np.ndarray = np.zeros(len(y))

    def objective(a: np.ndarray, logits: np.ndarray) -> float:
        # the primal objective at w = P^-1 X^T a: log-losses at K a, and w^T P w / 2 = a^T K a / 2
        return float((np.logaddexp(0.0, logits) - y * logits).sum() + 0.5 * a @ logits)

    for _ in range(NEWTON_STEPS):
        logits = kernel @ alpha
        p = sigmoid(logits)
        # the gradient in alpha is K (p - y + alpha), the Hessian K (W K + I) with W = diag(p (1 - p))
        step = np.linalg.solve((p * (1.0 - p))[:, None] * kernel + np.eye(len(y)), y - p - alpha)
        logit_step = kernel @ step
        current, scale = objective(alpha, logits), 1.0
        while objective(alpha + scale * step, logits + scale * logit_step) > current and scale > NEWTON_TOLERANCE:
            scale /= 2
        alpha = alpha + scale * step
        if np.max(np.abs(scale * step), initial=0.0) < NEWTON_TOLERANCE:
            break
    return np.asarray(scaled.T @ alpha)
