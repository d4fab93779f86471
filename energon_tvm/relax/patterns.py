"""The ``energon.*`` pattern table: which Relax subgraphs are attention blocks Energon may take.

Three entries, registered once with TVM's BYOC pattern registry:

* ``energon.attention`` / ``energon.attention_bias``: TVM's own ``R.nn.attention`` ops (BSNH);
* ``energon.attention_decomposed``: ``matmul(P, V)`` with ``P`` a softmax of the scores of
  ``matmul(Q, K^T)``, covering what the exporters produce (see ``tests/relax/onnx_graphs.py``):

  - Q / K^T operands optionally scaled by a constant (SDPA scales each by D**-0.25), the scale possibly
    under reshape / broadcast_to / permute_dims (torch.export's batched matmuls);
  - up to :data:`SCORE_STEPS` steps between the score matmul and the softmax, each one of: multiply /
    divide (the scale), add (mask or bias), where (GPT-2 style masking), reshape (torch.export's
    [B*H,S,S] -> [B,H,S,S]), astype;
  - up to :data:`PROB_STEPS` steps between the softmax and the output matmul: ``where(isnan(p), 0, p)``
    (ONNX SDPA), ``where(all_masked_rows(scores), 0, p)`` (torch.export SDPA), astype, reshape,
    broadcast_to.

The patterns only decide the extent of a block; :mod:`~energon_tvm.relax.checks` decides whether it
is offloadable (softmax axis, constant scale, dtype, static shapes, head dim, mask). The matcher is
greedy (an alternative that matched is never revisited), so every optional step is written
"step(previous) | previous" with the longer alternative first.
"""

from __future__ import annotations

from functools import partial

from tvm.relax.backend.pattern_registry import get_patterns_with_prefix, register_patterns
from tvm.relax.dpl import is_const, is_op, wildcard
from tvm.relax.transform import FusionPattern

from .checks import PartitionSession, check_site, site_attrs, structural_check

PREFIX = "energon"
ATTENTION = "energon.attention"
ATTENTION_BIAS = "energon.attention_bias"
DECOMPOSED = "energon.attention_decomposed"
PATTERN_NAMES = (DECOMPOSED, ATTENTION, ATTENTION_BIAS)

SCORE_STEPS = 6
PROB_STEPS = 4
OPERAND_LAYOUT_STEPS = 4
GUARD_STEPS = 7


def _layout(x):
    return (is_op("relax.permute_dims")(x) | is_op("relax.reshape")(x, wildcard())
            | is_op("relax.broadcast_to")(x, wildcard()))


def _operand():
    """A score-matmul operand: a constant scale factor, possibly under layout ops, else anything.

    Layout ops are only taken into the block when a scale lies under them (they are needed to reach
    it); otherwise they stay on the host and the operand is the wildcard.
    """
    base = wildcard()
    scaled = is_op("relax.multiply")(base, is_const()) | is_op("relax.divide")(base, is_const())
    chain = scaled
    for _ in range(OPERAND_LAYOUT_STEPS):
        chain = _layout(chain) | scaled
    return chain | base


def _score_step(x):
    return (is_op("relax.multiply")(x, wildcard()) | is_op("relax.divide")(x, wildcard())
            | is_op("relax.add")(x, wildcard())
            | is_op("relax.where")(wildcard(), x, wildcard()) | is_op("relax.where")(wildcard(), wildcard(), x)
            | is_op("relax.reshape")(x, wildcard()) | is_op("relax.astype")(x))


def _all_masked_rows(scores):
    """torch.export SDPA's row guard: logical_not(any(scores != -inf)), as a chain of unary ops."""
    test = is_op("relax.equal")(scores, is_const()) | is_op("relax.isinf")(scores)
    chain = test
    for _ in range(GUARD_STEPS):
        step = (is_op("relax.logical_not")(chain) | is_op("relax.astype")(chain) | is_op("relax.max")(chain)
                | is_op("relax.min")(chain))
        chain = step | chain
    return chain


def _prob_step(x, scores):
    zero = is_const() | is_op("relax.full_like")(x, is_const()) | is_op("relax.zeros_like")(x)
    return (is_op("relax.where")(is_op("relax.isnan")(x), is_const(), x)
            | is_op("relax.where")(_all_masked_rows(scores), zero, x)
            | is_op("relax.astype")(x) | is_op("relax.reshape")(x, wildcard())
            | is_op("relax.broadcast_to")(x, wildcard()))


def decomposed_attention_pattern():
    """(root pattern, annotations) of matmul-softmax-matmul attention."""
    scores = is_op("relax.matmul")(_operand(), _operand())
    logits = scores
    for _ in range(SCORE_STEPS):
        logits = _score_step(logits) | logits
    probs = is_op("relax.nn.softmax")(logits)
    chain = probs
    for _ in range(PROB_STEPS):
        chain = _prob_step(chain, logits) | chain
    root = is_op("relax.matmul")(chain, wildcard())
    return root, {"root": root}


def attention_op_pattern(with_bias: bool):
    if with_bias:
        root = is_op("relax.nn.attention_bias")(wildcard(), wildcard(), wildcard(), wildcard())
    else:
        root = is_op("relax.nn.attention")(wildcard(), wildcard(), wildcard())
    return root, {"root": root}


def _entries() -> list[tuple]:
    """(name, root pattern, annotations), lowest priority first."""
    return [(name, root, annotated) for name, (root, annotated) in (
        (ATTENTION, attention_op_pattern(False)),
        (ATTENTION_BIAS, attention_op_pattern(True)),
        (DECOMPOSED, decomposed_attention_pattern()))]


def pattern_table() -> list[tuple]:
    """The table as ``register_patterns`` takes it (lowest priority first), with the structural check:
    what TVM's registry lists for discovery."""
    return [(name, root, annotated, structural_check) for name, root, annotated in _entries()]


def energon_patterns(session: PartitionSession | None = None) -> list:
    """The ``energon.*`` patterns, highest priority first.

    With ``session``: the patterns one partition runs, the session bound into their checks (that
    partition's verdicts and programs go there and nowhere else). Without: the entries of TVM's pattern
    registry, whose check is only structural (for discovery; they compile nothing)."""
    if session is None:
        register()
        return get_patterns_with_prefix(PREFIX)
    return [FusionPattern(name, root, annotated, partial(check_site, pattern=name, session=session),
                          partial(site_attrs, session=session))
            for name, root, annotated in reversed(_entries())]


def register() -> None:
    """Register the ``energon.*`` patterns with TVM's pattern registry, for discovery (idempotent: the
    registry already holding them is the test)."""
    if not get_patterns_with_prefix(PREFIX):
        register_patterns(pattern_table())
