"""Statistics of A/B experiment reports: per-user counts in; arm estimates, differences, intervals,
p-values and sample sizes out.

Every metric of a report is a ratio of per-user sums: hit@10 is hits / events, NDCG@10 is the sum
of per-event NDCG / events, CTR is clicks / impressions, conversion is conversions / users (a
denominator of 1 per user). An arm's estimate is ``sum(numerators) / sum(denominators)`` over its
users.

Which test, and why
-------------------
*Users, not events, are independent.* Users are assigned to arms, and a user who likes the
recommendations hits them at every event: events of one user are correlated. An interval that treats
events as independent (binomial on the event count) is too narrow by the design effect, about
``1 + icc * (mean events per user * (1 + cv²) - 1)`` (cv: coefficient of variation of the events per
user), so it rejects too often. Here each user is one independent cluster and the variance of the
ratio comes from the delta method (linearisation), the cluster-robust variance of a ratio
estimator::

    R = Σx / Σy,   d_i = x_i - R y_i,   Var(R) ≈ Σ d_i² / (n (n - 1) ȳ²),   ȳ = Σy / n

Resampling users (a user-level bootstrap) estimates the same quantity and agrees with it
asymptotically, but it costs hundreds of resamples per metric per report and its answers jitter from
one read to the next; the delta method is closed-form, O(users) and deterministic. The bootstrap
would be the better choice for small samples or non-smooth statistics (medians, quantiles), which
these reports do not have.

*Fixed horizon.* Difference B - A: ``Var = Var_A + Var_B`` (independent arms), Wald interval
``Δ ± z_{1-α/2} se`` and two-sided z-test p-value. Valid when read once, at a sample size fixed in
advance (see :func:`users_per_arm`).

*Always valid.* Reports are read while the experiment runs; rejecting whenever a fixed-horizon
p-value dips under α at any of 10 reads makes about 20% false positives at α = 5%. The always-valid
interval is the normal-mixture mSPRT of Johari, Pekelis & Walsh ("Always valid inference", 2017)
with a plug-in variance, i.e. the asymptotic confidence sequence of Waudby-Smith et al.
("Time-uniform central limit theory and asymptotic confidence sequences", 2024), as GrowthBook
computes it. With ``v`` the estimated variance of Δ, ``t`` the users per arm so far and ``u = t ρ²``::

    Δ ± sqrt(v · (1 + u) / u · (2 log(1/α) + log(1 + u)))      (confidence sequence)
    p = min(1, sqrt(1 + u) · exp(-u / (1 + u) · z² / 2)),  z = Δ / sqrt(v)   (= 1 / mSPRT statistic)

That is the mSPRT whose alternative is the effect drawn from N(0, τ²) with ``τ² = u · v`` (the
mixing variance, in units of the effect). The tuning parameter ρ makes the sequence (nearly)
narrowest at a planned size of ``n*`` users per arm (the choice of Howard et al., "Time-uniform,
nonparametric, nonasymptotic confidence sequences", 2021, which GrowthBook also makes)::

    ρ² = (-2 log α + log(1 - 2 log α)) / n*,   so   u = c_α · t / n*,   c_α = 7.94 at α = 0.05

and only the fraction of the planned users seen so far matters. At the planned size the interval is
about 1.55 times as wide as the fixed-horizon one (α = 0.05): the price of reading it at any time.
It guards against reading after every user, so with 10 reads its false-positive rate is well under
α. Over a series of reads the report keeps the running minimum of the p-value and the running
intersection of the intervals (``previous`` of :func:`compare`).

Both intervals are asymptotic (normal approximation of a ratio of sums over users); the tests check
their error rates by simulation on clustered data.

An arm that cannot be estimated (fewer than 2 users, or a denominator total of 0) raises
``ValueError``: the report says "not enough data" rather than showing a number.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

_NORMAL = NormalDist()

Interval = tuple[float, float]


@dataclass(frozen=True)
class ArmEstimate:
    """One arm's ratio metric ``numerator_total / denominator_total`` over its users."""

    users: int
    numerator_total: float
    denominator_total: float
    mean: float
    standard_error: float  # user-level (delta method)
    ci: Interval  # fixed-horizon, 1 - alpha

    @property
    def per_user_variance(self) -> float:
        """``users * standard_error²``: the variance one user contributes, for :func:`users_per_arm`."""
        return self.users * self.standard_error**2


@dataclass(frozen=True)
class Comparison:
    """Treatment (B) against control (A) on one metric: B - A, absolute and relative."""

    control: ArmEstimate
    treatment: ArmEstimate
    difference: float  # treatment.mean - control.mean
    standard_error: float
    ci: Interval  # fixed horizon
    p_value: float  # fixed horizon, two-sided
    relative_lift: float | None  # treatment.mean / control.mean - 1; None when control.mean == 0
    relative_ci: Interval | None  # fixed horizon
    planned_fraction: float  # users per arm so far (mean of the two) / planned: the always-valid clock
    always_valid_ci: Interval
    always_valid_relative_ci: Interval | None
    always_valid_p_value: float


def estimate_arm(numerators: np.ndarray, denominators: np.ndarray, *, alpha: float = 0.05) -> ArmEstimate:
    """An arm's ratio ``sum(numerators) / sum(denominators)`` with its user-level (delta method) interval.

    ``numerators`` and ``denominators`` hold one value per user of the arm (e.g. hits and events),
    users with a denominator of 0 included: they count as users. Raises ``ValueError`` for fewer
    than 2 users, a denominator total of 0, mismatched or non-finite input, negative denominators.
    """
    _check_alpha(alpha)
    x = np.asarray(numerators, dtype=np.float64)
    y = np.asarray(denominators, dtype=np.float64)
    if x.ndim != 1 or x.shape != y.shape:
        raise ValueError("numerators and denominators must be 1-d arrays of one value per user, same length")
    if not (np.isfinite(x).all() and np.isfinite(y).all()) or (y < 0).any():
        raise ValueError("per-user sums must be finite and denominators non-negative")
    users = x.size
    if users < 2:
        raise ValueError(f"an arm needs at least 2 users for an interval, got {users}")
    numerator_total, denominator_total = float(x.sum()), float(y.sum())
    if denominator_total <= 0:
        raise ValueError("the arm's denominator total is 0 (no events): its rate is undefined")
    mean = numerator_total / denominator_total
    residuals = x - mean * y  # sums to 0: each user's linearised contribution, times mean(y)
    mean_denominator = denominator_total / users
    standard_error = math.sqrt(float(residuals @ residuals) / (users * (users - 1))) / mean_denominator
    return ArmEstimate(
        users=users,
        numerator_total=numerator_total,
        denominator_total=denominator_total,
        mean=mean,
        standard_error=standard_error,
        ci=_wald(mean, standard_error, _z(alpha)),
    )


def compare(
    control: ArmEstimate,
    treatment: ArmEstimate,
    *,
    planned_users_per_arm: int,
    alpha: float = 0.05,
    previous: Comparison | None = None,
) -> Comparison:
    """B - A with fixed-horizon and always-valid intervals and p-values (module docstring: formulas).

    ``planned_users_per_arm`` is the size the experiment was planned for (:func:`users_per_arm`):
    the always-valid interval is narrowest there (next to the fixed-horizon one), and valid at any size.
    ``previous`` is this metric's comparison at the report's previous read, if any: the always-valid
    p-value is then the running minimum and the always-valid intervals the running intersection.
    The relative fields are None when the control's mean is 0.
    """
    _check_alpha(alpha)
    if planned_users_per_arm < 1:
        raise ValueError("planned_users_per_arm must be at least 1")
    difference = treatment.mean - control.mean
    standard_error = math.hypot(control.standard_error, treatment.standard_error)
    z = _z(alpha)
    fraction = (control.users + treatment.users) / (2 * planned_users_per_arm)
    u = _mixture_u(alpha, fraction)

    relative_lift = relative_ci = always_valid_relative_ci = None
    if control.mean != 0:
        relative_lift = treatment.mean / control.mean - 1
        # Delta method for the ratio of two independent means.
        relative_se = math.hypot(
            treatment.standard_error / control.mean,
            treatment.mean * control.standard_error / control.mean**2,
        )
        relative_ci = _wald(relative_lift, relative_se, z)
        always_valid_relative_ci = _wald(relative_lift, relative_se, _always_valid_z(alpha, u))

    always_valid_ci = _wald(difference, standard_error, _always_valid_z(alpha, u))
    always_valid_p_value = _always_valid_p_value(difference, standard_error, u)
    if previous is not None:
        if previous.planned_fraction > fraction:
            raise ValueError("previous is a later read than this one (it had more users)")
        always_valid_p_value = min(always_valid_p_value, previous.always_valid_p_value)
        always_valid_ci = _intersect(always_valid_ci, previous.always_valid_ci)
        if always_valid_relative_ci is not None and previous.always_valid_relative_ci is not None:
            always_valid_relative_ci = _intersect(always_valid_relative_ci, previous.always_valid_relative_ci)

    return Comparison(
        control=control,
        treatment=treatment,
        difference=difference,
        standard_error=standard_error,
        ci=_wald(difference, standard_error, z),
        p_value=_two_sided_p_value(difference, standard_error),
        relative_lift=relative_lift,
        relative_ci=relative_ci,
        planned_fraction=fraction,
        always_valid_ci=always_valid_ci,
        always_valid_relative_ci=always_valid_relative_ci,
        always_valid_p_value=always_valid_p_value,
    )


def users_per_arm(
    baseline_rate: float,
    relative_lift: float,
    per_user_variance: float,
    *,
    alpha: float = 0.05,
    power: float = 0.8,
    always_valid: bool = False,
) -> int:
    """Users per arm for a two-sided test at ``alpha`` to detect ``relative_lift`` with ``power``.

    ``baseline_rate`` is the control's ratio metric and ``per_user_variance`` its per-user variance
    (:attr:`ArmEstimate.per_user_variance` of a baseline period, or :func:`per_user_variance_from_icc`).
    The lift is assumed to scale every user's rate, so the treatment's per-user standard deviation is
    ``(1 + lift)`` times the control's (a constant coefficient of variation; conservative when part
    of the variance is binomial noise, which grows more slowly)::

        n = ⌈(z_{1-α/2} + z_power)² · σ² · (1 + (1 + lift)²) / (baseline_rate · lift)²⌉

    That is for the fixed-horizon test, read once at ``n``. With ``always_valid`` it is for the
    always-valid test planned for its own size (``planned_users_per_arm=n``): ``z_{1-α/2}`` becomes
    the sequence's multiplier at the planned size (3.04 instead of 1.96 at α = 0.05), about 1.9
    times the users, for ``power`` at the last read; earlier reads only add to it.
    """
    _check_alpha(alpha)
    if not 0 < power < 1:
        raise ValueError("power must be in (0, 1)")
    if baseline_rate <= 0 or per_user_variance <= 0:
        raise ValueError("baseline_rate and per_user_variance must be positive")
    if relative_lift == 0 or relative_lift <= -1:
        raise ValueError("relative_lift must be non-zero and above -1")
    effect = baseline_rate * relative_lift
    variance_sum = per_user_variance * (1 + (1 + relative_lift) ** 2)
    critical = _always_valid_z(alpha, _mixture_u(alpha, 1.0)) if always_valid else _z(alpha)
    return math.ceil((critical + _NORMAL.inv_cdf(power)) ** 2 * variance_sum / effect**2)


def per_user_variance_from_icc(
    rate: float, events_per_user: float, icc: float, events_per_user_cv: float = 0.0
) -> float:
    """Per-user variance of a rate of yes/no events (hit or not) whose users differ: for :func:`users_per_arm`.

    ``icc`` is the intra-user correlation of two events of one user (the share of the variance of an
    event that is between users); ``events_per_user`` the mean number of events of a user (users
    without events included) and ``events_per_user_cv`` its coefficient of variation. With the
    number of events independent of the user's rate::

        σ² = rate (1 - rate) / m · (1 + icc · (m (1 + cv²) - 1))

    i.e. the binomial variance of one user's events times the design effect.
    """
    if not 0 < rate < 1 or events_per_user <= 0 or not 0 <= icc <= 1 or events_per_user_cv < 0:
        raise ValueError("need 0 < rate < 1, events_per_user > 0, 0 <= icc <= 1, events_per_user_cv >= 0")
    design_effect = 1 + icc * (events_per_user * (1 + events_per_user_cv**2) - 1)
    return rate * (1 - rate) / events_per_user * design_effect


def _check_alpha(alpha: float) -> None:
    if not 0 < alpha < 1:
        raise ValueError("alpha must be in (0, 1)")


def _z(alpha: float) -> float:
    return _NORMAL.inv_cdf(1 - alpha / 2)


def _wald(estimate: float, standard_error: float, z: float) -> Interval:
    return (estimate - z * standard_error, estimate + z * standard_error)


def _two_sided_p_value(estimate: float, standard_error: float) -> float:
    if standard_error == 0:
        return 1.0 if estimate == 0 else 0.0
    return 2 * _NORMAL.cdf(-abs(estimate) / standard_error)


def _mixture_u(alpha: float, fraction: float) -> float:
    """``t ρ²`` with ρ tuned for the planned size: ``(-2 log α + log(1 - 2 log α)) · t / n*``."""
    c = -2 * math.log(alpha) + math.log(1 - 2 * math.log(alpha))
    return c * max(fraction, 1e-12)


def _always_valid_z(alpha: float, u: float) -> float:
    """Half-width of the confidence sequence in standard errors (1.96 becomes ~3.04 at u = c_α)."""
    return math.sqrt((1 + u) / u * (2 * math.log(1 / alpha) + math.log1p(u)))


def _always_valid_p_value(estimate: float, standard_error: float, u: float) -> float:
    """1 / the mSPRT statistic, capped at 1: at most alpha exactly when 0 is outside the sequence."""
    if standard_error == 0:
        return 1.0 if estimate == 0 else 0.0
    z = estimate / standard_error
    log_p = 0.5 * math.log1p(u) - u / (1 + u) * z * z / 2
    return math.exp(min(0.0, log_p))


def _intersect(current: Interval, previous: Interval) -> Interval:
    low, high = max(current[0], previous[0]), min(current[1], previous[1])
    # Disjoint only if the sequence failed to cover; then the current read is the one to show.
    return (low, high) if low <= high else current
