"""The TVM Relax backend of Energon: find attention in a Relax module, offload it, run it.

    from energon_tvm.relax import partition_for_energon, collect
    mod, report = partition_for_energon(mod, config="edge")
    ex = tvm.compile(mod, target="llvm")
    with collect() as run:
        relax.VirtualMachine(ex, tvm.cpu())["main"](*inputs)

Importing this package imports TVM, registers the ``energon.*`` patterns and the runtime bridge
(``energon.run_attention``); ``import energon_tvm`` alone does neither.
"""

from . import bridge, patterns
from .bridge import BRIDGE_FUNC, CallRecord, RunCollector, collect, register
from .lowering import BridgeCall, bridge_calls
from .partition import PartitionError, partition_for_energon
from .patterns import PATTERN_NAMES, energon_patterns
from .report import OffloadRecord, OffloadReport

patterns.register()

__all__ = [
    "BRIDGE_FUNC",
    "BridgeCall",
    "PATTERN_NAMES",
    "CallRecord",
    "OffloadRecord",
    "OffloadReport",
    "PartitionError",
    "RunCollector",
    "bridge",
    "bridge_calls",
    "collect",
    "energon_patterns",
    "partition_for_energon",
    "register",
]
