"""What the harness and the reference model share: the scenario and outcome types, and the harness's policy.

Both backends (harness/, driving real QEMU, and reference_impl/, the model) import from here and never the
harness from the model for these: the step actions and their stages (:mod:`contract.actions`), the rules the
executor adds to a scenario that the model must predict (:mod:`contract.policy`), and the texts the harness
itself writes into an outcome (:mod:`contract.messages`) are defined once. This package imports neither
backend (tests/test_static.py checks the import graph).
"""
