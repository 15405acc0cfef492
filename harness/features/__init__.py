"""Optional QEMU features: what a scenario needs (needs) and what a binary offers (offered)."""

from harness.features.needs import Need, scenario_needs
from harness.features.offered import Offered, lacking, probe_offered

__all__ = ["Need", "Offered", "lacking", "probe_offered", "scenario_needs"]
