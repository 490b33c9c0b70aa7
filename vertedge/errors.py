"""The one error type the tool raises for bad input or an impossible request."""


class VertedgeError(Exception):
    """A user-facing failure: its message is one line naming the file and the reason."""


class CudaProviderError(VertedgeError):
    """ONNX Runtime lists its CUDA provider but could not start it (CUDA or cuDNN libraries missing)."""
