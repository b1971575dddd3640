"""The item text encoder as a Dagster resource: one config switch picks the model, device, backend and cache."""

from __future__ import annotations

from pathlib import Path

from dagster import ConfigurableResource
from pydantic import Field

from recsys_core.text_features import TextEncoder, text_features_cache_dir


class TextEncoderResource(ConfigurableResource):
    """`model`: "default" (bundled all-MiniLM-L6-v2), a local folder or a Hugging Face id; `backend`: torch|onnx|onnx-int8."""

    model: str = Field("default", description='"default", a local model folder, or a Hugging Face id.')
    device: str = Field("auto", description='"auto" (CUDA when present), "cpu" or "cuda:N".')
    batch_size: int = Field(32, description="Texts per forward pass (batches are formed after sorting by token length).")
    backend: str = Field("torch", description='"torch", "onnx" (ONNX Runtime, fp32) or "onnx-int8" (quantised weights).')
    max_length: int = Field(256, description="Token limit per text; longer texts are truncated.")
    cache_dir: str = Field("", description="Vector and ONNX cache; empty means $RECSYS_HOME/cache/text_features.")

    def cache_path(self) -> Path:
        return Path(self.cache_dir) if self.cache_dir else text_features_cache_dir()

    def load_encoder(self) -> TextEncoder:
        return TextEncoder.load(
            self.model,
            self.device,
            backend=self.backend,
            batch_size=self.batch_size,
            max_length=self.max_length,
            cache_dir=self.cache_path(),
        )
