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
    assert info["jetson_clocks"] == {"state": clocks}
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
