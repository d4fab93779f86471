"""Building and running Relax modules in the tests, and the oracles they are judged by.

TVM is imported inside the functions, so collecting the tests stays cheap.

The INT16 tolerance (:func:`int16_bound`). With alpha = -1 in every round MP-MRF keeps every unmasked
key, so the only difference from float attention is the INT16 quantisation of Q, K and V (one scale
``s_x = max|x| / 32767`` per (b, h) slice, rounding error <= s_x / 2 per element):

* a logit ``scale * q.k`` moves by at most
  ``delta = scale * D * (Mq * s_k / 2 + Mk * s_q / 2 + s_q * s_k / 4)`` (M = max |x| of the slice);
* every softmax weight then moves by a factor in [exp(-2 delta), exp(2 delta)], so the weights move by
  at most ``exp(2 delta) - 1`` in total;
* an output element ``sum_j p_j v_j`` moves by at most ``Mv * (exp(2 delta) - 1) + s_v / 2``.

Float32 arithmetic on either side adds a few ulps: the bound adds ``1e-5 * Mv + 1e-6``.
"""

from __future__ import annotations

import numpy as np


def from_onnx(model, **kwargs):
    from tvm.relax.frontend.onnx import from_onnx as convert

    return convert(model, **kwargs)


def host_target():
    """llvm for the host CPU at LLVM opt-level 0: five times faster to build than the default and
    the same arithmetic (no fast-math either way), which keeps the suite within its time budget."""
    import tvm

    return tvm.target.Target({"kind": "llvm", "opt-level": 0})


class Built:
    """A VM and the runner its offloaded calls go to (``built["main"]`` is the VM's function)."""

    def __init__(self, executable):
        from energon_tvm.executor import Runner
        from energon_tvm.relax import virtual_machine

        self.runner = Runner()
        self.vm = virtual_machine(executable, self.runner)

    def __getitem__(self, name):
        return self.vm[name]


def build(mod) -> Built:
    """A VM for ``mod`` built for the host (llvm), with its own runner."""
    import tvm

    return Built(tvm.compile(mod, target=host_target()))


def run(vm, inputs) -> np.ndarray:
    """Run ``main`` on numpy inputs (a dict in parameter order, or a list); first output as numpy."""
    import tvm

    values = list(inputs.values()) if isinstance(inputs, dict) else list(inputs)
    out = vm["main"](*[tvm.runtime.tensor(np.ascontiguousarray(v)) for v in values])
    while not hasattr(out, "numpy"):
        out = out[0]
    return out.numpy()


def run_collected(vm: Built, inputs, capture: bool = True):
    """(output, runner) of one run; the runner's ``calls`` are that run's offloaded calls."""
    vm.runner.configure(capture=capture).take()
    out = run(vm, inputs)
    return out, vm.runner


def int16_bound(q, k, v, scale) -> float:
    """The largest output error dense INT16 MP-MRF may make against float attention (module
    docstring), over all (b, h) slices of q [B,H,Sq,D], k/v [B,H,Sk,D]."""
    def amax(x):
        return np.max(np.abs(x.astype(np.float64)), axis=(-2, -1))

    mq, mk, mv = amax(q), amax(k), amax(v)
    sq, sk, sv = mq / 32767, mk / 32767, mv / 32767
    d = q.shape[-1]
    delta = scale * d * (mq * sk / 2 + mk * sq / 2 + sq * sk / 4)
    bound = mv * np.expm1(2 * delta) + sv / 2 + 1e-5 * mv + 1e-6
    return float(np.max(bound))


def oracle_mask(workload, bias):
    """The additive mask the oracle gets for a call: the captured bias plus, for a causal workload,
    -inf above the (bottom-right aligned) diagonal."""
    mask = None if bias is None else bias.astype(np.float32)
    if workload.causal:
        q = np.arange(workload.seq_q)[:, None]
        k = np.arange(workload.seq_k)[None, :]
        causal = np.where(k > q + workload.seq_k - workload.seq_q, -np.inf, 0.0).astype(np.float32)
        mask = causal if mask is None else mask + causal
    return mask

