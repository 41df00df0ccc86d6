"""ONNX -> serialized TensorRT engine, with the TensorRT Python API; the artifact's manifest lists it.

`rerankrt build-engine ARTIFACT` (or `rerankrt export ... --tensorrt`) makes the
graph of the wanted precision (fp16/bf16 cast explicitly into the ONNX, since
TensorRT 11 networks are strongly typed), builds an engine with one
optimization profile for [batch, sequence] from the artifact's limits, keeps a
timing cache beside the engines for the next build, and records the engine
(file, graph, precision, GPU compute capability, TensorRT version, profile,
sha256) in manifest.json. Needs a GPU and the `gpu` extra.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from rerankrt.artifact import Engine, Graph, Profile, hash_files, load_manifest, write_manifest
from rerankrt.engines import engine_file_name, plan_profile
from rerankrt.errors import BackendUnavailableError, ExportError
from rerankrt.export.onnx_graph import describe_graph
from rerankrt.export.precision import cast_graph, external_data_files
from rerankrt.families import get_family
from rerankrt.families.base import SCORER
from rerankrt.precision import Precision

log = logging.getLogger(__name__)

TIMING_CACHE = "tensorrt.timing-cache"  # reused by later builds; a cache, so not hashed in the manifest
WORKSPACE_BYTES = 4 << 30


def import_tensorrt():
    try:
        import tensorrt
    except ImportError as exc:
        raise BackendUnavailableError(
            "TensorRT is not installed: pip install 'rerankrt[gpu]' (needs an NVIDIA GPU and driver)"
        ) from exc
    return tensorrt


def cuda_compute_capability() -> str:
    import torch

    if not torch.cuda.is_available():
        raise BackendUnavailableError("no CUDA device: TensorRT engines need an NVIDIA GPU")
    major, minor = torch.cuda.get_device_capability()
    return f"{major}.{minor}"


def build_engine(
    artifact: Path,
    precision: Precision | str = Precision.FP16,
    max_batch: int = 64,
    max_length: int | None = None,
    opt_batch: int | None = None,
    opt_length: int | None = None,
) -> Engine:
    """Build (or rebuild) the engine for this GPU and TensorRT version; return its manifest entry."""
    manifest = load_manifest(artifact)
    if problem := get_family(manifest.family).tensorrt_problem:
        raise ExportError(problem)
    precision = Precision(precision)
    trt = import_tensorrt()
    compute_capability = cuda_compute_capability()
    max_length = max_length or manifest.max_length
    if max_length < manifest.max_length:
        raise ExportError(f"max length {max_length} is below the artifact's max_length {manifest.max_length}")
    profile = plan_profile(max_batch, max_length, opt_batch, opt_length)
    graph = _graph_for(artifact, manifest, precision)
    plan_name = engine_file_name(graph.file, compute_capability, trt.__version__)

    log.info("building %s from %s (profile %s) ...", plan_name, graph.file, profile.model_dump())
    started = time.perf_counter()
    serialized = _build(trt, artifact / graph.file, artifact / TIMING_CACHE, profile)
    (artifact / plan_name).write_bytes(serialized)
    log.info("built %s in %.0f s (%.1f MB)", plan_name, time.perf_counter() - started, len(serialized) / 1e6)

    engine = Engine(
        file=plan_name,
        graph=graph.file,
        precision=precision,
        compute_capability=compute_capability,
        tensorrt=trt.__version__,
        profile=profile,
    )
    manifest.engines = [e for e in manifest.engines if e.file != plan_name] + [engine]
    manifest.files.update(hash_files(artifact, [plan_name, graph.file]))
    write_manifest(artifact, manifest)
    return engine


def _graph_for(artifact: Path, manifest, precision: Precision) -> Graph:
    """The scorer graph in `precision`, cast from the fp32 one (and listed in the manifest) if not there yet."""
    if precision == Precision.FP32:
        return manifest.graphs[SCORER]
    role = f"{SCORER}.{precision}"
    if role not in manifest.graphs:
        source = manifest.graphs[SCORER]
        target = source.file.removesuffix(".onnx") + f".{precision}.onnx"
        log.info("casting %s to %s (norms and softmax stay fp32) ...", source.file, precision)
        cast_graph(artifact / source.file, artifact / target, precision)
        described = describe_graph(artifact, [target])
        extra = [p.name for p in external_data_files(artifact / target)]
        manifest.graphs[role] = Graph(file=target, inputs=described.inputs, outputs=described.outputs)
        manifest.files.update(hash_files(artifact, [target, *extra]))
        write_manifest(artifact, manifest)
    return manifest.graphs[role]


class _Progress:
    """Builder progress as log lines (TensorRT >= 10 calls this from the build)."""

    def __init__(self, trt):
        class Monitor(trt.IProgressMonitor):
            def __init__(self):
                trt.IProgressMonitor.__init__(self)
                self.last = 0.0

            def phase_start(self, phase_name, parent_phase, num_steps):
                log.info("tensorrt: %s (%d steps)", phase_name, num_steps)

            def step_complete(self, phase_name, step):
                now = time.monotonic()
                if now - self.last > 10:
                    log.info("tensorrt: %s step %d", phase_name, step)
                    self.last = now
                return True  # keep building

            def phase_finish(self, phase_name):
                pass

        self.monitor = Monitor()


def _build(trt, onnx_path: Path, cache_path: Path, profile: Profile) -> bytes:
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if strongly_typed is not None:
        flags |= 1 << int(strongly_typed)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):  # reads external data beside the file
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT could not parse {onnx_path.name}: {errors}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    optimization = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        optimization.set_shape(network.get_input(i).name, profile.min, profile.opt, profile.max)
    config.add_optimization_profile(optimization)
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=True)
    progress = _Progress(trt)
    config.progress_monitor = progress.monitor

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(f"TensorRT failed to build an engine from {onnx_path.name} (see the log above)")
    cache_path.write_bytes(bytes(config.get_timing_cache().serialize()))
    return bytes(serialized)


def ensure_engine(artifact: Path, precision: Precision | str = Precision.FP16, required: bool = False) -> None:
    """Before serving: build this GPU's engine when the artifact has none. Without a GPU or TensorRT, or
    when the build fails, log why and leave the choice to backend selection (raise when `required`)."""
    from rerankrt.engines import select_engine

    try:
        trt = import_tensorrt()
        capability = cuda_compute_capability()
        # no hashing here: the loader verifies every file right after, and build_engine before it builds
        engines = load_manifest(artifact, verify_hashes=False).engines
        if select_engine(engines, capability, trt.__version__) is not None:
            return
        log.info(
            "no TensorRT engine for compute capability %s in %s: building one (%s)", capability, artifact, precision
        )
        build_engine(artifact, precision=precision)
    except Exception as exc:
        if required:
            raise
        log.info("no TensorRT engine built: %s", exc)
