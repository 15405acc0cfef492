"""``SaveVMHandlers`` as far as the model needs them (include/migration/register.h).

Only ``save_prepare`` matters for gating: ``qemu_savevm_state_prepare()`` calls every registered handler's
``save_prepare`` in savevm list order (registration order), skipping handlers whose ``is_active`` is false,
and stops at the first error. It runs from ``migrate_init()`` (QMP ``migrate`` and the snapshot path),
from QEMU 8.2 on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class PrepareContext:
    """What ``save_prepare`` handlers look at: the source's capabilities and runstate."""

    capabilities: Mapping[str, bool]
    runstate: str  # e.g. "running", "paused", "save-vm"


class SaveVMHandlers(Protocol):
    """A registered savevm entry. ``idstr`` as in ``register_savevm_live`` (e.g. "0000:00:02.0/vfio")."""

    @property
    def idstr(self) -> str: ...

    def is_active(self) -> bool: ...

    def save_prepare(self, ctx: PrepareContext) -> str | None:
        """The error message when the handler refuses, else None."""
        ...


def qemu_savevm_state_prepare(handlers: list[SaveVMHandlers], ctx: PrepareContext) -> str | None:
    """``qemu_savevm_state_prepare()`` (migration/savevm.c, 8.2+): first refusal wins."""
    for handler in handlers:
        if not handler.is_active():
            continue
        error = handler.save_prepare(ctx)
        if error is not None:
            return error
    return None
