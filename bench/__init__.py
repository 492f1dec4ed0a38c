"""nnxp's benchmark suite (pytest-benchmark) and its report.

``python -m pytest bench --benchmark-json bench/results/<name>.json`` runs the suite;
``python -m bench.report`` (or ``nnxp bench``) turns saved JSON into a markdown table and plots.
See bench/README.md.
"""
