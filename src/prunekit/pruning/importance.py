"""Group magnitude importance, computed in ``prunekit.criteria._norms`` (criteria sit below
pruning); re-exported here for the default selection and older imports."""

from prunekit.criteria._norms import atom_scores, per_index_norm

__all__ = ["atom_scores", "per_index_norm"]
