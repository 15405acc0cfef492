"""``migconform fuzz``: model-based fuzzing of the model against real QEMU (docs/fuzzing.md).

The suite and the sweep test the step sequences someone wrote or enumerated; the fuzzer lets hypothesis' stateful
testing compose them (harness.fuzz.machine), runs every prefix on a fresh QEMU pair and on the model
(harness.fuzz.lockstep), shrinks what diverges to a minimal sequence and writes it as a scenario file
(harness.fuzz.toml_out), within a wall-time budget (harness.fuzz.session).
"""
