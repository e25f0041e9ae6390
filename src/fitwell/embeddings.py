"""Periodic numeric embeddings (PBLD, from RealMLP) for a population, and where their outputs go.

``PBLD`` = periodic, bias, linear, densenet: numeric input ``x_j`` becomes
``W_j cos(2 pi (w_j x_j + b_j)) + c_j`` (``F`` learned frequencies ``w_j`` and phases ``b_j``,
reduced to ``D`` values by ``W_j [F, D]`` and ``c_j [D]``), and the raw ``x_j`` is kept beside
it. Every tensor has the member axis first (``[K, C, ...]`` for ``C`` embedded columns), so K
members' embeddings are one batched computation. The first layer reads the raw inputs, then
the ``D`` outputs of each embedded input in turn (:func:`first_layer_sources`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

# RealMLP-TD's initialisation: frequencies ~ N(0, 0.1^2), phases uniform over one period, the
# map from the cosines ~ N(0, 1 / F) (variance 1/2 per output: a cosine of a random phase has
# variance 1/2), zero biases.
FREQUENCY_STD = 0.1
# Names of the parameters in a model's state, in this order.
PARAMETERS = ("embed_frequencies", "embed_phases", "embed_weights", "embed_biases")
_TWO_PI = 2.0 * math.pi


def first_layer_sources(
    n_inputs: int,
    embedded: Sequence[int],
    dim: int,
    *,
    categorical: Sequence[int] = (),
    category_dims: Sequence[int] = (),
) -> list[int]:
    """The encoded input each first-layer input reads when the inputs in ``embedded`` have
    ``dim``-wide embeddings: ``0 .. n_inputs - 1`` (the raw inputs) except the integer codes
    ``categorical``, then each embedded input ``dim`` times, in the order of ``embedded``, then
    each code input ``category_dims[j]`` times (its learned embedding,
    :mod:`fitwell.category_embeddings`)."""
    codes = set(categorical)
    return [
        *(i for i in range(n_inputs) if i not in codes),
        *(i for i in embedded for _ in range(dim)),
        *(i for i, d in zip(categorical, category_dims, strict=True) for _ in range(d)),
    ]


def per_input(per_row: torch.Tensor, sources: Sequence[int], n_inputs: int) -> torch.Tensor:
    """Fold a value per first-layer input (``[rows]``) onto the encoded inputs (``[n_inputs]``) by
    summing the rows each input feeds (its raw row and its embedding's rows)."""
    index = torch.as_tensor(list(sources), dtype=torch.long, device=per_row.device)
    return per_row.new_zeros(n_inputs).index_add_(0, index, per_row)


def shapes(n_members: int, n_columns: int, frequencies: int, dim: int) -> dict[str, tuple]:
    """Name and shape of each embedding parameter."""
    k, c, f, d = n_members, n_columns, frequencies, dim
    return dict(zip(PARAMETERS, [(k, c, f), (k, c, f), (k, c, f, d), (k, c, d)], strict=True))


def draw(gen: torch.Generator, n_columns: int, frequencies: int, dim: int) -> list[torch.Tensor]:
    """One member's initial parameters (in :data:`PARAMETERS` order), from its generator."""
    c, f, d = n_columns, frequencies, dim
    return [
        torch.randn(c, f, generator=gen) * FREQUENCY_STD,
        torch.rand(c, f, generator=gen) - 0.5,
        torch.randn(c, f, d, generator=gen) / math.sqrt(f),
        torch.zeros(c, d),
    ]


def embed(
    x: torch.Tensor,
    index: torch.Tensor,
    frequencies: torch.Tensor,
    phases: torch.Tensor,
    weights: torch.Tensor,
    biases: torch.Tensor,
    *,
    raw: torch.Tensor | None = None,
) -> torch.Tensor:
    """First-layer inputs ``[K, B, F_in + C * D]``: the raw ``x`` (``[K, B, F_in]``, or shared
    rows ``[N, F_in]`` that every member reads), then the embeddings of its columns ``index``.
    ``raw``: the inputs kept raw when not all of ``x`` (same leading axes; default ``x``).

    Computed for the rows given, so a caller that passes one batch never holds the embedded table.
    """
    cols = x.index_select(-1, index).mT  # [K, C, B] or shared [C, N]
    if cols.dim() == 2:
        cols = cols.unsqueeze(0)
    # [K, C, B, F], rows inside each column: the per-column maps are one batched matmul, and the
    # widest tensor is never transposed.
    z = torch.addcmul(phases.unsqueeze(2), cols.unsqueeze(3), frequencies.unsqueeze(2))
    z = torch.cos(z * _TWO_PI) if torch.is_grad_enabled() else z.mul_(_TWO_PI).cos_()
    e = torch.matmul(z, weights) + biases.unsqueeze(2)  # [K, C, B, D]
    k, c, b, d = e.shape
    raw = x if raw is None else raw
    raw = raw if raw.dim() == 3 else raw.unsqueeze(0).expand(k, -1, -1)
    return torch.cat([raw, e.transpose(1, 2).reshape(k, b, c * d)], dim=2)
