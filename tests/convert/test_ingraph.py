"""The converter's in-graph early-exit artifact (hisd_edge.convert.ingraph): built, verified, recorded."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from hisd_edge import schemas
from hisd_edge.bundle import Bundle
from hisd_edge.errors import BundleError
from hisd_edge.runtime import ingraph as contract


def test_converted_bundle_records_a_verified_artifact(tiny_bundle):
    bundle = Bundle.open(tiny_bundle)
    record = bundle.manifest["ingraph"]
    fp32 = record["files"]["fp32"]
    assert fp32["path"] == contract.INGRAPH_FILE["fp32"]
    assert "max_prob" in fp32["policies"]
    check = fp32["verification"]["by_policy"]["max_prob"]
    runs = fp32["verification"]["samples"] * (bundle.num_stages + 2)
    assert check["runs"] == runs > 0
    assert check["decisions_equal"] == check["logits_bit_identical"] == check["scores_bit_identical"] == runs
    for kind, result in fp32["verification"]["by_policy"].items():
        assert (kind in fp32["policies"]) == result["exact"]
        # float32 in the graph, float64 on the host: the knife-edge thresholds (each sample's own
        # score) tell them apart, so entropy and margin are never listed
        assert result["exact"] is (kind == "max_prob"), kind
    assert bundle.ingraph_path("fp32").is_file()
    assert bundle.ingraph_path("mixed") is None


def test_the_artifact_is_one_graph_with_if_nodes_and_threshold_inputs(tiny_bundle):
    import onnx

    model = onnx.load(str(Bundle.open(tiny_bundle).ingraph_path("fp32")))
    inputs = {i.name: i.type.tensor_type.elem_type for i in model.graph.input}
    assert inputs == {
        "input": onnx.TensorProto.FLOAT,
        "policy_kind": onnx.TensorProto.INT32,
        "score_thresholds": onnx.TensorProto.FLOAT,
    }
    assert [o.name for o in model.graph.output] == list(contract.OUTPUTS)
    top = [n.op_type for n in model.graph.node]
    assert "If" in top and not any(n.op_type.startswith("Conv") for n in model.graph.node[top.index("If") + 1 :])
    # stage 1 runs only in the else branch of exit 0's decision
    decision = next(n for n in model.graph.node if n.op_type == "If" and n.input[0] == "leave0")
    branches = {a.name: a.g for a in decision.attribute}
    assert not any(n.op_type == "Conv" for n in branches["then_branch"].node)
    assert any(n.op_type == "Conv" for n in branches["else_branch"].node)


def test_verification_catches_a_graph_that_differs_from_the_chain(tiny_bundle):
    """A stage-1 weight nudged by one part in a million: logits no longer bit-identical, max_prob refused."""
    import onnx

    from hisd_edge.convert import ingraph

    bundle = Bundle.open(tiny_bundle)
    paths = [bundle.stage_path(k) for k in range(bundle.num_stages)]
    stages = [onnx.load(str(p)) for p in paths]
    names = [e["output"] for e in bundle.exits]
    confidence = [e["confidence_output"] for e in bundle.exits]
    classes = len(bundle.class_names)
    good = ingraph.build_ingraph(stages, confidence, classes)
    tampered = copy.deepcopy(stages)
    weight = max(tampered[1].graph.initializer, key=lambda t: int(np.prod(t.dims)))
    array = onnx.numpy_helper.to_array(weight).copy()
    array.reshape(-1)[0] *= 1.0 + 1e-6
    weight.CopyFrom(onnx.numpy_helper.from_array(array, weight.name))
    bad = ingraph.build_ingraph(tampered, confidence, classes)
    x = np.random.default_rng(0).normal(size=(12, *bundle.stages[0]["inputs"][0]["shape"][1:])).astype(np.float32)
    ok = ingraph.verify_ingraph(good.SerializeToString(), paths, names, confidence, x, "fp32")
    assert "max_prob" in ok.policies
    broken = ingraph.verify_ingraph(bad.SerializeToString(), paths, names, confidence, x, "fp32")
    assert broken.policies == []
    assert broken.by_policy["max_prob"]["logits_bit_identical"] < broken.by_policy["max_prob"]["runs"]


def test_one_exit_builds_nothing(tiny_bundle):
    import onnx

    from hisd_edge.convert import ingraph

    bundle = Bundle.open(tiny_bundle)
    with pytest.raises(ValueError, match="nothing to decide"):
        ingraph.build_ingraph([onnx.load(str(bundle.stage_path(0)))], ["conf0"], 10)


def test_schema_keeps_old_bundles_valid_and_checks_the_record(tiny_bundle, copy_of):
    manifest = Bundle.open(tiny_bundle).manifest
    old = {k: v for k, v in manifest.items() if k != "ingraph"}
    schemas.validate(old, schemas.MANIFEST, what="manifest", fix="-", error=BundleError)
    broken = copy.deepcopy(manifest)
    broken["ingraph"]["files"]["fp32"]["policies"] = ["patience"]
    with pytest.raises(BundleError, match="ingraph"):
        schemas.validate(broken, schemas.MANIFEST, what="manifest", fix="-", error=BundleError)
    # the artifact is checksummed like every other file
    path = copy_of(tiny_bundle)
    target = path / contract.INGRAPH_FILE["fp32"]
    data = bytearray(target.read_bytes())
    data[-1] ^= 1
    target.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="checksum"):
        Bundle.open(path).ingraph_path("fp32")
