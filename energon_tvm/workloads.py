"""Synthetic attention inputs with the structure trained attention has, for benchmarks and demos.

I.i.d. Gaussian Q/K give almost uniform attention, which no filter can sparsify honestly. Trained
heads instead have a few dominant keys per query (local windows, a handful of "sink" tokens, tokens
sharing a topic). :func:`structured_qkv` builds Q/K from those ingredients: a shared low-rank topic
space, a positional band, and sink keys, plus noise.
"""

from __future__ import annotations

import numpy as np


def structured_qkv(rng: np.random.Generator, b: int, h: int, sq: int, sk: int, d: int,
                   dtype=np.float32) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Q [b,h,sq,d], K/V [b,h,sk,d] with topic clusters, a local band and sink keys."""
    topics = 8
    centers = rng.standard_normal((b, h, topics, d)) * 1.5
    q_topic = rng.integers(0, topics, (b, h, sq))
    k_topic = rng.integers(0, topics, (b, h, sk))
    take = lambda t: np.take_along_axis(centers, t[..., None], axis=2)  # noqa: E731
    q = take(q_topic) + rng.standard_normal((b, h, sq, d))
    k = take(k_topic) + rng.standard_normal((b, h, sk, d))
    # positional band: sinusoidal codes make nearby positions score higher
    freqs = np.exp(-np.arange(d // 2) / (d // 2) * np.log(64.0))
    pos_q = np.arange(sq)[:, None] * (sk / max(sq, 1)) * freqs
    pos_k = np.arange(sk)[:, None] * freqs
    q += 0.8 * np.concatenate([np.sin(pos_q), np.cos(pos_q)], -1)
    k += 0.8 * np.concatenate([np.sin(pos_k), np.cos(pos_k)], -1)
    # sink keys (e.g. [CLS], separators) that every query attends to
    sinks = rng.choice(sk, size=min(2, sk), replace=False)
    k[:, :, sinks] += 0.6 * q.mean(axis=2, keepdims=True)
    v = rng.standard_normal((b, h, sk, d))
    return q.astype(dtype), k.astype(dtype), v.astype(dtype)
