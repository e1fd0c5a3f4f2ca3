# GENERATED from tests/_async/__init__.py by `nox -s generate`; do not edit.
"""Tests of the async twin (generated into ``tests/_sync`` for the sync twin)."""
