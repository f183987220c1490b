"""Dask is optional: without it, truncflow works and asking for a cluster says what to install."""
import sys

import numpy as np
import pytest

import truncflow as tf


def test_without_dask_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)       # "import distributed" fails
    with pytest.raises(ImportError, match=r'pip install "truncflow\[distributed\]"'):
        tf.distribute(np.zeros((4, 2)), np.zeros(4, dtype=int), np.zeros((1, 2)), client=None)
