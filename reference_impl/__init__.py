"""The reference model: predicts the Outcome real QEMU gives for a scenario (see reference_impl.predict)."""

from reference_impl.predict import predict

__all__ = ["predict"]
