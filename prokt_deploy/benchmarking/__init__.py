"""Benchmarking: every artifact of a run measured side by side (``bench``) with the standalone timing harness
(:mod:`prokt_deploy.harness`, shipped in bundles), int8 explained against fp32 (``int8_diagnosis``), and the
report (``report``)."""
