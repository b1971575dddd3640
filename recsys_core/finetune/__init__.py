"""Fine-tuning the item text encoder on the recommendation task, so that an item nobody has rated yet gets a text
vector that already points where its collaborative vector would.

The top BERT layers (and a linear head) learn to predict each warm item's implicit-ALS factors from its text; the
trained layers are an adapter (safetensors) keyed by a fingerprint of everything that produced them, so an unchanged
fine-tune is loaded instead of retrained and its vectors come from the ordinary text-feature cache.
"""

from recsys_core.finetune.encoder import FineTunedTextEncoder, load_adapter, save_adapter
from recsys_core.finetune.train import (
    FineTuneConfig,
    FineTuneResult,
    collaborative_targets,
    fine_tune,
    fine_tune_cached,
)

__all__ = [
    "FineTuneConfig",
    "FineTuneResult",
    "FineTunedTextEncoder",
    "collaborative_targets",
    "fine_tune",
    "fine_tune_cached",
    "load_adapter",
    "save_adapter",
]
