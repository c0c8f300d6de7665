"""Model-free evaluation: metrics, answer extraction and a sandbox for generated code.

Nothing here loads a model or a tokenizer, so every scorer can be unit-tested on plain strings
and numbers. Submodules are imported explicitly (``peftlab.evaluation.metrics``,
``.answers``, ``.sandbox``) to keep ``import peftlab.evaluation`` free of heavy imports.
"""
