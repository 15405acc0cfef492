"""The model's honest limits: :class:`NotModelled`, raised where a scenario asks for something the model does
not model for that version (a raw QMP command, a URI scheme, an argument, a device), so that the prediction
says "not modelled: <what>" instead of guessing.

A guess that looks like a prediction (the old default: an unknown QMP command answered ``{}``) turns every gap
of the model into a false alarm for the user, who cannot tell it from a QEMU regression. ``predict`` catches
it at the step that raised it and returns an outcome that is not compared (docs/scenario-format.md,
"Not modelled").
"""

from __future__ import annotations


class NotModelled(Exception):
    """The model cannot predict this step. ``what`` names it the way a user reads it in the report, e.g.
    ``QMP command 'x-colo-lost-heartbeat'`` or ``migrate URI scheme 'rdma'``."""

    def __init__(self, what: str) -> None:
        self.what = what
        super().__init__(f"not modelled: {what}")
