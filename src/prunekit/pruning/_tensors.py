"""Moved to ``prunekit._tensors`` (the ground floor: criteria, pruning and artifacts use it)."""

from prunekit._tensors import aliases, named_tensors, replace_tensor, scan

__all__ = ["aliases", "named_tensors", "replace_tensor", "scan"]
