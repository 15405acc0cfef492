"""The parts of :func:`harness.executor.execute`, so that each rule of "How a scenario is executed"
(docs/scenario-format.md) lives in one module: :mod:`.preflight` (what is decided before any QEMU starts),
:mod:`.vfio` (host devices per launch), :mod:`.guest` (boot and memory check), :mod:`.steps` (one handler per
scenario action), :mod:`.verdict` (which way of ending wins) and :mod:`.record` (the outcome's extensions).
"""
