"""Mutation check: QEMU built from source with one deliberate bug each, to show the harness notices."""
