# async source: tests written once; tests/_sync is generated from this package.
"""Tests of the async twin (generated into ``tests/_sync`` for the sync twin)."""
