"""ONNX Runtime inference engine for the nodule segmentation model.

One :class:`Engine` per process: it verifies the model files against ``model.json``, opens an
ORT session on the best provider available (TensorRT > CUDA > OpenVINO > CPU), on a CPU
provider also one per analysis the process runs at once (``lanes.py``), and turns an HU
volume into a voxel-wise nodule probability map on the volume's own grid.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from services.analysis import preprocess, tiling
from services.analysis.config import AnalysisConfig, config_from_manifest
from services.analysis.lanes import Lanes
from services.analysis.manifest import ModelFile, ModelManifest
from services.analysis.stage2 import Calibration, Stage2
from services.core.errors import PermanentError

log = logging.getLogger(__name__)

_PROVIDER_NAMES = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
_GPU_PROVIDERS = {"TensorrtExecutionProvider", "CUDAExecutionProvider"}
#: providers whose sessions run on the CPU's cores, where jobs side by side get lanes
_CPU_PROVIDERS = {"OpenVINOExecutionProvider", "CPUExecutionProvider"}
#: Probabilities below this on the model grid are written as exactly 0 on the native grid.
FLOOR = 0.02


class ModelError(PermanentError):
    """The model folder is missing, incomplete, corrupt or does not match its manifest."""

    code = "model-unusable"


def sha256_of(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def choose_providers(requested: str, available: list[str]) -> list[str]:
    """ORT providers to try, best first: ``auto`` or a comma list of tensorrt/cuda/openvino/cpu."""
    if requested.strip().lower() in ("", "auto"):
        wanted = list(_PROVIDER_NAMES.values())
    else:
        wanted = []
        for name in requested.lower().split(","):
            key = name.strip().removesuffix("executionprovider")
            if key not in _PROVIDER_NAMES:
                raise ModelError(f"unknown execution provider {name.strip()!r}")
            wanted.append(_PROVIDER_NAMES[key])
    chosen = [p for p in wanted if p in available]
    if not chosen:
        raise ModelError(f"none of the providers {wanted} is available (have {available})")
    return chosen


def _verify(model_dir: Path, entry: ModelFile) -> Path:
    path = model_dir / entry.path
    if not path.is_file():
        raise ModelError(f"model file missing: {path}")
    actual = sha256_of(path)
    if actual != entry.sha256:
        raise ModelError(
            f"sha256 mismatch for {path}: manifest {entry.sha256[:12]}…, file {actual[:12]}…"
        )
    return path


def _session_options(threads: int | None = None) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or _threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    # no busy-waiting worker threads: on a shared CPU spinning steals time from others
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def _load_stage2(model_dir: Path, manifest: ModelManifest, providers: list[Any]) -> Stage2 | None:
    """The second-stage classifier the manifest names, verified like the first."""
    spec = manifest.stage2
    if spec is None:
        return None
    path = _verify(model_dir, spec.file)
    session = _open(path, stage_two_providers(providers), _session_options())
    # the manifest's calibration was checked when it was read (manifest.py)
    return Stage2(session, Calibration.from_dict(spec.calibration))


def stage_two_providers(providers: list[Any]) -> list[Any]:
    """Stage one's providers (names or ``(name, options)`` pairs) fit for stage two.

    TensorRT and OpenVINO compile per input shape; the small batches of stage two, a new
    shape for each candidate count, run well on CUDA or ONNX Runtime's own CPU kernels.
    """
    plain = {"CUDAExecutionProvider", "CPUExecutionProvider"}
    kept = [p for p in providers if (p[0] if isinstance(p, tuple) else p) in plain]
    return kept or ["CPUExecutionProvider"]


def _threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def _provider_args(
    chosen: list[str], model_dir: Path, precision: str, *, threads: int | None = None
) -> list[Any]:
    """ORT's provider list for ``chosen``. ``threads``: a lane's session, on that many of
    the cores and not pinned to any (OpenVINO pins a session's threads to the first cores,
    so two lanes of one thread would share one core); None: the whole session."""
    args: list[Any] = []
    for name in chosen:
        if name == "TensorrtExecutionProvider":
            cache = model_dir / ".trt-cache"
            args.append(
                (
                    name,
                    {
                        "trt_fp16_enable": precision == "fp16",
                        "trt_engine_cache_enable": True,
                        "trt_engine_cache_path": str(cache),
                    },
                )
            )
        elif name == "OpenVINOExecutionProvider":
            options = {"device_type": "CPU", "num_of_threads": str(threads or _threads())}
            if threads is not None:
                # the plugin's own settings: the thread count given again, as they replace it
                cpu = {"ENABLE_CPU_PINNING": "NO", "INFERENCE_NUM_THREADS": threads}
                options["load_config"] = json.dumps({"CPU": cpu})
            args.append((name, options))
        else:
            args.append(name)
    return args


def _open(path: Path, provider_args: list[Any], options: Any) -> Any:
    import onnxruntime as ort

    try:
        return ort.InferenceSession(str(path), options, providers=provider_args)
    except Exception as exc:  # ORT raises its own exception types
        raise ModelError(f"cannot load {path}: {_first_line(exc)}") from exc


def _first_line(exc: Exception) -> str:
    """ORT's messages run to many lines; a model error is one."""
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _warm(session: Any, patch_size: Sequence[int], path: Path) -> None:
    """One pass of a full-size tile of zeros."""
    tile = np.zeros((1, 1, *patch_size), dtype=np.float32)
    try:
        session.run(None, {session.get_inputs()[0].name: tile})
    except Exception as exc:  # ORT raises its own exception types
        tile_shape = tuple(patch_size)
        raise ModelError(f"cannot run {path} on a {tile_shape} tile: {_first_line(exc)}") from exc


class Engine:
    """A loaded, verified model and its ONNX Runtime session."""

    def __init__(
        self,
        session: Any,
        manifest: ModelManifest,
        provider: str,
        precision: str,
        stage2: Stage2 | None = None,
        *,
        lean: Sequence[Any] = (),
    ):
        self.session = session
        #: one session per lane, on a share of the cores; empty when jobs run on ``session``
        self._lean = tuple(lean)
        self.lanes = Lanes(len(self._lean))
        self.manifest = manifest
        self.provider = provider
        self.precision = precision
        #: what the pipeline needs to know about this model, built once
        self.config: AnalysisConfig = config_from_manifest(manifest, stage2)
        self._input = session.get_inputs()[0].name

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> str:
        return self.manifest.version

    @classmethod
    def load(
        cls,
        model_dir: Path,
        providers: str = "auto",
        *,
        precision: str = "auto",
        lanes: int = 1,
    ) -> Engine:
        """Verify ``model_dir`` against its manifest and open an ORT session.

        ``precision`` is ``fp32``, ``fp16`` or ``auto`` (fp16 on GPU providers, else fp32).
        ``lanes``: analyses this process runs at once; on a CPU provider each gets a session
        of its own on its share of the cores for while others run beside it (``lanes.py``).
        """
        import onnxruntime as ort

        model_dir = Path(model_dir)
        manifest_path = model_dir / "model.json"
        if not manifest_path.is_file():
            raise ModelError(f"no model manifest at {manifest_path}")
        try:
            manifest = ModelManifest.model_validate_json(manifest_path.read_text())
        except ValueError as exc:
            first = str(exc).splitlines()[0]
            raise ModelError(f"invalid model manifest {manifest_path}: {first}") from exc
        chosen = choose_providers(providers, ort.get_available_providers())
        on_gpu = chosen[0] in _GPU_PROVIDERS
        if precision == "auto":
            precision = "fp16" if on_gpu and "fp16" in manifest.files else "fp32"
        if precision not in manifest.files:
            raise ModelError(f"model manifest lists no {precision!r} file")
        path = _verify(model_dir, manifest.files[precision])
        provider_args = _provider_args(chosen, model_dir, precision)
        session = _open(path, provider_args, _session_options())
        provider = session.get_providers()[0]
        lean: list[Any] = []
        lane_threads = max(1, _threads() // max(1, lanes))
        if lanes > 1 and provider in _CPU_PROVIDERS and lane_threads < _threads():
            # A session takes its working memory (some 230 MB) at its first full-size tile.
            # Each takes it now, so the worker's memory is flat from the first study on, not
            # grown on the day a lane or the whole session first runs.
            _warm(session, manifest.patch_size, path)
            lane_args = _provider_args(chosen, model_dir, precision, threads=lane_threads)
            try:
                for _ in range(lanes):
                    lean.append(_open(path, lane_args, _session_options(lane_threads)))
                    _warm(lean[-1], manifest.patch_size, path)
            except ModelError as exc:  # the lanes are for speed: the jobs share the session
                log.warning("event=model_lanes_unavailable lanes=%d error=%s", lanes, exc)
                lean = []
        stage2 = _load_stage2(model_dir, manifest, provider_args)
        log.info(
            "event=model_loaded name=%s version=%s provider=%s precision=%s lanes=%d "
            "lane_threads=%d",
            manifest.name,
            manifest.version,
            provider,
            precision,
            len(lean),
            lane_threads if lean else _threads(),
        )
        return cls(session, manifest, provider, precision, stage2, lean=lean)

    def _plan(
        self, model_shape: tuple[int, int, int]
    ) -> tuple[tuple[int, int, int], list[tuple[int, int, int]]]:
        m = self.manifest
        return tiling.plan(model_shape, m.patch_size, m.overlap, m.multiple)

    def flops(self, shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> float:
        """Network FLOPs (2 × multiply-adds) to process a volume of ``shape`` at ``spacing``."""
        model_shape = preprocess.grid_shape(shape, spacing, self.manifest.spacing_mm)
        tile, corners = self._plan(model_shape)
        passes = 1 + len(self.manifest.flip_axes)
        return float(passes * len(corners) * int(np.prod(tile)) * self.manifest.flops_per_voxel)

    def lane(self) -> AbstractContextManager[int | None]:
        """Hold a lane for one analysis in the calling thread (see ``lanes.py``)."""
        return self.lanes.held()

    def _pass(self, patch: NDArray[np.float32]) -> NDArray[np.float32]:
        lane = self.lanes.current()
        session = self.session if lane is None else self._lean[lane]
        out = session.run(None, {self._input: patch[None, None]})[0]
        return np.asarray(out[0, 0], dtype=np.float32)

    def _run(self, patch: NDArray[np.float32]) -> NDArray[np.float32]:
        """Logits for one tile: the mean over the tile and its mirror images (``flip_axes``)."""
        logits = self._pass(patch)
        for axis in self.manifest.flip_axes:
            mirrored = np.ascontiguousarray(np.flip(patch, axis))
            logits += np.flip(self._pass(mirrored), axis)
        return logits / np.float32(1 + len(self.manifest.flip_axes))

    def model_probability(
        self, x: NDArray[np.float32], *, progress: Callable[[float], None] | None = None
    ) -> NDArray[np.float32]:
        """Sliding-window probability on the model grid for a preprocessed input ``x``."""
        tile, corners = self._plan(x.shape)  # type: ignore[arg-type]
        padded_shape = [max(n, max(c[a] for c in corners) + tile[a]) for a, n in enumerate(x.shape)]
        xp = preprocess.pad_to(x, padded_shape)
        weights = tiling.blend_weights(tile, self.manifest.overlap)
        acc = np.zeros(xp.shape, dtype=np.float32)
        norm = np.zeros(xp.shape, dtype=np.float32)
        for index, (z, y, w) in enumerate(corners):
            box = (slice(z, z + tile[0]), slice(y, y + tile[1]), slice(w, w + tile[2]))
            logits = self._run(np.ascontiguousarray(xp[box]))
            acc[box] += weights / (1.0 + np.exp(-logits))
            norm[box] += weights
            if progress is not None:
                progress((index + 1) / len(corners))
        prob = acc / norm
        return prob[: x.shape[0], : x.shape[1], : x.shape[2]]

    def probability(
        self,
        hu: NDArray[np.floating],
        spacing: tuple[float, float, float],
        *,
        progress: Callable[[float], None] | None = None,
    ) -> NDArray[np.float32]:
        """Nodule probability in ``[0, 1]`` for every voxel of ``hu`` (same shape, ``(k, j, i)``).

        The volume is windowed, resampled to the model spacing, run tile by tile with cosine
        blending, and the map is interpolated linearly back onto the input grid. Voxels whose
        model-grid probability is below ``FLOOR`` come back as exactly 0.
        """
        hu = np.asarray(hu)
        if hu.ndim != 3 or min(hu.shape) < 1:
            raise ValueError(f"expected a non-empty 3D volume, got shape {hu.shape}")
        m = self.manifest
        started = time.perf_counter()
        x = preprocess.model_input(hu, spacing, m.spacing_mm, m.hu_window)
        prob_model = self.model_probability(x, progress=progress)
        out = np.zeros(hu.shape, dtype=np.float32)
        labels, count = ndimage.label(prob_model >= FLOOR)
        for found in ndimage.find_objects(labels):
            if found is None:
                continue
            lo_m = [s.start for s in found]
            hi_m = [s.stop for s in found]
            lo = [
                max(0, int(np.floor((a - 1) * t / s)))
                for a, t, s in zip(lo_m, m.spacing_mm, spacing, strict=True)
            ]
            hi = [
                min(n, int(np.ceil(b * t / s)) + 1)
                for b, t, s, n in zip(hi_m, m.spacing_mm, spacing, hu.shape, strict=True)
            ]
            size = [b - a for a, b in zip(lo, hi, strict=True)]
            if min(size) <= 0:
                continue
            part = preprocess.to_native(
                prob_model, m.spacing_mm, hu.shape, spacing, offset=lo, shape=size
            )
            box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
            np.maximum(out[box], part, out=out[box])
        np.clip(out, 0.0, 1.0, out=out)
        log.debug(
            "event=probability shape=%s model_shape=%s regions=%d seconds=%.2f",
            hu.shape,
            x.shape,
            count,
            time.perf_counter() - started,
        )
        return out
