"""Triton's Python backend: ``model.py`` files run unchanged, each instance in its own stub process.

Kept empty on purpose: the stub process imports ``tritium.backends.python.stub`` and must not pull in
the server side (``backend.py``) or anything heavy.
"""
