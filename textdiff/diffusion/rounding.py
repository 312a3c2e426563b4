"""Rounding embedding-space vectors to tokens by nearest-neighbour search (docs/math.md §1–2).

:class:`Rounder` indexes the rows of the word table ``E`` (V, d) with FAISS — exact
``IndexFlatL2`` by default, HNSW as an approximate option for large vocabularies — and answers
batched queries in chunks, so memory stays bounded whatever the number of queries.
:func:`torch_nearest` is the plain-torch reference (tiled matmul with a running argmin).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

INDEXES = ("flat", "hnsw")


def _faiss():
    import faiss  # imported lazily: only rounding needs it

    return faiss


class Rounder:
    """Nearest word-table row for each query vector.

    Args:
        weight: the word table (V, d); copied, so later training does not change the index
            until :meth:`update` is called with the new weights.
        index: ``"flat"`` (exact L2) or ``"hnsw"`` (approximate, for vocabularies ≫ 10k).
        chunk_size: queries per FAISS call; bounds the working memory.
        hnsw_m, ef_search: HNSW graph degree and search breadth.
    """

    def __init__(
        self,
        weight: Tensor,
        *,
        index: str = "flat",
        chunk_size: int = 16384,
        hnsw_m: int = 32,
        ef_search: int = 128,
    ):
        if index not in INDEXES:
            raise ValueError(f"unknown rounding index {index!r}; choose one of {INDEXES}")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        self.kind, self.chunk_size = index, chunk_size
        self.hnsw_m, self.ef_search = hnsw_m, ef_search
        self._weight: Tensor | None = None
        self.update(weight)

    @property
    def weight(self) -> Tensor:
        """The indexed rows (V, d), float32 on the CPU."""
        return self._weight

    def update(self, weight: Tensor) -> bool:
        """Rebuild the index if ``weight`` differs from the indexed rows; returns whether it did."""
        w = weight.detach().to("cpu", torch.float32).contiguous()
        if (
            self._weight is not None
            and w.shape == self._weight.shape
            and torch.equal(w, self._weight)
        ):
            return False
        faiss = _faiss()
        V, d = w.shape
        if self.kind == "flat":
            index = faiss.IndexFlatL2(d)
        else:
            index = faiss.IndexHNSWFlat(d, self.hnsw_m)
            index.hnsw.efSearch = self.ef_search
        index.add(w.clone().numpy())
        self._index, self._weight = index, w.clone()
        return True

    def search(self, x: Tensor, k: int = 1) -> tuple[Tensor, Tensor]:
        """The ``k`` nearest rows of each query (N, d): squared distances and ids, both (N, k)."""
        q = x.detach().to("cpu", torch.float32).reshape(-1, self._weight.shape[1])
        dists = np.empty((q.shape[0], k), dtype=np.float32)
        ids = np.empty((q.shape[0], k), dtype=np.int64)
        for lo in range(0, q.shape[0], self.chunk_size):
            chunk = q[lo : lo + self.chunk_size].contiguous().numpy()
            dists[lo : lo + len(chunk)], ids[lo : lo + len(chunk)] = self._index.search(chunk, k)
        return torch.from_numpy(dists), torch.from_numpy(ids)

    def round(self, x: Tensor) -> Tensor:
        """Token ids of the nearest rows: (..., d) -> (...), on ``x``'s device."""
        _, ids = self.search(x.reshape(-1, x.shape[-1]))
        return ids[:, 0].reshape(x.shape[:-1]).to(x.device)

    def clamp(self, x: Tensor) -> Tensor:
        """Each vector replaced by its nearest row (Diffusion-LM's clamping trick)."""
        return self._weight.to(x.device, x.dtype)[self.round(x)]

    def margin(self, x: Tensor) -> Tensor:
        """``‖x − e_(2)‖ − ‖x − e_(1)‖`` between second-nearest and nearest rows: (..., d) -> (...).

        A small margin means the rounding was a near tie.
        """
        d2, _ = self.search(x.reshape(-1, x.shape[-1]), k=2)
        d = d2.clamp(min=0).sqrt()
        return (d[:, 1] - d[:, 0]).reshape(x.shape[:-1])

    def table_figures(self) -> dict[str, float]:
        """How well the indexed rows stay apart: ``roundtrip`` (share of rows that round to
        themselves), and the distance from each row to its nearest other row (``margin_min``,
        ``margin_p01``, ``margin_median``). Rows that collapse onto each other cannot be told
        apart by rounding: the round-trip falls below 1 and the minimum margin to 0."""
        V = self._weight.shape[0]
        d2, ids = self.search(self._weight, k=min(2, V))
        roundtrip = float((ids[:, 0] == torch.arange(V)).float().mean())
        if V < 2:
            return {"roundtrip": roundtrip}
        # a row's own distance is 0 (ids[:, 0] is itself, or a duplicate of it)
        margin = d2[:, 1].clamp(min=0).sqrt()
        return {
            "roundtrip": roundtrip,
            "margin_min": float(margin.min()),
            "margin_p01": float(margin.quantile(0.01)),
            "margin_median": float(margin.median()),
        }


@torch.no_grad()
def torch_nearest(
    x: Tensor, weight: Tensor, *, query_tile: int = 4096, vocab_tile: int = 8192
) -> Tensor:
    """Exact nearest row by brute force in torch: ``argmin_v ‖e_v‖² − 2 x·e_v`` over vocab tiles
    with a running minimum, query tiles bounding memory to ``query_tile × vocab_tile`` floats.
    (N, d) -> (N,) ids."""
    x = x.reshape(-1, weight.shape[1]).float()
    w = weight.float()
    w_sq = w.pow(2).sum(1)  # (V,)
    out = torch.empty(x.shape[0], dtype=torch.long, device=x.device)
    for qlo in range(0, x.shape[0], query_tile):
        q = x[qlo : qlo + query_tile]
        best = torch.full((q.shape[0],), float("inf"), device=x.device)
        arg = torch.zeros(q.shape[0], dtype=torch.long, device=x.device)
        for vlo in range(0, w.shape[0], vocab_tile):
            wt = w[vlo : vlo + vocab_tile]
            scores = torch.addmm(w_sq[vlo : vlo + vocab_tile], q, wt.T, alpha=-2.0)
            val, idx = scores.min(1)
            better = val < best
            best = torch.where(better, val, best)
            arg = torch.where(better, idx + vlo, arg)
        out[qlo : qlo + query_tile] = arg
    return out
