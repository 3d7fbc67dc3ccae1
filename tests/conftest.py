"""Shared test helpers: fixture paths (reference outputs of the official STTS code) and devices."""

import json
import os
from pathlib import Path

import pytest
import torch

FIXTURES = Path(__file__).parent / "fixtures"


def load_fixture(name: str):
    """(description dict, io tensors dict) of a fixture such as 'mvit_small_t0_0.5_s4_0.7'."""
    from safetensors.torch import load_file

    meta = json.loads((FIXTURES / f"{name}.json").read_text())
    io = load_file(str(FIXTURES / f"{name}.io.safetensors"))
    return meta, io


def fixture_state_dict(family: str):
    """The official-key state dict shared by the fixtures of 'mvit_small' or 'swin_small'."""
    from safetensors.torch import load_file

    return load_file(str(FIXTURES / f"{family}.safetensors"))


def decode_input(codes: torch.Tensor) -> torch.Tensor:
    """Fixture inputs are stored as uint8 codes; this decoding is exact."""
    return (codes.to(torch.float32) - 128.0) / 64.0


@pytest.fixture(params=["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
def device(request):
    """Device to test on; TORCH_DEVICE=cuda forces CUDA only (timm's convention).

    Tests build their inputs on the CPU and move them, so both devices see the same numbers. On CUDA,
    TF32 is switched off for the test: the official-fixture tolerances (1e-5) are float32 tolerances.
    """
    forced = os.environ.get("TORCH_DEVICE")
    if forced and request.param != forced:
        pytest.skip(f"TORCH_DEVICE={forced}")
    dev = torch.device(request.param)
    if dev.type != "cuda":
        yield dev
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield dev
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
