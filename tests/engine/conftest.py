"""Fixtures for the TensorRT build and backend tests: a small real bundle and the test doubles.

``trt_bundle`` exports the trained tiny CNN stage by stage (TorchScript exporter, opset 17) the
way the manifest contract describes: fp32 stages with a fused confidence ``conf{k}``; an "fp16"
precision that is a copy of the fp32 graph (the double runs whatever ONNX it is given; the recipe
only needs the file to exist); a real int8 Q/DQ stage from ``onnxruntime.quantization``
(symmetric, as TensorRT requires) and a per-stage calibration cache in TensorRT's text format.

``fake_trt`` installs the TensorRT double (``trt_double.make_tensorrt``) as ``sys.modules["tensorrt"]``
and makes ``hisd_edge.cuda.open_cuda`` return its fake CUDA backend, for one test.
"""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent


def load_double(name: str) -> Any:
    """Import a test double by path (tests have no packages under --import-mode=importlib)."""
    module_name = f"hisd_test_{name}"
    if module_name not in sys.modules:
        path = HERE / f"{name}.py" if (HERE / f"{name}.py").exists() else HERE.parent / "cuda" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(module_name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    return sys.modules[module_name]


@pytest.fixture(scope="session")
def trt_double() -> Any:
    return load_double("trt_double")


@pytest.fixture(scope="session")
def real_bindings_module() -> Any:
    """tests/engine/real_bindings.py: NVIDIA's real TensorRT bindings over a null libnvinfer."""
    return load_double("real_bindings")


def pytest_collection_modifyitems(config, items):  # type: ignore[no-untyped-def]
    """The real-bindings conformance test replays every TensorRT use the other tests recorded on the
    double: run it after them (a stable sort keeps every other test where it was)."""
    items.sort(key=lambda item: item.path.name == "test_real_bindings.py")


@pytest.fixture(scope="session")
def cuda_double(trt_double) -> Any:
    return trt_double.cuda_double


@pytest.fixture()
def fake_trt(monkeypatch, trt_double) -> Callable[..., Tuple[Any, Any]]:
    """install(generation="10.13", device=DISCRETE, **kwargs) -> (fake tensorrt module, FakeCuda)."""

    def install(generation: str = "10.13", device: Any = None, **kwargs: Any) -> Tuple[Any, Any]:
        cuda = trt_double.cuda_double.FakeCuda(device or trt_double.cuda_double.DISCRETE)
        trt = trt_double.make_tensorrt(generation, cuda, **kwargs)
        monkeypatch.setitem(sys.modules, "tensorrt", trt)
        import hisd_edge.cuda

        monkeypatch.setattr(hisd_edge.cuda, "open_cuda", lambda *a, **k: cuda)
        return trt, cuda

    return install


# -- the bundle ------------------------------------------------------------------------------------
def _export(module: Any, example: Any, path: Path, input_name: str, outputs: List[str]) -> None:
    import torch

    axes = {input_name: {0: "batch"}, **{o: {0: "batch"} for o in outputs}}
    with torch.no_grad():
        torch.onnx.export(
            module,
            (example,),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=[input_name],
            output_names=outputs,
            dynamic_axes=axes,
            do_constant_folding=True,
        )


def _quantize(src: Path, dst: Path, input_name: str, samples: np.ndarray) -> Dict[str, float]:
    """Q/DQ int8 (symmetric activations and weights) with ORT; returns per-tensor amax for the cache."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter([{input_name: samples[i : i + 8]} for i in range(0, len(samples), 8)])

        def get_next(self):  # type: ignore[no-untyped-def]
            return next(self.items, None)

    quantize_static(
        str(src),
        str(dst),
        Reader(),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
        extra_options={"ActivationSymmetric": True},
    )
    return {input_name: float(np.abs(samples).max())}


def _calibration_cache(amax: Dict[str, float]) -> str:
    """TensorRT's text calibration table: a header line, then ``tensor: <scale as big-endian float hex>``."""
    import struct

    lines = ["TRT-8601-EntropyCalibration2"]
    for name, value in amax.items():
        lines.append(f"{name}: {struct.pack('>f', max(value, 1e-8) / 127.0).hex()}")
    return "\n".join(lines) + "\n"


def make_trt_bundle(checkpoint: Path, out: Path, *, int8: bool = True) -> Path:
    """The bundle described in the module docstring, plus the monolithic full model (every exit's logits)."""
    import torch
    from torch import nn

    from hisd_edge.bundle import file_record, write_manifest
    from hisd_edge.checkpoint import load_checkpoint
    from hisd_edge.preprocess import Preprocessing

    model, meta = load_checkpoint(checkpoint)
    model = model.eval()
    spec = Preprocessing.from_dict(meta["preprocessing"])
    out.mkdir(parents=True)

    class Stage(nn.Module):
        def __init__(self, body: nn.Module, head: nn.Module, last: bool):
            super().__init__()
            self.body, self.head, self.last = body, head, last

        def forward(self, x):  # type: ignore[no-untyped-def]
            feat = self.body(x)
            logits = self.head(feat)
            conf = torch.softmax(logits, dim=1).amax(dim=1)
            return (logits, conf) if self.last else (feat, logits, conf)

    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.normal(size=(16, *spec.input_shape)).astype(np.float32))
    stages, exits = [], []
    n = model.num_exits
    with torch.no_grad():
        for k in range(n):
            last = k == n - 1
            outs = ([] if last else [f"feat{k}"]) + [f"exit{k}", f"conf{k}"]
            name = "input" if k == 0 else f"feat{k - 1}"
            _export(Stage(model.stages[k], model.exits[k], last), x, out / f"stage{k}.fp32.onnx", name, outs)
            shutil.copyfile(out / f"stage{k}.fp32.onnx", out / f"stage{k}.fp16.onnx")
            files = {
                "fp32": file_record(out, f"stage{k}.fp32.onnx", io_dtype="float32"),
                "fp16": file_record(out, f"stage{k}.fp16.onnx", io_dtype="float32"),
            }
            if int8:
                amax = _quantize(out / f"stage{k}.fp32.onnx", out / f"stage{k}.int8.onnx", name, x.numpy())
                (out / f"stage{k}.int8.calib").write_text(_calibration_cache(amax))
                files["int8"] = {
                    **file_record(out, f"stage{k}.int8.onnx", io_dtype="float32"),
                    "calibration_cache": file_record(out, f"stage{k}.int8.calib"),
                }
            stages.append(
                {
                    "index": k,
                    "inputs": [{"name": name, "shape": ["batch", *list(x.shape[1:])], "dtype": "float32"}],
                    "outputs": [{"name": o} for o in outs],
                    "files": files,
                    "params": None,
                    "macs": None,
                }
            )
            exits.append(
                {"index": k, "stage": k, "output": f"exit{k}", "confidence_output": f"conf{k}", "kind": "logits"}
            )
            x = model.stages[k](x)

    class Full(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, x):  # type: ignore[no-untyped-def]
            return tuple(self.model(x))

    example = torch.from_numpy(rng.normal(size=(2, *spec.input_shape)).astype(np.float32))
    _export(Full(), example, out / "full.fp32.onnx", "input", [f"exit{k}" for k in range(n)])
    write_manifest(
        out,
        {
            "name": "trt-test",
            "model": {"arch": model.arch, "source": "checkpoint", "exit_output": "logits"},
            "class_names": list(meta["class_names"]),
            "preprocessing": spec.to_dict(),
            "stages": stages,
            "exits": exits,
            "full_model": file_record(out, "full.fp32.onnx"),
            "policy": {"kind": "max_prob", "thresholds": [0.6] * (n - 1) + [None], "calibrated": False},
            "validation": {},
            "engines": [],
            "provenance": {"command": "tests/engine/conftest.py make_trt_bundle"},
        },
    )
    return out


@pytest.fixture(scope="session")
def trt_bundle(tiny_checkpoint, tmp_path_factory) -> Path:
    """The tiny CNN as a bundle with fp32, fp16 and int8 (Q/DQ + calibration cache); copy before changing."""
    return make_trt_bundle(tiny_checkpoint, tmp_path_factory.mktemp("trt") / "bundle")


@pytest.fixture()
def bundle_copy(trt_bundle, tmp_path) -> Path:
    dst = tmp_path / "bundle"
    shutil.copytree(trt_bundle, dst)
    return dst


def _tree_digest(root: Path) -> Dict[str, str]:
    """Every file under ``root`` (hidden ones included) -> sha256: "the bundle is unharmed" means equal digests."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="session")
def tree_digest() -> Callable[[Path], Dict[str, str]]:
    return _tree_digest
