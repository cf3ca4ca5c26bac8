"""Divergences: binarised ones between chunk log-likelihoods (ALM), and ones between
full next-token distributions (the DSKD and MinED baselines).

Binarised divergences (`alm_diff_fn`) take `log_y_true` (teacher) and `log_y_pred`
(student), elementwise log-probabilities `<= 0`, and compare the Bernoulli
distributions `(y, 1 - y)`; most first sharpen by the binarisation temperature
(`log y / T`, i.e. `y ** (1/T)`), which keeps long chunks (tiny `y`) from all
collapsing to zero. The small `epsilon` keeps `log(1 - y)` finite at `y = 1`.

Distribution divergences take student and teacher logits `[..., V]` and return one
value per position `[...]`.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

BINARY_EPSILON = 1e-6
SKEW_EPSILON = 1e-9


def log1mexp(x: jax.Array) -> jax.Array:
    """log(1 - exp(x)) for x < 0, accurate on both sides of log(1/2)."""
    return jnp.where(x < -jnp.log(2.0), jnp.log1p(-jnp.exp(x)), jnp.log(-jnp.expm1(x)))


def _sharpen(log_y: jax.Array, temp: float) -> jax.Array:
    return log_y.astype(jnp.float32) / temp - BINARY_EPSILON


def binary_ce(log_y_true, log_y_pred, *, temp: float, renyi_alpha: float):
    """Cross-entropy of the sharpened Bernoulli(y_pred) under Bernoulli(y_true)."""
    del renyi_alpha
    t, p = _sharpen(log_y_true, temp), _sharpen(log_y_pred, temp)
    return -(jnp.exp(t) * p + (-jnp.expm1(t)) * log1mexp(p))


def reverse_binary_kl(log_y_true, log_y_pred, *, temp: float, renyi_alpha: float):
    """KL(Bernoulli(y_pred) || Bernoulli(y_true)) of the sharpened probabilities."""
    del renyi_alpha
    t, p = _sharpen(log_y_true, temp), _sharpen(log_y_pred, temp)
    return jnp.exp(p) * (p - t) + (-jnp.expm1(p)) * (log1mexp(p) - log1mexp(t))


def binary_kl_temp_limit(log_y_true, log_y_pred, *, temp: float, renyi_alpha: float):
    """The binary KL's leading behaviour as the temperature goes to infinity (no temp).

    Written `t * (log(-p) - log(-t))`: the upstream's `t log(-p) - t log(-t)` overflows
    to `-inf - -inf = NaN` at the large-negative fill of empty chunks.
    """
    del temp, renyi_alpha
    t, p = log_y_true - BINARY_EPSILON, log_y_pred - BINARY_EPSILON
    return (t - p) + t * (jnp.log(-p) - jnp.log(-t))


def absolute(log_y_true, log_y_pred, *, temp: float, renyi_alpha: float):
    """|log y_true - log y_pred| (no temperature)."""
    del temp, renyi_alpha
    return jnp.abs(log_y_true - log_y_pred)


def abs_exp(log_y_true, log_y_pred, *, temp: float, renyi_alpha: float):
    """|y_true - y_pred| of the sharpened probabilities."""
    del renyi_alpha
    return jnp.abs(jnp.exp(_sharpen(log_y_true, temp)) - jnp.exp(_sharpen(log_y_pred, temp)))


def renyi(log_y_true, log_y_pred, *, temp: float, renyi_alpha: float):
    """Rényi divergence of order alpha between the (unsharpened) Bernoullis."""
    del temp
    t = log_y_true.astype(jnp.float32) - BINARY_EPSILON
    p = log_y_pred.astype(jnp.float32) - BINARY_EPSILON
    a = renyi_alpha
    first = a * t + (1 - a) * p
    second = a * jnp.log1p(-jnp.exp(t)) + (1 - a) * jnp.log1p(-jnp.exp(p))
    return jnp.logaddexp(first, second) / (a - 1)


def joschu_k2(log_y_true, log_y_pred, *, temp: float, renyi_alpha: float):
    """Schulman's k2 KL estimator, (log r)^2 / 2 with log r = (log y_true - log y_pred) / T."""
    del renyi_alpha
    log_ratio = (log_y_true - log_y_pred) / temp
    return log_ratio**2 / 2


def joschu_k3(log_y_true, log_y_pred, *, temp: float, renyi_alpha: float):
    """Schulman's k3 KL estimator, (r - 1) - log r."""
    del renyi_alpha
    log_ratio = (log_y_true - log_y_pred) / temp
    return jnp.expm1(log_ratio) - log_ratio


BinaryDivergence = Callable[..., jax.Array]

BINARY_DIVERGENCES: dict[str, BinaryDivergence] = {
    "binary_ce": binary_ce,
    "abs": absolute,
    "reverse_binary_kl": reverse_binary_kl,
    "binary_kl_temp_limit": binary_kl_temp_limit,
    "abs_exp": abs_exp,
    "renyi": renyi,
    "joschu_k2": joschu_k2,
    "joschu_k3": joschu_k3,
}
# Divergences that are 0 when the two log-likelihoods are equal (up to the epsilon):
# binary_ce is a cross-entropy (it is the entropy there), renyi's sign convention
# makes it non-zero.
ZERO_AT_EQUALITY = ("abs", "reverse_binary_kl", "binary_kl_temp_limit", "abs_exp", "joschu_k2", "joschu_k3")


# --- divergences between next-token distributions (DSKD, MinED) -------------------


def _temper(student_logits, teacher_logits, kd_temp, teacher_temp):
    student = student_logits / kd_temp
    teacher = teacher_logits / kd_temp / teacher_temp
    return student, teacher


def forward_kl(student_logits, teacher_logits, *, kd_temp: float, teacher_temp: float = 1.0, **_):
    """KL(teacher || student) per position, both softened by `kd_temp`."""
    s, t = _temper(student_logits, teacher_logits, kd_temp, teacher_temp)
    kl = jax.nn.softmax(t, -1) * (jax.nn.log_softmax(t, -1) - jax.nn.log_softmax(s, -1))
    return jnp.where(jnp.isinf(s), 0.0, kl).sum(-1)


def reverse_kl(student_logits, teacher_logits, *, kd_temp: float, teacher_temp: float = 1.0, **_):
    """KL(student || teacher) per position."""
    s, t = _temper(student_logits, teacher_logits, kd_temp, teacher_temp)
    kl = jax.nn.softmax(s, -1) * (jax.nn.log_softmax(s, -1) - jax.nn.log_softmax(t, -1))
    return jnp.where(jnp.isinf(s) | jnp.isinf(t), 0.0, kl).sum(-1)


def skewed_forward_kl(
    student_logits, teacher_logits, *, kd_temp: float, skew_lambda: float, teacher_temp: float = 1.0, **_
):
    """KL(teacher || lambda teacher + (1 - lambda) student)."""
    s, t = _temper(student_logits, teacher_logits, kd_temp, teacher_temp)
    p_t = jax.nn.softmax(t, -1)
    mixed = skew_lambda * p_t + (1 - skew_lambda) * jax.nn.softmax(s, -1)
    kl = p_t * (jax.nn.log_softmax(t, -1) - jnp.log(mixed + SKEW_EPSILON))
    return jnp.where(jnp.isinf(s) | jnp.isinf(t), 0.0, kl).sum(-1)


def skewed_reverse_kl(
    student_logits, teacher_logits, *, kd_temp: float, skew_lambda: float, teacher_temp: float = 1.0, **_
):
    """KL(student || (1 - lambda) teacher + lambda student)."""
    s, t = _temper(student_logits, teacher_logits, kd_temp, teacher_temp)
    p_s = jax.nn.softmax(s, -1)
    mixed = (1 - skew_lambda) * jax.nn.softmax(t, -1) + skew_lambda * p_s
    kl = p_s * (jax.nn.log_softmax(s, -1) - jnp.log(mixed + SKEW_EPSILON))
    return jnp.where(jnp.isinf(s) | jnp.isinf(t), 0.0, kl).sum(-1)


def adaptive_kl(
    student_logits, teacher_logits, *, kd_temp: float, adaptive_kl_alpha: float, teacher_temp: float = 1.0, **_
):
    """Forward and reverse KL mixed by how far apart the head and the tail are.

    The tail is the teacher's least likely tokens holding `alpha` of its mass; the
    weights are the (stop-gradient) L1 gaps between the two distributions on the head
    and on the tail.
    """
    p_s = jax.nn.softmax(student_logits / kd_temp, -1)
    p_t = jax.nn.softmax(teacher_logits / teacher_temp / kd_temp, -1)
    order = jnp.argsort(p_t, axis=-1)
    p_t_sorted = jnp.take_along_axis(p_t, order, axis=-1)
    p_s_sorted = jnp.take_along_axis(p_s, order, axis=-1)
    gap = jnp.abs(p_t_sorted - p_s_sorted)
    tail = jnp.cumsum(p_t_sorted, axis=-1) < adaptive_kl_alpha
    head_gap = jax.lax.stop_gradient(jnp.sum(jnp.where(tail, 0.0, gap), -1))
    tail_gap = jax.lax.stop_gradient(jnp.sum(jnp.where(tail, gap, 0.0), -1))
    total = head_gap + tail_gap
    # Identical distributions have no gap at all: both KLs are 0 then, weight them 0.
    safe_total = jnp.where(total > 0, total, 1.0)
    fkl = forward_kl(student_logits, teacher_logits, kd_temp=kd_temp, teacher_temp=teacher_temp)
    rkl = reverse_kl(student_logits, teacher_logits, kd_temp=kd_temp, teacher_temp=teacher_temp)
    return jnp.where(total > 0, (head_gap * fkl + tail_gap * rkl) / safe_total, 0.0)


DISTRIBUTION_DIVERGENCES: dict[str, Callable[..., jax.Array]] = {
    "kl": forward_kl,
    "rkl": reverse_kl,
    "skl": skewed_forward_kl,
    "srkl": skewed_reverse_kl,
    "akl": adaptive_kl,
}
