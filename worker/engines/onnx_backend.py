"""The ONNX Runtime backend (CPU): the exported, usually int8, model from the engine cache."""

from __future__ import annotations

import logging
import time

import numpy as np
import onnxruntime as ort

from worker.engines.onnx_export import build_onnx

log = logging.getLogger(__name__)


def session_options(threads: int) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # One operator at a time using every thread: an encoder is a chain, so parallel mode only adds overhead.
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Idle threads sleep rather than spin, as torch's (worker/inference.py): the API, Redis and the
    # Celery threads share these cores.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


class OnnxBackend:
    name = "onnx"
    device = "cpu"

    def __init__(self, path: str, tokenizer, quantize: str, threads: int, cache_dir: str, candidate_inputs):
        started = time.perf_counter()
        self.file, reused = build_onnx(path, tokenizer, quantize, cache_dir, candidate_inputs)
        log.info("%s ONNX model %s in %.1fs", "reusing" if reused else "exported", self.file,
                 time.perf_counter() - started)
        self.reused_cache = reused
        self.precision = "int8" if quantize == "int8" else "fp32"
        self.session = ort.InferenceSession(str(self.file), session_options(threads),
                                            providers=["CPUExecutionProvider"])
        self.input_names = tuple(i.name for i in self.session.get_inputs())

    def logits(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        return self.session.run(["logits"], inputs)[0].astype(np.float32, copy=False)
