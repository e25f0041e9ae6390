"""Data: load and validate a table, encode the target, split (test sealed), fit preprocessing."""

from fitwell.data.loading import Table, load_table
from fitwell.data.preparation import PreparedData, prepare
from fitwell.data.preprocessing import Preprocessor
from fitwell.data.splitting import SealedTest, split_indices

__all__ = [
    "PreparedData",
    "Preprocessor",
    "SealedTest",
    "Table",
    "load_table",
    "prepare",
    "split_indices",
]
