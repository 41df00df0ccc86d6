"""A stand-in for the `tensorrt` module: the calls rerankrt makes, returning what TensorRT 10/11's Python bindings
return (read from NVIDIA's pyCore.cpp / pyOnnx.cpp: None for a failed create, False for a refused shape or
address, -1 for a refused profile, RuntimeError from IOptimizationProfile.set_shape), with a switch per failure.

Engines are a list of tensors: (name, mode, dtype). It records what it was asked, so tests can check the calls.
"""

from __future__ import annotations

from dataclasses import dataclass, field


class Logger:
    WARNING = 2

    def __init__(self, severity=None):
        self.severity = severity


class DataType:  # distinct values, as TensorRT's enum
    NAMES = "FLOAT HALF INT8 INT32 BOOL UINT8 BF16 INT64".split()
    FLOAT, HALF, INT8, INT32, BOOL, UINT8, BF16, INT64 = (f"DataType.{n}" for n in NAMES)


class TensorIOMode:
    INPUT, OUTPUT = "INPUT", "OUTPUT"


class BuilderFlag:
    TF32 = "BuilderFlag.TF32"


class NetworkDefinitionCreationFlag:
    STRONGLY_TYPED = 1


class IProgressMonitor:
    def __init__(self):
        pass


@dataclass
class Calls:
    """What the fake was asked, and which calls fail (by name)."""

    fail: set[str] = field(default_factory=set)
    parse_errors: list[str] = field(default_factory=list)
    cleared_flags: list = field(default_factory=list)
    memory_limits: list = field(default_factory=list)
    shapes: dict = field(default_factory=dict)
    parsed: list = field(default_factory=list)  # ("file", path) or ("bytes", data, path)
    timing_cache_in: list = field(default_factory=list)
    builders: int = 0
    bound: dict = field(default_factory=dict)  # name -> (shape or address)


class FakeTensorRT:
    """`import tensorrt as trt` for tests: `trt = FakeTensorRT("10.13.0.35")`."""

    Logger, DataType, TensorIOMode = Logger, DataType, TensorIOMode
    BuilderFlag, NetworkDefinitionCreationFlag, IProgressMonitor = (
        BuilderFlag,
        NetworkDefinitionCreationFlag,
        IProgressMonitor,
    )

    def __init__(self, version: str = "10.13.0.35", engine_tensors=None):
        self.__version__ = version
        self.calls = Calls()
        self.engine_tensors = engine_tensors or [
            ("input_ids", TensorIOMode.INPUT, DataType.INT64),
            ("attention_mask", TensorIOMode.INPUT, DataType.INT64),
            ("logits", TensorIOMode.OUTPUT, DataType.FLOAT),
        ]
        trt = self

        class Builder:
            def __init__(self, logger):
                trt.calls.builders += 1

            def create_network(self, flags):
                return None if "create_network" in trt.calls.fail else Network()

            def create_builder_config(self):
                return None if "create_builder_config" in trt.calls.fail else Config()

            def create_optimization_profile(self):
                return OptimizationProfile()

            def build_serialized_network(self, network, config):
                return None if "build" in trt.calls.fail else b"serialized engine"

        class Network:
            inputs = ["input_ids", "attention_mask"]

            @property
            def num_inputs(self):
                return len(self.inputs)

            def get_input(self, i):
                return type("Tensor", (), {"name": self.inputs[i]})()

        class OnnxParser:
            def __init__(self, network, logger):
                pass

            def parse_from_file(self, path):
                trt.calls.parsed.append(("file", path))
                return "parse" not in trt.calls.fail

            def parse(self, model, path=None):
                trt.calls.parsed.append(("bytes", model, path))
                return "parse" not in trt.calls.fail

            @property
            def num_errors(self):
                return len(trt.calls.parse_errors) if "parse" in trt.calls.fail else 0

            def get_error(self, i):
                return trt.calls.parse_errors[i]

        class OptimizationProfile:
            def set_shape(self, name, min, opt, max):
                if "set_shape" in trt.calls.fail:
                    raise RuntimeError("Shape provided for max is inconsistent with other shapes.")
                trt.calls.shapes[name] = (min, opt, max)

        class TimingCache:
            def __init__(self, data):
                self.data = data

            def serialize(self):
                return b"timing cache written by " + trt.__version__.encode()

        class Config:
            progress_monitor = None

            def clear_flag(self, flag):
                trt.calls.cleared_flags.append(flag)

            def set_memory_pool_limit(self, pool, size):
                trt.calls.memory_limits.append((pool, size))

            def add_optimization_profile(self, profile):
                return -1 if "add_optimization_profile" in trt.calls.fail else 0

            def create_timing_cache(self, data):
                trt.calls.timing_cache_in.append(bytes(data))
                return TimingCache(data)

            def set_timing_cache(self, cache, ignore_mismatch):
                self.cache = cache
                return not (cache.data and "set_timing_cache" in trt.calls.fail)

            def get_timing_cache(self):
                return self.cache

        class Runtime:
            def __init__(self, logger):
                pass

            def deserialize_cuda_engine(self, data):
                return None if "deserialize" in trt.calls.fail else CudaEngine()

        class CudaEngine:
            @property
            def num_io_tensors(self):
                return len(trt.engine_tensors)

            def get_tensor_name(self, i):
                return trt.engine_tensors[i][0]

            def get_tensor_mode(self, name):
                return next(mode for n, mode, _ in trt.engine_tensors if n == name)

            def get_tensor_dtype(self, name):
                return next(dtype for n, _, dtype in trt.engine_tensors if n == name)

            def create_execution_context(self):
                return None if "create_execution_context" in trt.calls.fail else Context()

        class Context:
            def set_input_shape(self, name, shape):
                trt.calls.bound[name] = shape
                return "set_input_shape" not in trt.calls.fail

            def set_tensor_address(self, name, address):
                return "set_tensor_address" not in trt.calls.fail

            def get_tensor_shape(self, name):
                return (trt.calls.bound["input_ids"][0],)

            def execute_async_v3(self, stream):
                return "execute" not in trt.calls.fail

        self.Builder, self.OnnxParser, self.Runtime = Builder, OnnxParser, Runtime
