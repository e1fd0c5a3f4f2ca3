# GENERATED from src/waste_pipeline/_async/__init__.py by `nox -s generate`; do not edit.
"""One twin of the pipeline: ``_async`` is the hand-written source, ``_sync`` is generated.

``tools/generate.py`` writes the sync package from the async one; never edit the generated
files. Import from the submodules (``.images``, ``.pipeline``, ...).
"""
