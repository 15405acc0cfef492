"""``python -m harness``: the same as the ``migconform`` command."""

from __future__ import annotations

import sys

from harness.cli import main

sys.exit(main())
