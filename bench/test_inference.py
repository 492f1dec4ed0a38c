"""Inference benchmarks: one forward pass over a batch already on the device, per implementation.

Same models, weights and cases as test_train.py (nnxp and PyTorch return logits; scikit-learn's
``predict_proba`` includes its softmax; the per-sample loop runs one example at a time).
"""

from __future__ import annotations

from .conftest import Case
from .test_train import BUILDERS

KIND = "infer"


def test_inference(case: Case, run_case) -> None:
    impl, info = run_case(case, lambda: BUILDERS[case.impl](case))
    assert impl.check()
    assert info["samples_per_call"] > 0 and info["first_call_s"] > 0
