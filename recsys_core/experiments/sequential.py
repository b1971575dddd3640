"""Always-valid inference for a difference in means: the mixture sequential probability ratio test (mSPRT) with a
normal mixture, and its confidence sequence.

Reference: R. Johari, P. Koomen, L. Pekelis, D. Walsh, "Always Valid Inference: Continuous Monitoring of A/B Tests",
Operations Research 70(3), 2022 (arXiv:1512.04922). For an estimate `delta` of the difference with variance `v`
(normal approximation, v = var_B/n_B + var_A/n_A) and a N(0, tau^2) mixing distribution over the true difference,
the mixture likelihood ratio against H0: difference = 0 is

    Lambda = sqrt(v / (v + tau^2)) * exp(delta^2 tau^2 / (2 v (v + tau^2)))

and by Ville's inequality P(Lambda ever >= 1/alpha | H0) <= alpha, so the analysis may be re-run after every new
user without inflating false positives. The always-valid p-value is the running minimum of min(1, 1/Lambda); the
confidence sequence is every difference d not rejected, delta +- sqrt(v (v + tau^2) / tau^2 * (log((v + tau^2) / v)
+ 2 log(1/alpha))), the normal-mixture boundary of Howard et al., "Time-uniform, nonparametric, nonasymptotic
confidence sequences", Ann. Statist. 49(2), 2021.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class SequentialResult:
    delta: float
    variance: float
    likelihood_ratio: float
    p_value: float  # always-valid (running minimum when `previous_p` is given)
    ci_low: float
    ci_high: float
    rejects: bool


def mixture_likelihood_ratio(delta: float, variance: float, tau: float) -> float:
    """Lambda of the normal-mixture SPRT (computed in logs, capped at 1e300)."""
    if variance <= 0 or tau <= 0:
        raise ValueError(f"variance and tau must be > 0, got variance={variance}, tau={tau}")
    t2 = tau * tau
    log_lr = 0.5 * math.log(variance / (variance + t2)) + delta * delta * t2 / (2 * variance * (variance + t2))
    return math.exp(min(log_lr, 690.0))


def confidence_half_width(variance: float, tau: float, alpha: float) -> float:
    t2 = tau * tau
    return math.sqrt(variance * (variance + t2) / t2 * (math.log((variance + t2) / variance) + 2 * math.log(1 / alpha)))


def msprt(delta: float, variance: float, *, tau: float, alpha: float = 0.05, previous_p: float = 1.0) -> SequentialResult:
    """One look at the data; `previous_p` is the always-valid p-value of the previous look (1 at the first)."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    lr = mixture_likelihood_ratio(delta, variance, tau)
    p = min(previous_p, 1.0, 1.0 / lr)
    half = confidence_half_width(variance, tau, alpha)
    return SequentialResult(delta, variance, lr, p, delta - half, delta + half, p <= alpha)


def users_per_arm_for_power(
    effect: float, sd_a: float, sd_b: float, *, tau: float, alpha: float = 0.05, power: float = 0.8, max_users: int = 10**9
) -> int:
    """Power analysis of this test: the smallest n per arm at which a single look already rejects with probability
    `power` when the true difference is `effect` (per-user sds `sd_a`, `sd_b`): |effect| >= half-width + z_power * sd.
    Continuous monitoring can only stop earlier, so this is an upper bound on the sample the test needs."""
    from scipy.stats import norm

    z = float(norm.ppf(power))

    def enough(n: int) -> bool:
        variance = (sd_a**2 + sd_b**2) / n
        return abs(effect) >= confidence_half_width(variance, tau, alpha) + z * math.sqrt(variance)

    if effect == 0 or not enough(max_users):
        return max_users
    low, high = 1, 1
    while not enough(high):
        low, high = high, high * 2
    while low < high:
        mid = (low + high) // 2
        low, high = (mid + 1, high) if not enough(mid) else (low, mid)
    return high
