"""A simulated Yeastar S-Series PBX: the API recfs talks to, with calls, recordings,
reports and switchable faults. Used by `recfs sim`, `recfs demo` and the tests."""

from recfs.sim.config import SimConfig
from recfs.sim.server import SimulatorInfo, run_simulator

__all__ = ["SimConfig", "SimulatorInfo", "run_simulator"]
