"""The management report: what a pruning run bought, in a page a manager can read.

``prunekit report RUN_DIR... --out DIR`` (``prunekit.api.reporting.report`` in Python) reads
the outputs of prunekit commands (``sources``), projects the annual GPU cost of serving the
dense and the pruned model (``costs``), draws the figures (``figures``, ``masks``) and writes
``report.json``, a self-contained ``report.html`` and ``report.md`` (``build``).
"""
