"""vpp.export: a trained VideoPredictionPolicy -> the ONNX artifact that ``vpp.runtime`` runs."""

from vpp.export.writer import PARITY_TOLERANCE, ExportError, export_policy, reference_actions

__all__ = ["PARITY_TOLERANCE", "ExportError", "export_policy", "reference_actions"]
