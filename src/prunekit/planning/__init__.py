"""Planning a pruning: per-group measurements taken once, used to choose how much to cut where.

* ``lut``: a latency lookup table measured on the target device (``prunekit profile``), which
  predicts the latency of any per-group channel count.
"""
