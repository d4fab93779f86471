"""The TVM Relax backend of Energon: find attention in a Relax module, offload it, run it.

    from energon_tvm.executor import EnergonTarget, Runner
    from energon_tvm.relax import partition_for_energon, virtual_machine
    mod, report = partition_for_energon(mod, EnergonTarget.create("edge"))
    runner = Runner()
    virtual_machine(tvm.compile(mod, target="llvm"), runner)["main"](*inputs)
    runner.calls  # one CallRecord per offloaded call: site, workload, CallStats

Importing this package imports TVM and registers the ``energon.*`` patterns with TVM's pattern table
(for discovery); ``import energon_tvm`` alone does neither.
"""

from . import bridge, patterns
from .bridge import BRIDGE_FUNC, CallRecord, Runner, virtual_machine
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
    "Runner",
    "bridge",
    "bridge_calls",
    "energon_patterns",
    "partition_for_energon",
    "virtual_machine",
]
