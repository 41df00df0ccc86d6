"""ONNX -> serialized TensorRT engine, with the TensorRT Python API; the artifact's manifest lists it.

`rerankrt build-engine ARTIFACT` (or `rerankrt export ... --tensorrt`) makes the
graph of the wanted precision (fp16/bf16 cast explicitly into the ONNX, since
TensorRT 11 networks are strongly typed; bf16 refused below compute capability
8.0 before anything is built), builds an engine with one optimization profile
for [batch, sequence] planned from the GPU's memory and the model
(`engines.plan_engine_profile`), TF32 off (fp32 means fp32, in fp32 engines and
in the fp32 parts of half ones), keeps a timing cache per GPU and TensorRT
version beside the engines, and records the engine (file, graph, precision, GPU
compute capability, full TensorRT version, profile, sha256) in manifest.json
once the engine has scored the artifact's golden set on this GPU as the export
accepted (`runtime.self_check`; an engine that misses is deleted, with the
figures in the error). Every TensorRT call that can fail is checked and named
in the error. Needs a GPU and the `gpu` extra.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import onnx

from rerankrt.artifact import (
    GOLDEN_NAME,
    PARITY_NAME,
    Engine,
    Graph,
    Manifest,
    Profile,
    hash_files,
    load_manifest,
    write_manifest,
)
from rerankrt.errors import BackendUnavailableError, ExportError
from rerankrt.export.graph_passes import float_cumsum
from rerankrt.export.onnx_graph import describe_graph
from rerankrt.export.precision import cast_graph, external_data_files
from rerankrt.export.variants import variant_source
from rerankrt.families import Family, get_family
from rerankrt.families.base import variant_role
from rerankrt.precision import Precision
from rerankrt.runtime.loader import open_backend
from rerankrt.runtime.plan import ServingPlan
from rerankrt.runtime.self_check import GoldenSet, export_tolerance, run_self_check
from rerankrt.tensorrt_engines import (
    ModelShape,
    engine_file_name,
    plan_engine_profile,
    precision_problem,
    select_engine,
    timing_cache_name,
)

log = logging.getLogger(__name__)


def import_tensorrt():
    try:
        import tensorrt
    except ImportError as exc:
        raise BackendUnavailableError(
            "TensorRT is not installed: pip install 'rerankrt[gpu]' (needs an NVIDIA GPU and driver)"
        ) from exc
    return tensorrt


@dataclass(frozen=True)
class Gpu:
    compute_capability: str  # "9.0"
    name: str
    memory: int  # bytes


def cuda_device() -> Gpu:
    import torch

    if not torch.cuda.is_available():
        raise BackendUnavailableError("no CUDA device: TensorRT engines need an NVIDIA GPU")
    major, minor = torch.cuda.get_device_capability()
    properties = torch.cuda.get_device_properties(0)
    return Gpu(f"{major}.{minor}", properties.name, int(properties.total_memory))


def build_engine(
    artifact: Path,
    precision: Precision | str = Precision.FP16,
    max_batch: int | None = None,
    max_length: int | None = None,
    opt_batch: int | None = None,
    opt_length: int | None = None,
) -> Engine:
    """Build (or rebuild) the engine for this GPU and TensorRT version; return its manifest entry.

    `max_batch` None: planned from the GPU's memory and the model (`engines.plan_engine_profile`).
    """
    manifest = load_manifest(artifact)
    family = get_family(manifest.family)
    if problem := family.tensorrt_problem:
        raise ExportError(problem)
    _, source = variant_source(family, list(manifest.graphs))
    precision = Precision(precision)
    trt = import_tensorrt()
    gpu = cuda_device()
    if problem := precision_problem(precision, gpu.compute_capability):
        raise ExportError(problem)  # before any casting or building
    max_length = max_length or manifest.max_length
    if max_length < manifest.max_length:
        raise ExportError(f"max length {max_length} is below the artifact's max_length {manifest.max_length}")
    graph = _graph_for(artifact, manifest, source, precision)
    weights = sum(f.stat().st_size for f in [artifact / graph.file, *external_data_files(artifact / graph.file)])
    profile, why = plan_engine_profile(
        _model_shape(artifact, family), gpu.memory, weights, max_length, precision, max_batch, opt_batch, opt_length
    )
    plan_name = engine_file_name(graph.file, gpu.compute_capability, trt.__version__)

    log.info("building %s from %s on %s (profile %s) ...", plan_name, graph.file, gpu.name, profile.model_dump())
    log.info("profile: %s", why)
    started = time.perf_counter()
    cache = artifact / timing_cache_name(gpu.compute_capability, trt.__version__)
    serialized = _build(trt, artifact / graph.file, cache, profile)
    (artifact / plan_name).write_bytes(serialized)
    log.info("built %s in %.0f s (%.1f MB)", plan_name, time.perf_counter() - started, len(serialized) / 1e6)

    engine = Engine(
        file=plan_name,
        graph=graph.file,
        precision=precision,
        compute_capability=gpu.compute_capability,
        tensorrt=trt.__version__,
        profile=profile,
    )
    try:
        self_check_engine(artifact, manifest, engine, gpu.name)
    except BaseException:
        (artifact / plan_name).unlink(missing_ok=True)  # never left for a loader to find
        raise
    manifest.engines = [e for e in manifest.engines if e.file != plan_name] + [engine]
    manifest.files.update(hash_files(artifact, [plan_name, graph.file]))
    write_manifest(artifact, manifest)
    return engine


def self_check_engine(artifact: Path, manifest: Manifest, engine: Engine, gpu: str) -> None:
    """The new engine scores the artifact's golden set here and must pass the export's rule for its precision;
    ExportError with the figures when it misses."""
    if GOLDEN_NAME not in manifest.files:
        log.warning("%s has no golden set (re-export it): the engine is not self-checked", artifact)
        return
    family = get_family(manifest.family)
    encoder = family.load_encoder(artifact, manifest.max_length)
    role, _ = variant_source(family, list(manifest.graphs))
    plan = ServingPlan("tensorrt", "cuda", engine.precision, folder=artifact, engine=engine, graphs={role: engine.file})
    encoder.use_prefix_reuse(plan.prefix_reuse)
    backend = open_backend(plan, family)
    golden = GoldenSet.read(artifact / GOLDEN_NAME)
    tolerance = export_tolerance(artifact, PARITY_NAME)
    check = run_self_check(backend.run, encoder, golden, engine.precision, plan.describe(), gpu, tolerance)
    if not check.passed:
        raise ExportError(f"self-check: {check.summary()}; the engine is not kept")
    log.info("self-check: %s", check.summary())


def _model_shape(artifact: Path, family: Family) -> ModelShape:
    config = artifact / "config.json"
    try:
        return ModelShape.from_config(family.export_hints.language_sizes(json.loads(config.read_text())))
    except (OSError, ValueError, KeyError) as exc:
        raise ExportError(f"{config}: cannot read the model's sizes to plan the engine's profile ({exc})") from exc


def _graph_for(artifact: Path, manifest, source: str, precision: Precision) -> Graph:
    """The graph of role `source` in `precision`, cast from the fp32 one (and listed in the manifest) if not there
    yet."""
    role = variant_role(source, precision)
    if role not in manifest.graphs:
        fp32 = manifest.graphs[source]
        target = fp32.file.removesuffix(".onnx") + f".{precision}.onnx"
        log.info("casting %s to %s (norms and softmax stay fp32) ...", fp32.file, precision)
        cast_graph(artifact / fp32.file, artifact / target, precision)
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


def _checked(value, step: str):
    """`value`, or an ExportError naming the TensorRT step that returned None."""
    if value is None:
        raise ExportError(f"TensorRT failed to {step} (see TensorRT's log above)")
    return value


def _build(trt, onnx_path: Path, cache_path: Path, profile: Profile) -> bytes:
    logger = trt.Logger(trt.Logger.WARNING)
    builder = _checked(trt.Builder(logger), "create a builder (is the GPU visible to this process?)")
    flags = 0
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if strongly_typed is not None:  # TensorRT 10; 11 networks are always strongly typed
        flags |= 1 << int(strongly_typed)
    network = _checked(builder.create_network(flags), "create a network definition")
    parser = _checked(trt.OnnxParser(network, logger), "create an ONNX parser")
    _parse(parser, onnx_path)

    config = _checked(builder.create_builder_config(), "create a builder config")
    if hasattr(trt.BuilderFlag, "TF32"):  # on by default: fp32 MatMuls would round their inputs to 10 mantissa bits
        config.clear_flag(trt.BuilderFlag.TF32)
    # the workspace is left at TensorRT's default (the GPU's memory): a cap only removes tactics
    optimization = _checked(builder.create_optimization_profile(), "create an optimization profile")
    for i in range(network.num_inputs):
        name = network.get_input(i).name
        try:
            optimization.set_shape(name, profile.min, profile.opt, profile.max)
        except (RuntimeError, TypeError, ValueError) as exc:
            raise ExportError(
                f"TensorRT refused the profile for input {name!r} (min {profile.min}, opt {profile.opt}, "
                f"max {profile.max}): {exc}"
            ) from exc
    if config.add_optimization_profile(optimization) < 0:
        raise ExportError(
            f"TensorRT refused the optimization profile {profile.model_dump()} (add_optimization_profile -1)"
        )
    _use_timing_cache(config, cache_path)
    progress = _Progress(trt)
    config.progress_monitor = progress.monitor

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(f"TensorRT failed to build an engine from {onnx_path.name} (see TensorRT's log above)")
    timing = config.get_timing_cache()
    if timing is not None:
        cache_path.write_bytes(bytes(timing.serialize()))
    return bytes(serialized)


def _parse(parser, onnx_path: Path) -> None:
    """Parse the graph, integer CumSums rewritten in the form onnx-tensorrt documents; every parser error listed."""
    model = onnx.load(str(onnx_path), load_external_data=False)
    if rewritten := float_cumsum(model):
        log.info(
            "%s: %d integer CumSum as fp32 CumSum between casts (the types TensorRT documents)",
            onnx_path.name,
            rewritten,
        )
        parsed = parser.parse(model.SerializeToString(), str(onnx_path))  # the path locates external data
    else:
        parsed = parser.parse_from_file(str(onnx_path))  # reads external data beside the file
    if not parsed:
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)] or ["(no error reported)"]
        listed = "\n".join(f"  {i + 1}. {error}" for i, error in enumerate(errors))
        raise ExportError(f"TensorRT could not parse {onnx_path.name} ({len(errors)} errors):\n{listed}")


def _use_timing_cache(config, path: Path) -> None:
    """Reuse this GPU's and TensorRT version's timing cache; start a new one (saying why) when TensorRT refuses it."""
    if path.is_file():
        cache = config.create_timing_cache(path.read_bytes())
        if cache is not None and config.set_timing_cache(cache, ignore_mismatch=False):
            log.info("timing cache %s reused", path.name)
            return
        log.warning("timing cache %s not usable here (written on another device?): starting a new one", path.name)
    cache = _checked(config.create_timing_cache(b""), "create a timing cache")
    if not config.set_timing_cache(cache, ignore_mismatch=False):
        raise ExportError("TensorRT refused a new, empty timing cache (set_timing_cache)")


def ensure_engine(artifact: Path, precision: Precision | str = Precision.FP16, required: bool = False) -> None:
    """Before serving: build this GPU's engine when the artifact has none for this exact TensorRT version, or
    rebuild it when it does not load. Without a GPU or TensorRT, or when the build fails, log why and leave the
    choice to backend selection (raise when `required`). A check that loads costs one deserialization."""
    try:
        trt = import_tensorrt()
        gpu = cuda_device()
        # no hashing here: the loader verifies every file right after, and build_engine before it builds
        engines = load_manifest(artifact, verify_hashes=False).engines
        engine = select_engine(engines, gpu.compute_capability, trt.__version__)
        if engine is not None:
            problem = engine_load_problem(trt, artifact / engine.file)
            if problem is None:
                return
            log.warning(
                "TensorRT engine %s (built with TensorRT %s) does not load with TensorRT %s on this %s: %s; "
                "rebuilding it", engine.file, engine.tensorrt, trt.__version__, gpu.name, problem,
            )  # fmt: skip
            precision = engine.precision
        else:
            built = ", ".join(f"{e.file} (TensorRT {e.tensorrt}, sm {e.compute_capability})" for e in engines)
            log.info(
                "no TensorRT engine for compute capability %s and TensorRT %s in %s%s: building one (%s)",
                gpu.compute_capability, trt.__version__, artifact, f"; it has {built}" if built else "", precision,
            )  # fmt: skip
        build_engine(artifact, precision=precision)
    except Exception as exc:
        if required:
            raise
        log.info("no TensorRT engine built: %s", exc)


def engine_load_problem(trt, path: Path) -> str | None:
    """Why TensorRT cannot deserialize the engine at `path` here, or None when it loads."""
    try:
        runtime = _checked(trt.Runtime(trt.Logger(trt.Logger.WARNING)), "create a runtime")
        engine = runtime.deserialize_cuda_engine(path.read_bytes())
    except Exception as exc:  # TensorRT raises for some versions' mismatches, returns None for others
        return f"{type(exc).__name__}: {exc}"
    if engine is None:
        return "deserialize_cuda_engine returned None (see TensorRT's log above)"
    del engine
    return None
