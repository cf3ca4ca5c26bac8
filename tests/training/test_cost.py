"""Step cost: the analytic FLOP count, XLA's memory figures, MFU, the peak table."""

import jax
import jax.numpy as jnp
import pytest

from tokenkit.models.config import ModelConfig
from tokenkit.training import cost


def test_forward_flops_count_every_dense_matrix_and_attention():
    config = ModelConfig(architecture="llama", vocab_size=100, hidden_size=8, intermediate_size=16,
                         num_layers=2, num_heads=2, num_kv_heads=1, head_dim=4,
                         max_position_embeddings=64)
    # q 8x8, k and v 8x4 each, out 8x8, gate/up/down 8x16 x3 -> 64+64+64+384 = 576 per layer
    dense = 2 * 576 + 8 * 100
    attention = 2 * 2 * 10 * 8  # layers x (scores + values) x context x (heads * head_dim)
    assert cost.forward_flops_per_token(config, 10) == 2 * dense + 2 * attention


def test_step_cost_reads_the_compiled_program_and_gives_an_mfu():
    f = jax.jit(lambda x, y: (x @ y).sum())
    compiled = f.lower(jnp.ones((64, 32)), jnp.ones((32, 16))).compile()
    config = ModelConfig(architecture="llama", vocab_size=16, hidden_size=8, intermediate_size=16,
                         num_layers=1, num_heads=2, num_kv_heads=2, head_dim=4,
                         max_position_embeddings=64)
    step = cost.step_cost(compiled, student=config, student_shape=(2, 8))
    assert step.xla_flops == pytest.approx(2 * 64 * 32 * 16, rel=0.05)  # + the sum
    assert step.argument_bytes == (64 * 32 + 32 * 16) * 4 and step.tokens == 16
    assert step.model_flops == 3 * cost.forward_flops_per_token(config, 8) * 16
    assert step.mfu(2.0, step.model_flops, 1) == pytest.approx(0.5)
    assert "TFLOP" in step.summary()


def test_peak_table_and_override():
    assert cost.peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert cost.peak_flops("TPU v5 lite") == 197e12 and cost.peak_flops("cpu") is None
    assert cost.device_peak(100.0) == 100e12
    with pytest.raises(ValueError, match="must be positive"):
        cost.device_peak(0.0)
