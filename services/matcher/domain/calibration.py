"""Weights learned from staff decisions: a conditional-logit fit of the score weights.

Every staff decision is a choice among the mentors that were shown for a newcomer: the proposal
and its alternatives, each with its per-criterion scores as they were at proposal time.

* **accept**: staff took the proposed mentor over the alternatives shown with it;
* **choose**: staff took one of the alternatives over the proposal and the other alternatives;
* **reject**: staff turned the proposed pair down (without saying whom they would take).

The model (McFadden's conditional logit): the weighted sum of a shown mentor's criterion scores
is its utility ``u = sum_c beta_c * x_c``, and staff take mentor ``j`` among those shown with
probability ``exp(u_j) / sum_k exp(u_k)``; a rejection is the event "not the proposal", with
probability ``1 - P(proposal)``. The ``beta`` maximising the likelihood of the decisions (with
``beta >= 0`` and a small ridge penalty, so that decisions a single criterion explains
perfectly still give finite values) are scaled to sum 1: those are the fitted weights, in the
same form as the matcher's. Only differences between the mentors shown for the same newcomer
inform the fit; a criterion on which they never differ gets no weight.

Agreement of a set of weights with decisions: for each accept or choose, rank the shown mentors
by their weighted score; ``top1`` is the share of decisions whose chosen mentor ranks first (a tie
for first counts as a fraction), ``mean_rank`` the chosen mentor's mean rank (1 = first; ties
count half). The fitted weights are judged on **held-out** decisions (k-fold cross-validation:
each decision is ranked by weights fitted without it); the current weights, which were not fitted
to the decisions, are judged on all of them.

Plain Python with numpy/scipy; no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy.optimize import minimize

#: Decisions needed before a fit is reported (the contract allows at most 30).
MINIMUM_DECISIONS = 20
#: Folds of the cross-validation (fewer when there are fewer decisions).
FOLDS = 5
#: Ridge penalty per decision on the (unscaled) coefficients: keeps separable data finite.
RIDGE = 1e-4
#: Scores closer than this count as equal when ranking.
TIE = 1e-9


@dataclass(frozen=True, slots=True)
class Decision:
    """One staff decision over the mentors shown for one newcomer.

    ``shown``: the per-criterion scores of every mentor shown, the proposal first.
    ``chosen``: index (into ``shown``) of the mentor staff took (accept: 0; choose: the
    alternative's index), or None for a rejection of the proposal (index 0).
    """

    shown: tuple[Mapping[str, float], ...]
    chosen: int | None

    def __post_init__(self) -> None:
        if not self.shown:
            raise ValueError("a decision needs at least one shown mentor")
        if self.chosen is not None and not 0 <= self.chosen < len(self.shown):
            raise ValueError(f"chosen index {self.chosen} is not among {len(self.shown)} shown")

    @property
    def informative(self) -> bool:
        """Whether the decision says anything about weights: at least two mentors shown."""
        return len(self.shown) >= 2


@dataclass(frozen=True, slots=True)
class Agreement:
    """How well weights rank the mentors staff chose: share ranked first, mean rank."""

    top1: float | None
    mean_rank: float | None
    decisions: int


@dataclass(frozen=True, slots=True)
class Calibration:
    """The fit and how the current and the fitted weights agree with the decisions."""

    decisions: int
    minimum: int
    current: dict[str, float]
    current_agreement: Agreement
    fitted: dict[str, float] | None
    fitted_agreement: Agreement | None

    @property
    def missing(self) -> int:
        """Decisions still needed before a fit is reported."""
        return max(0, self.minimum - self.decisions)


def _logsumexp(values: NDArray[np.float64]) -> NDArray[np.float64]:
    """``log(sum(exp(values)))`` along the last axis, stable; -inf entries are absent options."""
    top = values.max(axis=1)
    shift = np.where(np.isfinite(top), top, 0.0)
    with np.errstate(divide="ignore"):
        result: NDArray[np.float64] = shift + np.log(np.exp(values - shift[:, None]).sum(axis=1))
    return result


class _Data:
    """Decisions as padded arrays: scores (n, k, c), which options exist (n, k), choices."""

    def __init__(self, decisions: Sequence[Decision], criteria: Sequence[str]) -> None:
        n = len(decisions)
        k = max((len(d.shown) for d in decisions), default=1)
        self.x: NDArray[np.float64] = np.zeros((n, k, len(criteria)))
        self.mask: NDArray[np.bool_] = np.zeros((n, k), dtype=np.bool_)
        self.chosen: NDArray[np.int_] = np.zeros(n, dtype=np.int_)
        self.is_choice: NDArray[np.bool_] = np.zeros(n, dtype=np.bool_)
        for i, decision in enumerate(decisions):
            for j, breakdown in enumerate(decision.shown):
                self.x[i, j] = [float(breakdown.get(c, 0.0)) for c in criteria]
                self.mask[i, j] = True
            if decision.chosen is not None:
                self.chosen[i] = decision.chosen
                self.is_choice[i] = True

    def subset(self, rows: NDArray[np.int_]) -> _Data:
        out = _Data.__new__(_Data)
        out.x, out.mask = self.x[rows], self.mask[rows]
        out.chosen, out.is_choice = self.chosen[rows], self.is_choice[rows]
        return out

    def __len__(self) -> int:
        return int(self.x.shape[0])


def _negative_log_likelihood(
    beta: NDArray[np.float64], data: _Data
) -> tuple[float, NDArray[np.float64]]:
    """Mean negative log-likelihood plus ridge, and its gradient."""
    n = len(data)
    utility = np.where(data.mask, data.x @ beta, -np.inf)  # (n, k)
    everyone = _logsumexp(utility)  # (n,)
    p = np.exp(utility - everyone[:, None])  # (n, k); 0 where absent
    expected = np.einsum("nk,nkc->nc", p, data.x)  # (n, c)
    rows = np.arange(n)
    # accept / choose: -log P(chosen)
    chosen_u = utility[rows, data.chosen]
    chosen_x = data.x[rows, data.chosen]
    # reject: -log(1 - P(proposal)) = logsumexp(all) - logsumexp(all but the proposal)
    others = utility.copy()
    others[:, 0] = -np.inf
    rest = _logsumexp(others)
    q = np.exp(others - rest[:, None])
    q = np.where(np.isfinite(others), q, 0.0)
    rest_x = np.einsum("nk,nkc->nc", q, data.x)
    loss = np.where(data.is_choice, everyone - chosen_u, everyone - rest)
    target = np.where(data.is_choice[:, None], chosen_x, rest_x)
    value = float(loss.mean() + RIDGE * beta @ beta)
    gradient = (expected - target).mean(axis=0) + 2 * RIDGE * beta
    return value, gradient


def fit_weights(decisions: Sequence[Decision], criteria: Sequence[str]) -> dict[str, float] | None:
    """The non-negative weights (summing to 1) that make the decisions most likely; None when
    no decision is informative or no criterion explains any of them."""
    usable = [d for d in decisions if d.informative]
    if not usable:
        return None
    return _fit(_Data(usable, criteria), criteria)


def objective(
    decisions: Sequence[Decision], criteria: Sequence[str]
) -> Callable[[Sequence[float]], float]:
    """The function the fit minimises (mean negative log-likelihood plus the ridge penalty) of
    the unscaled coefficients ``beta``; for checking the fit against other coefficients."""
    data = _Data([d for d in decisions if d.informative], criteria)

    def value(beta: Sequence[float]) -> float:
        return _negative_log_likelihood(np.asarray(beta, dtype=np.float64), data)[0]

    return value


def fit_coefficients(
    decisions: Sequence[Decision], criteria: Sequence[str]
) -> NDArray[np.float64] | None:
    """The unscaled coefficients ``beta >= 0`` minimising ``objective`` (None without
    informative decisions). With accepts and choices only the problem is convex, so the
    minimum found is the global one; rejections make it non-convex in general (a local
    minimum from the start at equal coefficients)."""
    usable = [d for d in decisions if d.informative]
    return _coefficients(_Data(usable, criteria), len(criteria)) if usable else None


def _coefficients(data: _Data, width: int) -> NDArray[np.float64]:
    result = minimize(
        _negative_log_likelihood,
        np.ones(width),
        args=(data,),
        jac=True,
        method="L-BFGS-B",
        bounds=[(0.0, None)] * width,
    )
    return np.clip(np.asarray(result.x, dtype=np.float64), 0.0, None)


def _fit(data: _Data, criteria: Sequence[str]) -> dict[str, float] | None:
    beta = _coefficients(data, len(criteria))
    total = float(beta.sum())
    if not np.isfinite(total) or total <= 1e-9:
        return None
    return {c: float(b / total) for c, b in zip(criteria, beta, strict=True)}


def ranks(decision: Decision, weights: Mapping[str, float]) -> tuple[float, float]:
    """(rank, first) of the chosen mentor among those shown under ``weights``: rank 1 is
    first, ties count half; ``first`` is 1 if it alone ranks first, 1/(m+1) if it ties with m
    others for first, else 0. Only for decisions with a chosen mentor."""
    if decision.chosen is None:
        raise ValueError("a rejection has no chosen mentor to rank")
    scores = [sum(w * float(b.get(c, 0.0)) for c, w in weights.items()) for b in decision.shown]
    mine = scores[decision.chosen]
    others = [s for j, s in enumerate(scores) if j != decision.chosen]
    greater = sum(1 for s in others if s > mine + TIE)
    ties = sum(1 for s in others if abs(s - mine) <= TIE)
    first = 1.0 / (1 + ties) if greater == 0 else 0.0
    return 1.0 + greater + ties / 2, first


def agreement(decisions: Sequence[Decision], weights: Mapping[str, float]) -> Agreement:
    """``top1`` and ``mean_rank`` of ``weights`` over the informative accepts and chooses."""
    ranked = [ranks(d, weights) for d in decisions if d.informative and d.chosen is not None]
    if not ranked:
        return Agreement(None, None, 0)
    return Agreement(
        top1=sum(f for _, f in ranked) / len(ranked),
        mean_rank=sum(r for r, _ in ranked) / len(ranked),
        decisions=len(ranked),
    )


def cross_validated(
    decisions: Sequence[Decision], criteria: Sequence[str], folds: int = FOLDS
) -> Agreement:
    """Agreement of fitted weights with held-out decisions: decision ``i`` goes to fold
    ``i % folds``; each fold is ranked by weights fitted on the other folds (if a fit on them
    is impossible, those decisions count with equal weights)."""
    usable = [d for d in decisions if d.informative]
    folds = max(2, min(folds, len(usable)))
    data = _Data(usable, criteria)
    held_out: list[tuple[float, float]] = []
    index = np.arange(len(usable))
    for fold in range(folds):
        train = index[index % folds != fold]
        test = [usable[i] for i in index[index % folds == fold]]
        weights = _fit(data.subset(train), criteria) if len(train) else None
        if weights is None:
            weights = {c: 1.0 / len(criteria) for c in criteria}
        held_out.extend(ranks(d, weights) for d in test if d.chosen is not None)
    if not held_out:
        return Agreement(None, None, 0)
    return Agreement(
        top1=sum(f for _, f in held_out) / len(held_out),
        mean_rank=sum(r for r, _ in held_out) / len(held_out),
        decisions=len(held_out),
    )


def calibrate(
    decisions: Sequence[Decision],
    current: Mapping[str, float],
    minimum: int = MINIMUM_DECISIONS,
    folds: int = FOLDS,
) -> Calibration:
    """The whole report: how many informative decisions, the current weights' agreement (on
    all of them), and, from ``minimum`` decisions on, the fitted weights and their held-out
    agreement. ``current``: the weights in force by criterion (any scale)."""
    criteria = list(current)
    total = sum(current.values())
    normalised = {c: (w / total if total > 0 else 0.0) for c, w in current.items()}
    usable = [d for d in decisions if d.informative]
    fitted = fit_weights(usable, criteria) if len(usable) >= minimum else None
    return Calibration(
        decisions=len(usable),
        minimum=minimum,
        current=normalised,
        current_agreement=agreement(usable, normalised),
        fitted=fitted,
        fitted_agreement=cross_validated(usable, criteria, folds) if fitted else None,
    )
