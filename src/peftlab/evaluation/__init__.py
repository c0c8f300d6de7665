"""Evaluation: metrics, answer extraction, batched generation, scoring and a sandbox for generated code.

`metrics`, `answers` and `sandbox` load no model or tokenizer, so every scorer can be unit-tested
on plain strings and numbers. `generate` (batched generation) and `scoring` (log-likelihoods,
validation loss, strided perplexity) run a model they are handed; they load none themselves.
Submodules are imported explicitly (``peftlab.evaluation.metrics``, ``.generate``, …) to keep
``import peftlab.evaluation`` free of heavy imports.
"""
