"""Learned embeddings of high-cardinality text columns (fastai's entity embeddings), per member.

An embedded column reaches the model as one input holding an integer code (0: missing, unknown or
rare; see :mod:`fitwell.data.preprocessing`). Every member has its own table per column,
``[K, codes, dim]`` with the member axis first like every front parameter, so populations slice,
save and stack them as they do the rest; the K members' lookups of one column are one
``F.embedding`` on the flattened ``[K * codes, dim]`` table with an offset per member. The
looked-up vectors follow the other first-layer inputs
(:func:`fitwell.embeddings.first_layer_sources`); the code itself is not a first-layer input: as
a number it means nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

# Parameter names in a model's state: one table per embedded column, in column order.
PREFIX = "category_embedding_"
# fastai's emb_sz_rule: min(600, round(1.6 * n ** 0.56)) for n codes (its n counts the #na# code,
# as ours counts code 0).
MAX_DIM = 600
# Initial table entries ~ N(0, INIT_STD^2): fastai's (trunc_normal_, std 0.01). Near zero, so a
# code no training row has (0 when nothing is missing in training) reads about as an all-zero
# one-hot row does. Measured on the 200-category table of tests/test_category_embeddings.py
# (seeds 1, 2, 60 epochs): test r2 0.98 / 0.90 at std 0.01, 0.93 / 0.84 at PyTorch's std 1.
INIT_STD = 0.01


def embedding_dim(n_codes: int) -> int:
    """Width of a column's embedding with ``n_codes`` codes (fastai's rule)."""
    return min(MAX_DIM, round(1.6 * n_codes**0.56))


def names(n_columns: int) -> tuple[str, ...]:
    """Parameter names of the tables of ``n_columns`` embedded columns."""
    return tuple(f"{PREFIX}{j}" for j in range(n_columns))


def shapes(n_members: int, sizes: Sequence[int], dims: Sequence[int]) -> dict[str, tuple]:
    """Name and shape of each table: ``[K, codes, dim]``."""
    return {
        name: (n_members, n, d) for name, n, d in zip(names(len(sizes)), sizes, dims, strict=True)
    }


def draw(gen: torch.Generator, sizes: Sequence[int], dims: Sequence[int]) -> list[torch.Tensor]:
    """One member's initial tables, from its generator."""
    return [torch.randn(n, d, generator=gen) * INIT_STD for n, d in zip(sizes, dims, strict=True)]


def lookup(x: torch.Tensor, index: torch.Tensor, tables: Sequence[torch.Tensor]) -> torch.Tensor:
    """The embedded columns' vectors ``[K, B, sum(dims)]`` for the codes in columns ``index`` of
    ``x`` (``[K, B, F]``, one batch per member, or shared rows ``[N, F]`` every member reads).

    ``tables`` are ``[K, codes, dim]``; codes must be in ``[0, codes)`` (the preprocessing maps
    every value it does not know to 0), else ``F.embedding`` raises.
    """
    codes = x.index_select(-1, index).long()  # [K, B, C] or shared [N, C]
    parts = []
    for j, table in enumerate(tables):
        k, n, d = table.shape
        offsets = torch.arange(k, device=x.device).mul_(n).unsqueeze(1)  # [K, 1]
        column = codes[..., j]
        rows = column.unsqueeze(0) + offsets if column.dim() == 1 else column + offsets
        parts.append(F.embedding(rows, table.reshape(k * n, d)))  # [K, B, d]
    return torch.cat(parts, dim=-1)
