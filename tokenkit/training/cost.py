"""What one train step costs: FLOPs, memory, and the model FLOPs utilisation it implies.

Two FLOP counts are reported, because they answer different questions:

- `model_flops`: the analytic count of the matmuls the step must do (the PaLM
  convention: a forward pass is 2 FLOPs per parameter per token for every dense matrix,
  including the unembedding, plus `4 T D` per token and layer for attention scores and
  values; the trained model does forward + backward = 3x its forward; the frozen teacher
  one forward). MFU is computed from it, so MFUs compare across implementations.
- `xla_flops`: XLA's own cost analysis of the compiled program. It counts the body of a
  loop once (the scanned layer stack, the micro-batch scan), so it undercounts deep
  models; it is reported as a check on everything outside the loops.

Memory comes from the compiled program (`memory_analysis`): arguments (parameters,
optimizer state, batch), outputs, and temporaries (activations, gradients).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
from absl import logging

from tokenkit.models.config import ModelConfig

# Dense bf16 peak FLOP/s per chip by `device_kind` prefix (vendor figures, no sparsity).
PEAK_FLOPS: dict[str, float] = {
    "NVIDIA H200": 989e12,
    "NVIDIA H100": 989e12,
    "NVIDIA A100": 312e12,
    "NVIDIA L4": 121e12,
    "TPU v6": 918e12,
    "TPU v5p": 459e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v4": 275e12,
    "TPU v3": 123e12,
}


def peak_flops(device_kind: str) -> float | None:
    """The table's dense bf16 peak for a device kind, or None (e.g. a CPU)."""
    for prefix, flops in PEAK_FLOPS.items():
        if device_kind.startswith(prefix):
            return flops
    return None


def forward_flops_per_token(config: ModelConfig, context: int) -> float:
    """Matmul FLOPs of one forward pass per token at a context of `context` tokens."""
    c = config
    dense = c.num_layers * c.matmul_params_per_layer() + c.hidden_size * c.vocab_size
    # Scores and values: 2 * T * (H * hd) multiply-adds each per token and layer.
    attention = c.num_layers * 2 * context * c.num_heads * c.head_dim
    return 2.0 * dense + 2.0 * attention


@dataclasses.dataclass(frozen=True)
class StepCost:
    """One step's cost (see the module docstring)."""

    model_flops: float
    xla_flops: float | None
    argument_bytes: int | None
    output_bytes: int | None
    temp_bytes: int | None
    tokens: int

    def mfu(self, seconds_per_step: float, peak_per_device: float, num_devices: int) -> float:
        """Model FLOPs utilisation at a measured step time."""
        return self.model_flops / (seconds_per_step * peak_per_device * num_devices)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def summary(self) -> str:
        def gib(n):
            return "?" if n is None else f"{n / 2**30:.2f} GiB"

        xla = "?" if self.xla_flops is None else f"{self.xla_flops / 1e12:.3f}"
        return (
            f"step cost: {self.model_flops / 1e12:.3f} TFLOP (model; XLA counts {xla} with loop "
            f"bodies once), {self.tokens:,} tokens; memory: arguments {gib(self.argument_bytes)}, "
            f"outputs {gib(self.output_bytes)}, temporaries {gib(self.temp_bytes)}"
        )


def step_cost(
    compiled: Any,
    *,
    student: ModelConfig,
    student_shape: tuple[int, int],
    teacher: ModelConfig | None = None,
    teacher_shape: tuple[int, int] | None = None,
) -> StepCost:
    """The cost of a compiled train step whose student (and teacher) see batches of
    `(rows, length)` per step (all micro-batches together)."""
    rows, length = student_shape
    model = 3.0 * forward_flops_per_token(student, length) * rows * length
    tokens = rows * length
    if teacher is not None and teacher_shape is not None:
        t_rows, t_length = teacher_shape
        model += forward_flops_per_token(teacher, t_length) * t_rows * t_length
        tokens += t_rows * t_length
    xla = memory = None
    try:
        analysis = compiled.cost_analysis()
        analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
        xla = float(analysis.get("flops", 0.0))
    except Exception as e:  # cost analysis is best effort on some backends
        logging.info("No XLA cost analysis: %s", e)
    try:
        memory = compiled.memory_analysis()
    except Exception as e:
        logging.info("No XLA memory analysis: %s", e)
    return StepCost(
        model_flops=model,
        xla_flops=xla,
        argument_bytes=None if memory is None else int(memory.argument_size_in_bytes),
        output_bytes=None if memory is None else int(memory.output_size_in_bytes),
        temp_bytes=None if memory is None else int(memory.temp_size_in_bytes),
        tokens=tokens,
    )


def device_peak(override_tflops: float | None) -> float | None:
    """Peak FLOP/s per device: the override (TFLOP/s), else the table's figure for this
    host's devices, else None."""
    if override_tflops is not None:
        if override_tflops <= 0:
            raise ValueError(f"device_peak_tflops must be positive, got {override_tflops}.")
        return override_tflops * 1e12
    return peak_flops(jax.devices()[0].device_kind)
