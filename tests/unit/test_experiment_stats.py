"""Statistics of A/B experiment reports (streamrec.shared.experiment_stats): hand-worked values and
edge cases, then error rates measured by simulation on generated users whose events are correlated
(each user has a hit rate of their own and a random number of events).

The simulations use fixed seeds; the bounds hold with margin for other seeds too (measured with
several when these tests were written, see the commit message).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest

from streamrec.shared.experiment_stats import (
    ArmEstimate,
    Comparison,
    compare,
    estimate_arm,
    per_user_variance_from_icc,
    users_per_arm,
)

SEED = 20240611
ALPHA = 0.05
Z = 1.959963984540054


@dataclass(frozen=True)
class Population:
    """Users of one arm: hit@10 of an event ~ Bernoulli(the user's rate), rate ~ Beta, events ~ NB."""

    rate: float = 0.3  # mean hit@10 of an event
    icc: float = 0.05  # correlation of the hits of two events of one user
    mean_events: float = 10.0  # events per user, users without events included
    events_shape: float = 1.5  # negative binomial shape: events_cv² = 1 / mean + 1 / shape

    @property
    def events_cv(self) -> float:
        return math.sqrt(1 / self.mean_events + 1 / self.events_shape)

    def per_user_variance(self) -> float:
        return per_user_variance_from_icc(self.rate, self.mean_events, self.icc, self.events_cv)


POPULATION = Population()


def simulate(
    rng: np.random.Generator, shape: tuple[int, ...], population: Population = POPULATION, lift: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """(hits, events) per user, arrays of ``shape`` (users last); ``lift`` scales every user's rate."""
    p = population
    events = rng.negative_binomial(p.events_shape, p.events_shape / (p.events_shape + p.mean_events), shape)
    concentration = 1 / p.icc - 1  # Beta(a, b) with a + b + 1 = 1 / icc
    rates = rng.beta(p.rate * concentration, (1 - p.rate) * concentration, shape)
    hits = rng.binomial(events, np.minimum(rates * (1 + lift), 1.0))  # rates above 1/1.1: ~1e-10
    return hits, events


def arm(numerators: list[float], denominators: list[float]) -> ArmEstimate:
    return estimate_arm(np.array(numerators), np.array(denominators))


def made_arm(mean: float, standard_error: float, users: int = 1000) -> ArmEstimate:
    """An estimate with a chosen mean and standard error (for the formulas of ``compare``)."""
    ci = (mean - Z * standard_error, mean + Z * standard_error)
    return ArmEstimate(users, mean * users, float(users), mean, standard_error, ci)


# --- hand-worked values ------------------------------------------------------------------------


def test_an_arm_is_the_ratio_of_sums_with_the_delta_method_standard_error() -> None:
    # R = 4/6; residuals x - R y = -1/3, -2/3, 1; Var = (14/9) / (3 * 2) / mean(y)² = 14/216.
    estimate = arm([1, 0, 3], [2, 1, 3])
    assert estimate.users == 3 and estimate.numerator_total == 4 and estimate.denominator_total == 6
    assert estimate.mean == pytest.approx(2 / 3)
    assert estimate.standard_error == pytest.approx(math.sqrt(14 / 216))
    assert estimate.ci == pytest.approx((2 / 3 - Z * math.sqrt(14 / 216), 2 / 3 + Z * math.sqrt(14 / 216)))
    assert estimate.per_user_variance == pytest.approx(3 * 14 / 216)


def test_the_standard_error_is_the_textbook_delta_method_of_a_ratio_of_means() -> None:
    hits, events = simulate(np.random.default_rng(SEED), (500,))
    estimate = estimate_arm(hits, events)
    covariance = np.cov(hits, events)  # ddof 1
    r, mean_events = estimate.mean, events.mean()
    variance = (covariance[0, 0] - 2 * r * covariance[0, 1] + r**2 * covariance[1, 1]) / (
        500 * mean_events**2
    )
    assert estimate.standard_error == pytest.approx(math.sqrt(variance), rel=1e-9)


def test_the_comparison_is_treatment_minus_control_with_both_variances() -> None:
    result = compare(made_arm(0.20, 0.003), made_arm(0.22, 0.004), planned_users_per_arm=1000)
    assert result.difference == pytest.approx(0.02) and result.standard_error == pytest.approx(0.005)
    assert result.ci == pytest.approx((0.02 - Z * 0.005, 0.02 + Z * 0.005))
    assert result.p_value == pytest.approx(6.334e-5, rel=1e-3)  # z = 4
    assert result.relative_lift == pytest.approx(0.1)
    relative_se = math.hypot(0.004 / 0.2, 0.22 * 0.003 / 0.2**2)
    assert result.relative_ci == pytest.approx((0.1 - Z * relative_se, 0.1 + Z * relative_se))
    assert result.planned_fraction == 1.0


def test_the_always_valid_interval_is_the_normal_mixture_boundary_tuned_for_the_planned_size() -> None:
    # u = t rho^2 = c_alpha at the planned size; half-width sqrt((1 + u) / u * (2 log(1/alpha) + log(1 + u))) se.
    c = -2 * math.log(ALPHA) + math.log(1 - 2 * math.log(ALPHA))
    at_plan = compare(made_arm(0.2, 0.003), made_arm(0.21, 0.004), planned_users_per_arm=1000)
    multiplier = math.sqrt((1 + c) / c * (2 * math.log(1 / ALPHA) + math.log1p(c)))
    assert at_plan.always_valid_ci == pytest.approx((0.01 - multiplier * 0.005, 0.01 + multiplier * 0.005))
    assert multiplier / Z == pytest.approx(1.549, abs=1e-3)  # the price of reading at any time

    def half_width(planned_users_per_arm: int) -> float:
        low, high = compare(
            made_arm(0.2, 0.003), made_arm(0.21, 0.004), planned_users_per_arm=planned_users_per_arm
        ).always_valid_ci
        return (high - low) / 2

    # For these 1000 users per arm the sequence is (nearly) narrowest when they are the planned size.
    widths = {planned: half_width(planned) for planned in (100, 300, 700, 1000, 1500, 3000, 10_000)}
    assert widths[1000] == pytest.approx(min(widths.values()), rel=0.005)
    assert all(width > Z * 0.005 for width in widths.values())  # always wider than the fixed interval


def test_the_always_valid_p_value_is_below_alpha_exactly_when_zero_is_outside_the_sequence() -> None:
    rng = np.random.default_rng(SEED)
    for difference, se, planned in zip(
        rng.normal(0, 0.02, 500), rng.uniform(0.001, 0.01, 500), rng.integers(100, 5000, 500), strict=True
    ):
        result = compare(
            made_arm(0.2, se / 2), made_arm(0.2 + difference, se / 2), planned_users_per_arm=planned
        )
        low, high = result.always_valid_ci
        assert (result.always_valid_p_value <= ALPHA) == (low > 0 or high < 0)
        assert result.always_valid_p_value >= result.p_value  # never more significant than a single look


def test_a_series_of_reads_keeps_the_smallest_p_value_and_the_intersection_of_the_intervals() -> None:
    first = compare(made_arm(0.20, 0.004, 500), made_arm(0.23, 0.004, 500), planned_users_per_arm=1000)
    second = compare(
        made_arm(0.20, 0.003, 1000), made_arm(0.205, 0.003, 1000), planned_users_per_arm=1000, previous=first
    )
    alone = compare(made_arm(0.20, 0.003, 1000), made_arm(0.205, 0.003, 1000), planned_users_per_arm=1000)
    assert second.always_valid_p_value == min(first.always_valid_p_value, alone.always_valid_p_value)
    assert second.always_valid_ci == (
        max(first.always_valid_ci[0], alone.always_valid_ci[0]),
        min(first.always_valid_ci[1], alone.always_valid_ci[1]),
    )
    assert second.p_value == alone.p_value and second.ci == alone.ci  # fixed horizon: this read only
    with pytest.raises(ValueError, match="later read"):
        compare(
            made_arm(0.2, 0.004, 500), made_arm(0.2, 0.004, 500), planned_users_per_arm=1000, previous=second
        )


def test_the_sample_size_formula() -> None:
    # (1.96 + 0.8416)² * 0.05 * (1 + 1.1²) / (0.2 * 0.1)² = 2168.25
    assert users_per_arm(0.2, 0.1, 0.05) == 2169
    assert users_per_arm(0.2, 0.1, 0.05, power=0.9) > 2169 and users_per_arm(0.2, 0.2, 0.05) < 2169 / 3
    # Binomial variance times the design effect: 0.16 / 8 * (1 + 0.5 * (8 * 1.25 - 1)).
    assert per_user_variance_from_icc(0.2, 8, 0.5, 0.5) == pytest.approx(0.02 * 5.5)
    assert per_user_variance_from_icc(0.2, 1, 0.0) == pytest.approx(0.16)


def test_the_design_effect_formula_matches_the_simulated_users() -> None:
    hits, events = simulate(np.random.default_rng(SEED), (200_000,))
    measured = estimate_arm(hits, events).per_user_variance
    assert measured == pytest.approx(POPULATION.per_user_variance(), rel=0.05)


# --- edge cases ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("numerators", "denominators", "message"),
    [
        ([], [], "at least 2 users"),
        ([1], [3], "at least 2 users"),
        ([0, 0, 0], [0, 0, 0], "denominator total is 0"),
        ([1, 2], [3], "same length"),
        ([1, 2], [3, -1], "non-negative"),
        ([1, math.nan], [3, 4], "finite"),
    ],
)
def test_an_arm_that_cannot_be_estimated_is_a_value_error(
    numerators: list[float], denominators: list[float], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        arm(numerators, denominators)


def test_users_without_events_count_as_users() -> None:
    with_idle = arm([1, 0, 3, 0], [2, 1, 3, 0])
    assert with_idle.users == 4 and with_idle.mean == pytest.approx(2 / 3)


def test_a_control_mean_of_zero_has_no_relative_lift() -> None:
    result = compare(arm([0, 0, 0], [2, 1, 3]), arm([1, 0, 3], [2, 1, 3]), planned_users_per_arm=10)
    assert (
        result.relative_lift is None
        and result.relative_ci is None
        and result.always_valid_relative_ci is None
    )
    assert result.difference == pytest.approx(2 / 3)


def test_identical_constant_arms_are_no_difference() -> None:
    result = compare(arm([1, 1], [2, 2]), arm([1, 1], [2, 2]), planned_users_per_arm=10)
    assert result.difference == 0 and result.p_value == 1 and result.always_valid_p_value == 1
    assert result.ci == (0, 0) and result.always_valid_ci == (0, 0)


@pytest.mark.parametrize(
    "arguments",
    [(0.0, 0.1, 0.05), (0.2, 0.0, 0.05), (0.2, -1.0, 0.05), (0.2, 0.1, 0.0)],
)
def test_an_impossible_plan_is_a_value_error(arguments: tuple[float, float, float]) -> None:
    with pytest.raises(ValueError):
        users_per_arm(*arguments)


def test_bad_alpha_or_plan_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="alpha"):
        estimate_arm(np.ones(3), np.ones(3), alpha=1.0)
    with pytest.raises(ValueError, match="planned_users_per_arm"):
        compare(made_arm(0.2, 0.01), made_arm(0.2, 0.01), planned_users_per_arm=0)


def test_a_seeded_simulation_gives_the_same_report() -> None:
    def report(seed: int) -> Comparison:
        hits, events = simulate(np.random.default_rng(seed), (2, 300))
        control, treatment = estimate_arm(hits[0], events[0]), estimate_arm(hits[1], events[1])
        return compare(control, treatment, planned_users_per_arm=300)

    assert report(SEED) == report(SEED)
    assert report(SEED) != report(SEED + 1)


# --- error rates by simulation -------------------------------------------------------------------

AA_EXPERIMENTS = 2000
AA_USERS = 1000  # per arm, at the last of the 10 reads
LOOKS = 10


@dataclass(frozen=True)
class Reads:
    """A/A experiments read after every 10% of their users: one row per experiment, one column per read."""

    p_values: np.ndarray  # fixed horizon
    always_valid_p_values: np.ndarray  # of each read alone
    running_always_valid_p_values: np.ndarray  # with previous=: the running minimum
    final_arms: list[ArmEstimate]  # both arms of every experiment, at the last read
    naive_covers: np.ndarray  # per-event binomial interval of the same arms covers the true rate


def read_aa_experiments(seed: int) -> Reads:
    hits, events = simulate(np.random.default_rng(seed), (2, AA_EXPERIMENTS, AA_USERS))
    shape = (AA_EXPERIMENTS, LOOKS)
    p_values, always_valid, running = np.empty(shape), np.empty(shape), np.empty(shape)
    final_arms = []
    for experiment in range(AA_EXPERIMENTS):
        previous = None
        for look in range(LOOKS):
            users = AA_USERS * (look + 1) // LOOKS  # users arrive in order
            control = estimate_arm(hits[0, experiment, :users], events[0, experiment, :users])
            treatment = estimate_arm(hits[1, experiment, :users], events[1, experiment, :users])
            alone = compare(control, treatment, planned_users_per_arm=AA_USERS)
            previous = compare(control, treatment, planned_users_per_arm=AA_USERS, previous=previous)
            p_values[experiment, look] = alone.p_value
            always_valid[experiment, look] = alone.always_valid_p_value
            running[experiment, look] = previous.always_valid_p_value
        final_arms += [control, treatment]
    # The interval that treats events as independent: binomial on the arm's event count.
    rate = hits.sum(axis=2) / events.sum(axis=2)
    naive_half_width = Z * np.sqrt(rate * (1 - rate) / events.sum(axis=2))
    naive_covers = np.abs(rate - POPULATION.rate) <= naive_half_width
    return Reads(p_values, always_valid, running, final_arms, naive_covers.ravel())


@pytest.fixture(scope="module")
def aa_reads() -> Reads:
    return read_aa_experiments(SEED)


def test_fixed_horizon_false_positive_rate_is_near_alpha(aa_reads: Reads) -> None:
    false_positives = np.mean(aa_reads.p_values[:, -1] < ALPHA)
    assert 0.03 <= false_positives <= 0.07, false_positives


def test_reading_the_fixed_horizon_p_value_at_every_look_inflates_false_positives(aa_reads: Reads) -> None:
    # Why the report needs the always-valid interval: stopping at the first p < 0.05 of 10 reads.
    false_positives = np.mean((aa_reads.p_values < ALPHA).any(axis=1))
    assert false_positives > 0.07, false_positives


def test_always_valid_false_positive_rate_at_any_of_ten_looks_stays_under_alpha(aa_reads: Reads) -> None:
    rejected_at_any_look = (aa_reads.always_valid_p_values <= ALPHA).any(axis=1)
    assert np.mean(rejected_at_any_look) <= 0.07, np.mean(rejected_at_any_look)
    # The running p-value of the last read says the same as "rejected at any look".
    assert ((aa_reads.running_always_valid_p_values[:, -1] <= ALPHA) == rejected_at_any_look).all()
    assert (np.diff(aa_reads.running_always_valid_p_values, axis=1) <= 0).all()


def test_user_level_interval_covers_an_arm_mean_and_the_per_event_one_does_not(aa_reads: Reads) -> None:
    covered = np.mean([a.ci[0] <= POPULATION.rate <= a.ci[1] for a in aa_reads.final_arms])
    assert 0.93 <= covered <= 0.97, covered
    # Same arms, events taken as independent: too narrow by the design effect (~1.8 here).
    assert np.mean(aa_reads.naive_covers) < 0.90, np.mean(aa_reads.naive_covers)


LIFT = 0.10
POWER_EXPERIMENTS = 6000  # power is planned at 80%: the measurement must be precise (se 0.5%)
ALWAYS_VALID_POWER_EXPERIMENTS = 1000
BATCH = 500  # experiments simulated at once, to keep the arrays small


def run_lift_experiments(seed: int, experiments: int, always_valid: bool = False) -> list[Comparison]:
    """Experiments with a true 10% lift of hit@10, at the size ``users_per_arm`` recommends for them.

    Fixed horizon: one read at the end. Always valid: a read after every 10% of the users, each with
    the previous one; the comparison of the last read is returned.
    """
    users = users_per_arm(POPULATION.rate, LIFT, POPULATION.per_user_variance(), always_valid=always_valid)
    reads = [users * (look + 1) // LOOKS for look in range(LOOKS)] if always_valid else [users]
    rng = np.random.default_rng(seed)
    comparisons = []
    for _ in range(experiments // BATCH):
        control_hits, control_events = simulate(rng, (BATCH, users))
        treatment_hits, treatment_events = simulate(rng, (BATCH, users), lift=LIFT)
        for experiment in range(BATCH):
            previous = None
            for seen in reads:
                control = estimate_arm(control_hits[experiment, :seen], control_events[experiment, :seen])
                treatment = estimate_arm(
                    treatment_hits[experiment, :seen], treatment_events[experiment, :seen]
                )
                previous = compare(control, treatment, planned_users_per_arm=users, previous=previous)
            comparisons.append(previous)
    return comparisons


@pytest.fixture(scope="module")
def lift_comparisons() -> list[Comparison]:
    return run_lift_experiments(SEED + 1, POWER_EXPERIMENTS)


def test_the_recommended_sample_size_has_the_planned_power(lift_comparisons: list[Comparison]) -> None:
    assert lift_comparisons[0].control.users == users_per_arm(
        POPULATION.rate, LIFT, POPULATION.per_user_variance()
    )
    # Planned for 80%. The treatment's per-user variance is planned as (1 + lift)² times the control's;
    # here it is 1.12 times (part of it is binomial noise), which puts the expected power at 81.5%.
    power = np.mean([c.p_value < ALPHA and c.difference > 0 for c in lift_comparisons])
    assert power >= 0.80, power


def test_the_relative_lift_interval_covers_the_true_lift(lift_comparisons: list[Comparison]) -> None:
    covered = np.mean(
        [c.relative_ci[0] <= LIFT <= c.relative_ci[1] for c in lift_comparisons if c.relative_ci]
    )
    assert 0.93 <= covered <= 0.97, covered


def test_the_always_valid_sample_size_has_the_planned_power_over_ten_reads() -> None:
    comparisons = run_lift_experiments(SEED + 2, ALWAYS_VALID_POWER_EXPERIMENTS, always_valid=True)
    fixed_horizon_users = users_per_arm(POPULATION.rate, LIFT, POPULATION.per_user_variance())
    assert 1.8 < comparisons[0].control.users / fixed_horizon_users < 2.0
    power = np.mean([c.always_valid_p_value <= ALPHA and c.difference > 0 for c in comparisons])
    assert power >= 0.80, power
