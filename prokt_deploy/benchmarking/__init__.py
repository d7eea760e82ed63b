"""Benchmarking: every artifact of a run measured side by side (``bench``) with the standalone harness
(``measure``, shipped in bundles with ``fingerprint``), int8 explained against fp32 (``int8_diagnosis``), and the
report (``report``)."""
