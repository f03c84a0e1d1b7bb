"""Model sources: one resolver, used by every command, from a string to a model and inputs.

A model is named by one of:

* a torchvision model name (``mobilenet_v2``, ``resnet50``, ``fcn_resnet50``, ...),
* ``package.module:callable`` or ``path/to/file.py:callable`` returning an ``nn.Module``,
* a Hugging Face model directory (holding ``config.json``).
"""

from prunekit.models._loaded import LoadedModel
from prunekit.models._resolve import load_model

__all__ = ["LoadedModel", "load_model"]
