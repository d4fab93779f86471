"""Sparsity profiles: the candidate and kept sets a run produced, to drive timing-only simulation.

A profile holds, for every head slot, query and key, whether the key was a candidate (round 0) and
whether it survived each filter round. A timing-only run writes these bits where a full run would
compute them, so every data-dependent cost (candidate MACs, the union of kept rows gathered, kept
pairs attended) is the same and so is the cycle count.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..isa.errors import EnergonError


@dataclass(frozen=True)
class SparsityProfile:
    """``masks[r]`` is bool [heads, Sq, Sk]: r = 0 candidates, r >= 1 kept after round r."""

    masks: tuple[np.ndarray, ...]

    def __post_init__(self) -> None:
        if not self.masks:
            raise EnergonError("a sparsity profile needs at least the candidate mask")
        shape = self.masks[0].shape
        if len(shape) != 3 or any(m.shape != shape or m.dtype != bool for m in self.masks):
            raise EnergonError(f"sparsity profile masks must all be bool [heads, Sq, Sk]; got "
                               f"{[(m.shape, m.dtype.name) for m in self.masks]}")

    @classmethod
    def from_reference(cls, result) -> SparsityProfile:
        """From an ``energon_tvm.mpmrf.MPMRFResult`` ([B, H, Sq, Sk] masks, heads flattened b-major)."""
        def flat(m):
            return np.ascontiguousarray(m.reshape((-1,) + m.shape[-2:]))
        return cls((flat(result.candidates),) + tuple(flat(k) for k in result.kept))

    @property
    def rounds(self) -> int:
        return len(self.masks) - 1

    def bits(self, round_index: int, head: int, q0: int, rows: int, k0: int, keys: int) -> np.ndarray:
        if round_index >= len(self.masks):
            raise EnergonError(f"sparsity profile has {self.rounds} round(s); the program asks for round "
                               f"{round_index}")
        m = self.masks[round_index]
        if head >= m.shape[0] or q0 + rows > m.shape[1] or k0 + keys > m.shape[2]:
            raise EnergonError(f"sparsity profile of shape {list(m.shape)} has no tile head={head} "
                               f"q={q0}..{q0 + rows - 1} k={k0}..{k0 + keys - 1}")
        return m[head, q0:q0 + rows, k0:k0 + keys]

    def kept_ratios(self) -> list[float]:
        n = self.masks[0].sum()
        return [float(m.sum() / n) if n else 0.0 for m in self.masks[1:]]

    def save(self, path) -> None:
        np.savez_compressed(path, **{f"round{i}": np.packbits(m, axis=-1) for i, m in enumerate(self.masks)},
                            shape=np.array(self.masks[0].shape))

    @classmethod
    def load(cls, path) -> SparsityProfile:
        try:
            with np.load(path, allow_pickle=False) as z:
                shape = tuple(int(s) for s in z["shape"])
                n = sum(1 for k in z.files if k.startswith("round"))
                masks = tuple(np.unpackbits(z[f"round{i}"], axis=-1, count=shape[-1]).astype(bool)
                              for i in range(n))
        except (OSError, KeyError, ValueError) as err:
            raise EnergonError(f"{path}: not a sparsity profile: {err}") from None
        return cls(masks)
