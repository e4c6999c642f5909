"""`rollout.engine: auto` picks the engine that samples faster for the model at hand (rollout.factory)."""

from __future__ import annotations

import pytest

from rollout.config import SamplingConfig
from rollout.factory import VLLM_CPU_MIN_PARAMETERS, resolve_engine_name, vllm_available

AUTO = SamplingConfig(engine="auto")


def test_auto_takes_hf_generate_for_a_small_model_on_a_cpu():
    assert resolve_engine_name(AUTO, num_parameters=1_200_000, on_gpu=False) == "hf"
    assert resolve_engine_name(AUTO, num_parameters=134_500_000, on_gpu=False) == "hf"  # SmolLM2-135M
    assert resolve_engine_name(SamplingConfig(engine="hf"), num_parameters=10**9, on_gpu=True) == "hf"


@pytest.mark.skipif(not vllm_available(), reason="vllm is not installed")
def test_auto_takes_vllm_for_a_large_model_or_on_a_gpu():
    assert resolve_engine_name(AUTO, num_parameters=VLLM_CPU_MIN_PARAMETERS, on_gpu=False) == "vllm"
    assert resolve_engine_name(AUTO, num_parameters=VLLM_CPU_MIN_PARAMETERS - 1, on_gpu=False) == "hf"
    assert resolve_engine_name(AUTO, num_parameters=1_200_000, on_gpu=True) == "vllm"
    assert resolve_engine_name(AUTO) == "vllm"  # size unknown: taken as large
