"""Memory readers (/proc) and device information (model, L4T, nvpmodel, jetson_clocks)."""

from __future__ import annotations

import pytest

from hisd_edge.profile import device, memory

MEMINFO_ORIN = """MemTotal:        7802912 kB
MemFree:         4551672 kB
MemAvailable:    6016436 kB
Buffers:           32380 kB
Cached:          1614896 kB
NvMapMemFree:      32256 kB
NvMapMemUsed:     301528 kB
"""
STATUS = """Name:\tpython3
VmPeak:\t  912344 kB
VmHWM:\t  210000 kB
VmRSS:\t  204800 kB
Threads:\t3
"""


def _proc(tmp_path, meminfo, status=STATUS):
    (tmp_path / "self").mkdir(parents=True)
    (tmp_path / "self" / "status").write_text(status)
    (tmp_path / "meminfo").write_text(meminfo)
    return str(tmp_path)


def test_snapshot_reads_rss_available_and_nvmap(tmp_path):
    snap = memory.snapshot(_proc(tmp_path, MEMINFO_ORIN))
    assert snap.rss_bytes == 204800 * 1024 and snap.rss_peak_bytes == 210000 * 1024
    assert snap.mem_available_bytes == 6016436 * 1024 and snap.nvmap_used_bytes == 301528 * 1024
    assert snap.to_dict()["rss_mib"] == pytest.approx(200.0)


def test_snapshot_off_jetson_has_no_nvmap_and_live_proc_works(tmp_path):
    snap = memory.snapshot(_proc(tmp_path, "MemTotal: 100 kB\nMemAvailable: 50 kB\n"))
    assert snap.nvmap_used_bytes is None and snap.to_dict()["nvmap_used_mib"] is None
    live = memory.snapshot()
    assert live.rss_bytes and live.rss_bytes > 1024 * 1024 and live.mem_available_bytes


def test_difference_in_mib():
    before = memory.MemorySnapshot(100 * 2**20, None, 1000 * 2**20, 10 * 2**20)
    after = memory.MemorySnapshot(150 * 2**20, None, 900 * 2**20, None)
    assert memory.difference(before, after) == {
        "rss_delta_mib": 50.0,
        "mem_available_taken_mib": 100.0,
        "nvmap_used_delta_mib": None,
    }


def test_backend_memory_is_optional():
    class WithInfo:
        def memory_info(self):
            return {"cuda_free_bytes": 1, "tensorrt_context_bytes": 2}

    class Broken:
        def memory_info(self):
            raise RuntimeError("cuda\nerror")

    assert memory.backend_memory(object()) is None
    assert memory.backend_memory(WithInfo()) == {"cuda_free_bytes": 1, "tensorrt_context_bytes": 2}
    assert memory.backend_memory(Broken()) == {"error": "cuda error"}


@pytest.mark.parametrize(
    "board,model,l4t,clocks",
    [
        ("nano_jp4", "NVIDIA Jetson Nano Developer Kit", "32.7.1", "off"),
        ("agx_xavier_jp4", "Jetson-AGX", "32.7.1", "on"),
        ("orin_nano_jp6", "NVIDIA Jetson Orin Nano Developer Kit", "36.4.3", "off"),
    ],
)
def test_device_info_from_recorded_trees(board, model, l4t, clocks, board_tree):
    info = device.device_info(str(board_tree(board)))
    assert (info["model"], info["l4t_release"], info["is_jetson"]) == (model, l4t, True)
    assert info["jetson_clocks"]["state"] == clocks
    assert info["jetson_clocks"]["cpu"] is info["jetson_clocks"]["gpu"] is (clocks == "on")
    assert info["nvpmodel"]["mode_name"] is None and "recorded" in info["nvpmodel"]["reason"]
    assert info["hostname"] is None  # a recorded tree is not this host


def test_jetson_clocks_unknown_without_gpu_node(board_tree):
    root = board_tree("xavier_nx_jp5")
    for f in (root / "sys/class/devfreq/17000000.gv11b").iterdir():
        f.unlink()
    assert device.jetson_clocks_state(root)["state"] == "unknown"


def test_nvpmodel_query_parsing_and_the_live_tool(fake_tool, board_tree):
    assert device.parse_nvpmodel_query("NV Power Mode: MAXN\n0\n") == {"mode_name": "MAXN", "mode_id": 0}
    assert device.parse_nvpmodel_query("NVPM WARN: fan mode is not set!\nNV Power Mode: 15W\n1\n") == {
        "mode_name": "15W",
        "mode_id": 1,
    }
    assert device.parse_nvpmodel_query("nothing") is None
    fake_tool("nvpmodel", 'echo "NV Power Mode: MAXN_SUPER"\necho 2\n')
    info = device.device_info(str(board_tree("orin_nano_jp6")), run_tools=True)
    assert info["nvpmodel"] == {"mode_name": "MAXN_SUPER", "mode_id": 2}


def test_this_machine_is_described_honestly():
    info = device.device_info()
    assert info["hostname"] and info["cpu_count"] >= 1 and info["sysfs_root"] == "/"
    if not info["is_jetson"]:
        assert info["nvpmodel"] is None and info["jetson_clocks"] is None


def test_l4t_release_parsing():
    assert device.parse_l4t_release("# R35 (release), REVISION: 4.1, GCID: 1") == "35.4.1"
    assert device.parse_l4t_release("garbage") is None


# -- conditions: clocks (incl. EMC), temperatures, throttling ------------------------------------------
def _emc(root, rate, max_rate, locked=None):
    emc = root / "sys/kernel/debug/bpmp/debug/clk/emc"
    emc.mkdir(parents=True, exist_ok=True)
    (emc / "rate").write_text(f"{rate}\n")
    (emc / "max_rate").write_text(f"{max_rate}\n")
    if locked is not None:
        (emc / "mrq_rate_locked").write_text(f"{locked}\n")


def test_jetson_clocks_checks_the_emc_too(board_tree):
    from hisd_edge.profile import conditions

    root = board_tree("agx_xavier_jp5")  # CPU and GPU pinned
    unknown = conditions.jetson_clocks_state(root)
    assert unknown["state"] == "on" and unknown["emc"] is None and "EMC" not in unknown.get("reason", "")
    _emc(root, 2133000000, 2133000000, locked=1)
    assert conditions.jetson_clocks_state(root) == {"state": "on", "cpu": True, "gpu": True, "emc": True}
    _emc(root, 665600000, 2133000000, locked=0)  # jetson_clocks pinned CPU/GPU, but the EMC follows the load
    state = conditions.jetson_clocks_state(root)
    assert state["state"] == "off" and state["emc"] is False


def test_emc_behind_root_only_debugfs_is_unknown_with_the_reason(board_tree, deny_read):
    from hisd_edge.profile import conditions

    root = board_tree("orin_nano_jp6")
    _emc(root, 2133000000, 2133000000)
    assert conditions.emc_state(root)["hz"] == 2133000000
    deny_read(root / "sys/kernel/debug/bpmp/debug/clk/emc/rate")  # as a non-root user sees it
    emc = conditions.emc_state(root)
    assert emc["hz"] is None and emc["locked"] is None and "debugfs needs root" in emc["reason"]


def test_snapshots_and_the_run_guard_flag_clock_changes_and_throttling(board_tree):
    from hisd_edge.profile import conditions

    root = board_tree("agx_orin_jp5")
    jc = conditions.jetson_clocks_state(root)
    first = conditions.snapshot(root, 0.0)
    assert first["cpu_khz"]["cpu0"] == 2201600 and first["gpu_hz"]["17000000.ga10b"] == 1300500000
    assert first["temps_c"] == {"cpu-thermal": 41.5}  # the -256 C placeholder of an absent sensor is dropped
    steady = conditions.summarize([first, conditions.snapshot(root, 1.0)], jc)
    assert steady["flags"] == [] and steady["clocks_changed"] == []
    # the GPU clock drops mid-run although jetson_clocks pinned it (or claims to)
    (root / "sys/class/devfreq/17000000.ga10b/cur_freq").write_text("612000000\n")
    pinned = {"state": "on", "cpu": True, "gpu": True, "emc": True}
    moved = conditions.summarize([first, conditions.snapshot(root, 2.0)], pinned)
    assert moved["clocks_changed"] == ["GPU 17000000.ga10b"] and "although jetson_clocks was on" in moved["flags"][0]
    # an over-current event counter and a cooling device that stepped up
    oc = root / "sys/class/hwmon/hwmon9"
    oc.mkdir(parents=True)
    (oc / "oc1_event_cnt").write_text("3\n")
    cool = root / "sys/class/thermal/cooling_device0"
    cool.mkdir(parents=True)
    (cool / "type").write_text("gpu-balanced\n")
    (cool / "cur_state").write_text("0\n")
    before = conditions.snapshot(root, 3.0)
    (oc / "oc1_event_cnt").write_text("5\n")
    (cool / "cur_state").write_text("2\n")
    after = conditions.snapshot(root, 4.0)
    throttled = conditions.summarize([before, after], jc)
    assert throttled["throttle_events"] == ["gpu-balanced@cooling_device0 state 0..2", "hwmon9/oc1_event_cnt +2"]
    assert any("throttling during the run" in f for f in throttled["flags"])


def test_memory_per_exit_static_and_measured(tmp_path):
    static = memory.static_per_exit(
        [100, 200, 300],
        {
            "stage0_plan_bytes": 10,
            "stage1_plan_bytes": 20,
            "stage2_plan_bytes": 30,
            "stage0_device_memory_bytes": 5,
            "stage1_device_memory_bytes": 5,
        },
    )
    assert [e["model_bytes"] for e in static] == [100, 300, 600]
    assert [e["plan_bytes"] for e in static] == [10, 30, 60]
    assert [e.get("device_memory_bytes") for e in static] == [5, 10, None]  # stage 2's is unknown: no sum
    # measured: each exit's first run allocates; CUDA free memory falls by as much
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    state = {"rss": 100 * 1024, "free": 1000 * 2**20}

    def write():
        (proc / "self/status").write_text(f"VmRSS:\t{state['rss']} kB\nVmHWM:\t{state['rss']} kB\n")
        (proc / "meminfo").write_text("MemAvailable: 5000000 kB\nNvMapMemUsed: 1000 kB\n")

    def run(k):
        state["rss"] += (k + 1) * 1024  # stage k takes (k+1) MiB of host memory
        state["free"] -= (k + 1) * 2 * 2**20  # and twice that of device memory
        write()

    write()
    measured = memory.measured_per_exit(3, run, lambda: state["free"], proc_root=str(proc))
    assert [e["rss_delta_mib"] for e in measured] == [1.0, 2.0, 3.0]
    assert [e["device_taken_mib"] for e in measured] == [2.0, 4.0, 6.0]
    assert all(e["system_mem_available_taken_mib"] == 0.0 for e in measured)
