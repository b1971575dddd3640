"""The fine-tuned encoder: the base BERT with the adapter's top layers swapped in, behind the ordinary `TextEncoder`.

Its model id is the base model's id plus the adapter's fingerprint, so `encode_items` caches its vectors apart from the
frozen encoder's and from every other fine-tune: a new adapter re-encodes, the same adapter reads the cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from recsys_core.text_features import TextEncoder

ENCODER_PREFIX = "bert."


def save_adapter(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str]) -> str:
    """Writes the adapter as safetensors (atomically) and returns its fingerprint (see `adapter_fingerprint`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    save_file({name: tensor.detach().contiguous().cpu() for name, tensor in tensors.items()}, str(tmp), metadata=metadata)
    os.replace(tmp, path)
    return adapter_fingerprint(path)


def adapter_fingerprint(path: str | Path) -> str:
    """sha256 of the tensors (names, dtypes, shapes, values) and metadata in sorted order: the file's bytes would not do,
    as safetensors writes the metadata in a different order on each save."""
    digest = hashlib.sha256()
    with safe_open(str(path), framework="pt") as handle:
        digest.update(json.dumps(handle.metadata() or {}, sort_keys=True).encode("utf-8"))
        for name in sorted(handle.keys()):
            tensor = handle.get_tensor(name).contiguous()
            digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode("utf-8"))
            digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


def load_adapter(path: str | Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


class FineTunedTextEncoder(TextEncoder):
    """A `TextEncoder` whose weights are the base model's with the adapter's encoder tensors loaded over them (torch only:
    the ONNX exports are cached per base model and know nothing of adapters)."""

    adapter_path: Path

    @classmethod
    def from_base(cls, base: TextEncoder, adapter_path: str | Path) -> "FineTunedTextEncoder":
        adapter_path = Path(adapter_path)
        if not adapter_path.is_file():
            raise FileNotFoundError(f"fine-tuned adapter {adapter_path} does not exist")
        if base.backend_name != "torch":
            raise ValueError(f"a fine-tuned encoder runs on the torch backend only, got backend={base.backend_name!r}")
        encoder = cls(
            base.source,
            f"{base.model_id}+finetune@{adapter_fingerprint(adapter_path)[:12]}",
            device=base.device,
            backend="torch",
            batch_size=base.batch_size,
            max_length=base.max_length,
            cache_dir=base.cache_dir,
            num_threads=base.num_threads,
        )
        encoder.adapter_path = adapter_path
        return encoder

    def backend(self):
        fresh = self._backend is None
        backend = super().backend()
        if fresh:
            tensors = {
                name.removeprefix(ENCODER_PREFIX): tensor
                for name, tensor in load_adapter(self.adapter_path).items()
                if name.startswith(ENCODER_PREFIX)
            }
            unexpected = backend.module.bert.load_state_dict(tensors, strict=False).unexpected_keys
            if unexpected or not tensors:
                raise ValueError(
                    f"adapter {self.adapter_path} does not fit the base model {self.source}: "
                    f"{len(tensors)} encoder tensors, unexpected {unexpected[:5]}"
                )
        return backend
