"""Training side of vertedge (the `train` extra: torch, onnx).

DRR training data, the two U-Nets, SimSiam, export to ONNX, evaluation; never imported by the runtime.
"""
