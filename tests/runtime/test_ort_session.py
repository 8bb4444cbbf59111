"""The one ONNX Runtime session factory and chain runner that convert and the runtime share."""

import numpy as np
import onnxruntime as ort
import pytest

from hisd_edge.bundle import Bundle
from hisd_edge.convert.validate import PrecisionChains
from hisd_edge.errors import InputError
from hisd_edge.runtime import create_backend
from hisd_edge.runtime.ort_session import (
    StageChain,
    graph_optimization_for,
    open_session,
    run_batched,
    session_options,
)

LEVELS = {
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def test_int8_runs_qdq_as_written_and_everything_else_fully_optimised():
    assert graph_optimization_for("int8") == "basic"
    assert graph_optimization_for("fp32") == graph_optimization_for("fp16") == "all"
    assert graph_optimization_for("int8", "all") == "all"  # asked for: measure ORT's fused integer kernels
    assert graph_optimization_for("int8", "auto") == "basic"
    with pytest.raises(InputError, match="'fastest' is not one of disable, basic, extended, all"):
        graph_optimization_for("fp32", "fastest")


def test_session_options_follow_the_rules():
    options = session_options(threads=3, precision="int8")
    assert options.graph_optimization_level == LEVELS["basic"]
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (3, 1)
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert session_options(precision="fp32").graph_optimization_level == LEVELS["all"]
    spinning = session_options(allow_spinning=True)
    assert spinning.get_session_config_entry("session.intra_op.allow_spinning") == "1"
    with pytest.raises(InputError, match="intra-op threads must be >= 0"):
        session_options(threads=-1)


def test_a_requested_level_wins_over_the_rule(tiny_bundle):
    path = str(Bundle.open(tiny_bundle).stage_path(0))
    assert _levels([open_session(path, precision="int8")]) == [LEVELS["basic"]]
    assert _levels([open_session(path, precision="int8", graph_optimization="all")]) == [LEVELS["all"]]


def _levels(sessions):
    return [s.get_session_options().graph_optimization_level for s in sessions]


def test_convert_and_runtime_open_int8_stages_alike(converted_bundle):
    """Validation (convert side) and the runtime backend run INT8 stages at the same level, to the same numbers."""
    bundle = Bundle.open(converted_bundle)
    files = {p: [bundle.stage_path(k, p) for k in range(bundle.num_stages)] for p in ("fp32", "int8")}
    outputs = [[o["name"] for o in s["outputs"]] for s in bundle.stages]
    chains = PrecisionChains(files, outputs, threads=1)
    assert _levels(chains.chains["int8"].sessions) == [LEVELS["basic"]] * 3
    assert _levels(chains.chains["fp32"].sessions) == [LEVELS["all"]] * 3
    x = np.random.default_rng(0).standard_normal((16, 1, 28, 28)).astype(np.float32)
    validated = chains.run(["int8"] * 3, x)
    with create_backend("onnxruntime", bundle, precision="int8") as backend:
        assert _levels(s.session for s in backend._stages) == [LEVELS["basic"]] * 3
        assert backend.describe()["graph_optimization"] == "basic"
        backend.start(x)
        for k in range(3):
            np.testing.assert_allclose(backend.run_stage(k).exit_output(), validated[f"exit{k}"], rtol=0, atol=1e-6)


def test_a_mixed_plan_feeds_each_stage_the_previous_stage_features(converted_bundle):
    bundle = Bundle.open(converted_bundle)
    files = {p: [bundle.stage_path(k, p) for k in range(bundle.num_stages)] for p in ("fp32", "int8")}
    chains = PrecisionChains(files, [[o["name"] for o in s["outputs"]] for s in bundle.stages], threads=1)
    x = np.random.default_rng(1).standard_normal((8, 1, 28, 28)).astype(np.float32)
    mixed = chains.run(["int8", "fp32", "fp32"], x)
    feat0 = chains.chains["int8"].run_stage(0, x)["feat0"]
    expected = chains.chains["fp32"].run(feat0, start=1)
    for name in ("feat1", "exit1", "exit2"):
        np.testing.assert_array_equal(mixed[name], expected[name])
    np.testing.assert_array_equal(mixed["exit0"], chains.chains["int8"].run_stage(0, x)["exit0"])


def test_stage_chain_matches_the_full_model_batch_by_batch(tiny_bundle):
    bundle = Bundle.open(tiny_bundle)
    stages = [str(bundle.stage_path(k)) for k in range(bundle.num_stages)]
    x = np.random.default_rng(2).standard_normal((10, 1, 28, 28)).astype(np.float32)
    chain = StageChain(stages, batch_size=4)  # 4 + 4 + 2 rows per run
    assert chain.stage_outputs[0] == ["feat0", "exit0", "conf0"] and chain.num_stages == 3
    outputs = chain.run(x)
    assert set(outputs) == {"feat0", "exit0", "conf0", "feat1", "exit1", "conf1", "exit2", "conf2"}
    full = run_batched(open_session(str(bundle.full_model_path())), x, ["exit0", "exit1", "exit2"], batch_size=3)
    for k in range(3):
        assert outputs[f"exit{k}"].shape == (10, 10)
        np.testing.assert_allclose(outputs[f"exit{k}"], full[f"exit{k}"], atol=1e-5)
    later = chain.run(outputs["feat0"], start=1)  # resuming from stage 1 with its input
    np.testing.assert_array_equal(later["exit2"], outputs["exit2"])
    assert set(chain.run(x, stop=1)) == {"feat0", "exit0", "conf0"}
