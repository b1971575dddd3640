"""The top-k scan graphs, built directly with onnx.helper (no torch needed to serve or rebuild them).

fp32: scores = Gemm(user_vec, item_matrix, transB) over the [n_items, dim] matrix fed as an input (any catalogue
size). That is the layout everything else reads (history rows for the user graph, the index's re-ranking, FAISS), so
the process holds one copy; a transposed [dim, n_items] copy scans faster in ORT but would be a second matrix.
int8: the item matrix is quantised per item (symmetric int8, one scale per row) and baked into the graph, the user
vector is quantised at run time (DynamicQuantizeLinear) and MatMulInteger does the scan: a quarter of the bytes
to read, which is what bounds a large catalogue's scan. Both mask excluded items to -inf before ONNX TopK.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 18
IR_VERSION = 10  # what onnxruntime >= 1.20 reads; onnx's newest default can be ahead of the runtime


def _io(with_matrix: bool) -> tuple[list[onnx.ValueInfoProto], list[onnx.ValueInfoProto]]:
    inputs = [
        helper.make_tensor_value_info("user_vec", TensorProto.FLOAT, ["batch", "dim"]),
        helper.make_tensor_value_info("exclude_mask", TensorProto.BOOL, ["batch", "n_items"]),
        helper.make_tensor_value_info("k", TensorProto.INT64, [1]),
    ]
    if with_matrix:
        inputs.append(helper.make_tensor_value_info("item_matrix", TensorProto.FLOAT, ["n_items", "dim"]))
    outputs = [
        helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", "k"]),
        helper.make_tensor_value_info("item_idx", TensorProto.INT64, ["batch", "k"]),
    ]
    return inputs, outputs


def _mask_and_topk(scores: str) -> list[onnx.NodeProto]:
    return [
        helper.make_node("Constant", [], ["neg_inf"], value=helper.make_tensor("neg_inf_value", TensorProto.FLOAT, [], [-np.inf])),
        helper.make_node("Where", ["exclude_mask", "neg_inf", scores], ["masked_scores"]),
        helper.make_node("TopK", ["masked_scores", "k"], ["scores", "item_idx"], axis=-1, largest=1, sorted=1),
    ]


def _model(nodes: list[onnx.NodeProto], name: str, with_matrix: bool, initializers: list[onnx.TensorProto]) -> onnx.ModelProto:
    inputs, outputs = _io(with_matrix)
    graph = helper.make_graph(nodes, name, inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="recsys")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def build_topk_graph() -> onnx.ModelProto:
    """(user_vec, exclude_mask, k, item_matrix) -> (scores, item_idx); dynamic batch and catalogue size."""
    nodes = [helper.make_node("Gemm", ["user_vec", "item_matrix"], ["all_scores"], transB=1), *_mask_and_topk("all_scores")]
    return _model(nodes, "recsys_topk", True, [])


def quantize_rows(item_matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-row int8: item_matrix ~= q * scale[:, None]."""
    scale = np.abs(item_matrix).max(axis=1) / 127.0
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    return np.clip(np.round(item_matrix / scale[:, None]), -127, 127).astype(np.int8), scale


def build_int8_topk_graph(item_matrix: np.ndarray) -> onnx.ModelProto:
    """(user_vec, exclude_mask, k) -> (scores, item_idx) over an int8 copy of `item_matrix` inside the graph."""
    q, scale = quantize_rows(item_matrix)
    initializers = [numpy_helper.from_array(np.ascontiguousarray(q.T), "item_matrix_q_t"), numpy_helper.from_array(scale, "item_scale")]
    nodes = [
        helper.make_node("DynamicQuantizeLinear", ["user_vec"], ["user_q", "user_scale", "user_zero"]),
        helper.make_node("MatMulInteger", ["user_q", "item_matrix_q_t", "user_zero"], ["dots_int"]),
        helper.make_node("Cast", ["dots_int"], ["dots"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["dots", "item_scale"], ["dots_items"]),
        helper.make_node("Mul", ["dots_items", "user_scale"], ["all_scores"]),
        *_mask_and_topk("all_scores"),
    ]
    return _model(nodes, "recsys_topk_int8", False, initializers)
