"""Tests of the worker library (the ``worker`` package). Not named tests/worker: a directory
of that name would read as, and could be imported as, the package it tests."""
