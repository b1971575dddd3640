"""ONNX Runtime execution providers and session options, chosen once per process.

onnxruntime-gpu always *lists* CUDAExecutionProvider, even on a machine without a GPU or CUDA libraries, and
asking for it there prints a loud error before falling back. So CUDA is used only after a quiet probe: the
driver library must load, then a throw-away session in a subprocess (stderr captured) must really get CUDA.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import subprocess
import sys

import onnxruntime as ort
import psutil

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"

# A one-node graph (Identity) serialised by onnx.helper; built inside the probe to keep this module import-light.
_PROBE = """
import onnx, onnxruntime as ort
from onnx import TensorProto, helper
x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe", [x], [y])
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
model.ir_version = 9
session = ort.InferenceSession(model.SerializeToString(), providers=["CUDAExecutionProvider"])
print("CUDA_OK" if "CUDAExecutionProvider" in session.get_providers() else "CUDA_MISSING")
"""


def _driver_loads() -> bool:
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    return True


@functools.lru_cache(maxsize=1)
def cuda_usable() -> bool:
    """True only when ORT can really run on CUDA here; never prints ORT's failure message."""
    if CUDA not in ort.get_available_providers() or not _driver_loads():
        return False
    try:
        probe = subprocess.run(
            [sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=120, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        log.info("CUDA probe did not finish (%s); using CPU", error)
        return False
    usable = "CUDA_OK" in probe.stdout
    if not usable:
        log.info("CUDA provider listed but not loadable; using CPU")
    return usable


def choose_providers(requested: str | list[str] = "auto") -> list[str]:
    """"auto" -> CUDA then CPU when CUDA loads, else CPU; "cpu"/"cuda" or an explicit list are honoured (CUDA checked)."""
    if isinstance(requested, list):
        if CUDA in requested and not cuda_usable():
            raise RuntimeError("CUDAExecutionProvider was requested but cannot be loaded on this machine")
        return requested
    if requested == "auto":
        return [CUDA, CPU] if cuda_usable() else [CPU]
    if requested == "cpu":
        return [CPU]
    if requested == "cuda":
        if not cuda_usable():
            raise RuntimeError("providers='cuda' was requested but CUDA cannot be loaded on this machine")
        return [CUDA, CPU]
    raise ValueError(f"providers={requested!r}: expected 'auto', 'cpu', 'cuda' or a list of provider names")


def physical_cores() -> int:
    """Cores this process may use (affinity), counting physical cores where psutil can tell."""
    try:
        allowed = len(os.sched_getaffinity(0))
    except AttributeError:
        allowed = os.cpu_count() or 1
    physical = psutil.cpu_count(logical=False) or allowed
    return max(1, min(allowed, physical))


def session_options(intra_op_threads: int = 0) -> ort.SessionOptions:
    """Full graph optimisation, sequential execution, intra-op threads sized to the machine (0 = all cores)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = intra_op_threads if intra_op_threads > 0 else physical_cores()
    options.inter_op_num_threads = 1
    # Idle intra-op threads sleep instead of spinning: on a small shared machine spinning steals the cores that
    # concurrent requests (and everything else) need.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return options
