# async source: package marker of the async twin (the sync twin is generated from it).
"""One twin of the pipeline: ``_async`` is the hand-written source, ``_sync`` is generated.

``tools/generate.py`` writes the sync package from the async one; never edit the generated
files. Import from the submodules (``.images``, ``.pipeline``, ...).
"""
