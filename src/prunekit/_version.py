"""The version of prunekit: one source, read by the build (hatch) and by the package."""

__version__ = "0.1.0"
