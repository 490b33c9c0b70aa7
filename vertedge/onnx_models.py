"""The two ONNX models (localization, identification) and the DRR protocol they carry.

Contract (written by `export/`, read here): input `image` (B, 1, H, W) float32, the normalized DRRs;
localization output `heatmap` (B, 1, H, W); identification output `prob` (B, 1 + C, H, W), softmax
applied, channel 0 background, channel 1 + j the VerSe label `classes[j]`. Metadata keys
`vertedge.task`, `vertedge.protocol` (Protocol JSON), `vertedge.classes`, `vertedge.heatmap`
(localization: sigma_px, amplitude, threshold), `vertedge.model_id`, `vertedge.model_version`.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from .device import current_gpu
from .errors import CudaProviderError, VertedgeError
from .geometry import Protocol
from .options import DEFAULT_OPTIONS, PipelineOptions
from .xp import array_module

LOCALIZATION_FILE = "localization.onnx"
IDENTIFICATION_FILE = "identification.onnx"
REQUIRED_KEYS = ("vertedge.task", "vertedge.protocol", "vertedge.classes", "vertedge.model_id")
# What the runtime reads from `vertedge.heatmap`, per task: peak finding needs the localization's threshold.
REQUIRED_HEATMAP_KEYS = {"localization": ("threshold",)}


def default_models_dir() -> Path:
    """The folder of the models shipped inside the package."""
    return Path(str(resources.files("vertedge") / "models"))


@dataclass(frozen=True)
class ModelInfo:
    """What one model's metadata says."""

    path: Path
    task: str
    protocol: Protocol
    classes: tuple[int, ...]
    model_id: str
    version: str
    heatmap: dict[str, float]

    @classmethod
    def from_metadata(cls, path: Path, meta: dict[str, str]) -> ModelInfo:
        """Parse ONNX metadata; a model lacking anything the runtime reads for its task is refused."""
        missing = [k for k in REQUIRED_KEYS if k not in meta]
        if missing:
            raise VertedgeError(f"{path}: not a vertedge model (metadata lacks {', '.join(missing)})")
        task = meta["vertedge.task"]
        try:
            protocol = Protocol.from_dict(json.loads(meta["vertedge.protocol"]))
            classes = tuple(int(c) for c in json.loads(meta["vertedge.classes"]))
            heatmap = {k: float(v) for k, v in json.loads(meta.get("vertedge.heatmap", "{}")).items()}
        except (ValueError, TypeError, AttributeError) as e:  # AttributeError: JSON that is not an object
            raise VertedgeError(f"{path}: unreadable vertedge metadata ({e})") from e
        lacking = [k for k in REQUIRED_HEATMAP_KEYS.get(task, ()) if k not in heatmap]
        if lacking:
            raise VertedgeError(
                f"{path}: not a usable {task} model (metadata vertedge.heatmap lacks {', '.join(lacking)})"
            )
        return cls(
            path=path,
            task=task,
            protocol=protocol,
            classes=classes,
            model_id=meta["vertedge.model_id"],
            version=meta.get("vertedge.model_version", ""),
            heatmap=heatmap,
        )




def _pick(folder: Path, file: str, fp16: bool) -> Path:
    """The model file: its fp16 variant (NAME.fp16.onnx) when asked for, else the fp32 one."""
    if not fp16:
        return folder / file
    half = folder / file.replace(".onnx", ".fp16.onnx")
    if not half.is_file():
        raise VertedgeError(f"{half}: no fp16 variant of {file} in {folder}")
    return half


def providers_for(
    device: str, fp16: bool = False, device_id: int = 0, options: PipelineOptions = DEFAULT_OPTIONS
) -> list[Any]:
    """ONNX Runtime execution providers (with `options`' CUDA provider options) for 'cpu' or 'cuda'
    (GPU `device_id`), and fp32 or fp16 models."""
    if device == "cuda":
        cuda = options.cuda_provider_options(fp16)
        return [("CUDAExecutionProvider", {**cuda, "device_id": str(device_id)}), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


@functools.cache
def _preload_cuda_libraries() -> None:
    """Load CUDA and cuDNN from the NVIDIA pip packages beside onnxruntime-gpu, where there are any.

    onnxruntime-gpu links them by soname; installed as pip packages (onnxruntime-gpu[cuda,cudnn])
    they are not on the loader's path unless loaded first. System-wide CUDA needs no preload, and
    an onnxruntime without `preload_dlls` (CPU builds, before 1.21) has nothing to do here.
    """
    import onnxruntime as ort

    preload = getattr(ort, "preload_dlls", None)
    if preload is not None:
        preload(msvc=False)


def _session(
    path: Path, device: str, fp16: bool = False, device_id: int = 0, options: PipelineOptions = DEFAULT_OPTIONS
) -> tuple[Any, ModelInfo]:
    """Open one ONNX Runtime session (on GPU `device_id` for 'cuda') and parse its metadata."""
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise VertedgeError(
            "onnxruntime is not installed: pip install 'vertedge[cpu]' (or '[gpu]' for CUDA)"
        ) from e
    if not path.is_file():
        raise VertedgeError(f"{path}: model file not found")
    if device == "cuda":
        _preload_cuda_libraries()
    session_options = ort.SessionOptions()
    session_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session_options.log_severity_level = 3
    providers = providers_for(device, fp16, device_id, options)
    try:
        session = ort.InferenceSession(str(path), session_options, providers=providers)
    except Exception as e:  # onnxruntime raises its own untyped errors for corrupt files
        raise VertedgeError(f"{path}: not a loadable ONNX model ({type(e).__name__})") from e
    if device == "cuda" and "CUDAExecutionProvider" not in session.get_providers():
        # ONNX Runtime falls back to the CPU with only a log line: make it a decision instead
        raise CudaProviderError(
            "ONNX Runtime could not start its CUDA provider (CUDA 13 / cuDNN 9 libraries not found; "
            "pip install 'onnxruntime-gpu[cuda,cudnn]')"
        )
    meta = dict(session.get_modelmeta().custom_metadata_map)
    return session, ModelInfo.from_metadata(path, meta)


class _Net:
    """One ONNX session; runs host arrays directly and CuPy arrays through IO binding (no host copy)."""

    def __init__(self, session: Any, output: str, device_id: int = 0, host_views_per_run: int = 1) -> None:
        self.session = session
        self.output = output
        self.device_id = device_id
        self.host_views_per_run = max(1, int(host_views_per_run))
        self.half = session.get_inputs()[0].type == "tensor(float16)"  # an fp16 export
        self.channels = session.get_outputs()[0].shape[1]
        if not isinstance(self.channels, int):  # device outputs are allocated before the run
            raise VertedgeError(f"output '{output}' has no fixed channel count ({self.channels})")

    def __call__(self, images: Any) -> Any:
        """Output (K, channels, H, W) float32 for normalized DRRs (K, H, W), on the device they came from."""
        xp = array_module(images)
        x = xp.ascontiguousarray(images[:, None], dtype=xp.float16 if self.half else xp.float32)
        if xp is np:  # in chunks of views: ONNX Runtime's CPU arena grows with the batch
            step = self.host_views_per_run
            outs = [self.session.run([self.output], {"image": x[i : i + step]})[0] for i in range(0, len(x), step)]
            return np.concatenate(outs).astype(np.float32, copy=False)
        return self._run_bound(x)

    def _run_bound(self, x: Any) -> Any:
        """Run on CuPy input with input and output bound to device memory."""
        import cupy

        y = cupy.empty((x.shape[0], self.channels, *x.shape[2:]), x.dtype)
        binding = self.session.io_binding()
        binding.bind_input("image", "cuda", self.device_id, x.dtype.type, x.shape, x.data.ptr)
        binding.bind_output(self.output, "cuda", self.device_id, y.dtype.type, y.shape, y.data.ptr)
        # ONNX Runtime computes on its own stream: the DRR kernels writing x must be done first
        cupy.cuda.get_current_stream().synchronize()
        self.session.run_with_iobinding(binding)
        return y.astype(cupy.float32, copy=False)


class Models:
    """Both ONNX sessions, built once and reused for every scan."""

    def __init__(
        self,
        models_dir: str | Path | None = None,
        device: str = "cpu",
        fp16: bool = False,
        options: PipelineOptions = DEFAULT_OPTIONS,
    ) -> None:
        """Open both models of `models_dir` (default: the shipped ones); `fp16` takes effect on CUDA only,
        with `options`' CUDA provider options.

        On CUDA the sessions run on the current CUDA device (`device.select_gpu`), as the DRR kernels do.
        """
        folder = Path(models_dir) if models_dir is not None else default_models_dir()
        if not (folder / LOCALIZATION_FILE).is_file() or not (folder / IDENTIFICATION_FILE).is_file():
            where = "in this installation" if models_dir is None else f"in {folder}"
            raise VertedgeError(
                f"no models installed {where}: expected {LOCALIZATION_FILE} and {IDENTIFICATION_FILE} "
                "(train them with `vertedge-train` and `vertedge-train export`, or pass --models DIR)"
            )
        self.device = device
        half = fp16 and device == "cuda"  # ONNX Runtime's CPU kernels have no fast fp16 convolutions
        gpu = current_gpu() if device == "cuda" else 0
        loc, self.loc_info = _session(_pick(folder, LOCALIZATION_FILE, half), device, half, gpu, options)
        ident, self.id_info = _session(_pick(folder, IDENTIFICATION_FILE, half), device, half, gpu, options)
        per_run = options.cpu_views_per_run
        self._loc, self._id = _Net(loc, "heatmap", gpu, per_run), _Net(ident, "prob", gpu, per_run)
        if (self.loc_info.task, self.id_info.task) != ("localization", "identification"):
            raise VertedgeError(f"{folder}: model tasks are {self.loc_info.task}/{self.id_info.task}")
        if self.loc_info.protocol != self.id_info.protocol:
            raise VertedgeError(f"{folder}: the two models were trained with different DRR protocols")
        if not self.id_info.classes:
            raise VertedgeError(f"{self.id_info.path}: the identification model lists no classes")

    @property
    def protocol(self) -> Protocol:
        """The DRR protocol both models were trained with."""
        return self.loc_info.protocol

    @property
    def classes(self) -> tuple[int, ...]:
        """VerSe labels of the identification channels 1..C."""
        return self.id_info.classes

    @property
    def ids(self) -> dict[str, str]:
        """Model ids for the result's provenance."""
        return {"localization": self.loc_info.model_id, "identification": self.id_info.model_id}

    def localize(self, images: Any) -> Any:
        """Heatmaps (K, H, W) float32 for normalized DRRs (K, H, W), NumPy or CuPy (output on the same device)."""
        return self._loc(images)[:, 0]

    def identify(self, images: Any) -> Any:
        """Class probabilities (K, 1 + C, H, W) float32 (channel 0 background) for DRRs (K, H, W), NumPy or CuPy."""
        return self._id(images)
