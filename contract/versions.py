"""QEMU versions and the model's version profiles.

A binary maps to the newest profile not newer than it (10.0.2 -> 10.0, 9.2.4 -> 9.2, 11.0 -> 10.2).
Behaviour that differs per version is written as comparisons against these constants next to the rule,
naming the QEMU commit or release where it changed, rather than as a copy of the model per version.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import total_ordering


@total_ordering
@dataclass(frozen=True)
class Version:
    major: int
    minor: int
    micro: int = 0

    @classmethod
    def parse(cls, text: str) -> Version:
        """Parse "10.0.2", "7.2", "QEMU emulator version 10.0.2 (Debian ...)" or "v8.2.0"."""
        m = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", text)
        if not m:
            raise ValueError(f"not a QEMU version: {text!r}")
        return cls(int(m.group(1)), int(m.group(2)), int(m.group(3) or 0))

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return (self.major, self.minor, self.micro) < (other.major, other.minor, other.micro)

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.micro}"

    @property
    def short(self) -> str:
        return f"{self.major}.{self.minor}"


V7_2 = Version(7, 2)
V8_0 = Version(8, 0)
V8_1 = Version(8, 1)
V8_2 = Version(8, 2)
V9_0 = Version(9, 0)
V9_1 = Version(9, 1)
V9_2 = Version(9, 2)
V10_0 = Version(10, 0)
V10_1 = Version(10, 1)
V10_2 = Version(10, 2)

PROFILES: tuple[Version, ...] = (V7_2, V8_0, V8_1, V8_2, V9_0, V9_1, V9_2, V10_0, V10_1, V10_2)


def profile_note(version: Version | str) -> str | None:
    """What a user must know when the model predicts ``version`` from an older profile because no profile
    is as new ("no profile for 11.1: using 10.2"); None when a profile of that major.minor exists or the
    version is between two profiles (the newest older profile is then the rule, documented in
    docs/scenario-format.md)."""
    v = Version.parse(version) if isinstance(version, str) else version
    newest = PROFILES[-1]
    if Version(v.major, v.minor) <= newest:
        return None
    return f"no profile for {v.major}.{v.minor}: using {newest.short}"


def profile_for(version: Version | str) -> Version:
    """The newest profile not newer than ``version``; raises ValueError for versions older than 7.2."""
    v = Version.parse(version) if isinstance(version, str) else version
    candidates = [p for p in PROFILES if p <= Version(v.major, v.minor)]
    if not candidates:
        raise ValueError(
            f"QEMU {v} is older than the oldest profile ({PROFILES[0].short}); profiles: "
            + ", ".join(p.short for p in PROFILES)
        )
    return candidates[-1]
