"""Online serving on ONNX Runtime: the scorer, the FastAPI service and hot reload from the model registry."""
