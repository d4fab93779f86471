"""energon-tvm: the software stack of the Energon dynamic-sparse-attention co-processor.

Importing this package (or ``energon_tvm.isa``, ``energon_tvm.schedules``, ``energon_tvm.runtime_sim``)
never imports TVM; the TVM integration modules import it lazily when they are used.
"""

from .isa.config import HardwareConfig, load_config
from .isa.errors import EnergonError
from .isa.numerics import FilterRound, MPMRFParams

__version__ = "0.1.0"

__all__ = ["EnergonError", "FilterRound", "HardwareConfig", "MPMRFParams", "__version__", "load_config"]
