"""The timing harness, standalone: numpy and a runtime only, nothing of prokt-deploy (``prokt-deploy bundle`` ships
these files to boards that have neither torch nor prokt-deploy).

- ``measure``: every engine in its own worker process, interleaved timing rounds (``bench``, the planner, and
  ``bench_bundle.py`` in a bundle);
- ``runners``: one runner per runtime (onnxruntime, OpenVINO, torch for the host's PyTorch rows), or a format's own,
  found from the reference its ``Exporter.runner`` gives;
- ``fingerprint``: the machine and runtime stack a measurement ran on.

This ``__init__`` imports nothing: the worker runs ``measure.py`` by path, and a bundle holds the files flat.
"""
