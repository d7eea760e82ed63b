"""Deployment: a run's student exported and gated in every format (``export``), the reference artifacts it is
measured against (``references``: the teacher's fp32 and int8, the student's fp32), and on-device bundles
(``bundle``)."""
