"""What each power rail covers, per Jetson board family, and what "total" means on each.

Rail names repeat across boards with different meanings, and the obvious total (the sum of the
rails) means something different on every board: on a Nano or an Orin Nano the input rail already
is the whole module, on an AGX Orin the sum of four module supplies is all there is, on an AGX
Xavier the sum is six monitored supply inputs, on Thor the carrier board's INA238 measures module
and carrier together. So the profiler never shows one name for two meanings: the total of every
profile carries a *quantity* (:data:`QUANTITIES`) and a comparison of profiles whose quantities
differ says so instead of putting them in one column.

Sources (per family below): kernel device trees (J. Hunter, "arm64: tegra: Add power-sensors for
Tegra234 boards", linux-tegra 2023-09-29), NVIDIA's Jetson AGX Xavier design guide DG-09840-001
section 5.6.2 (the monitors sit on the supply inputs VDD_SYS_GPU_IN, VDD_SYS_CPU_IN, VDD_SYS_SOC_IN,
VDD_SYS_CV_IN, VIN_SYS_DDRQ_IN and the 5 V system input), jetson_stats (``jtop/core/power.py``:
VDD_IN/POM_5V_IN as the total; PR #900: Thor's INA238 VIN is the complete system input, USB-C
UCSI supplies are negotiated limits, not measurements), and NVIDIA's developer forum ("Interpretation
of Jetson NX power rail"; "Question about power monitor ... on Jetson Thor").
"""

from __future__ import annotations

import dataclasses
from typing import Dict, List, Mapping, Optional, Tuple

# The meaning of a profile's "total": one name per meaning.
QUANTITIES: Dict[str, str] = {
    "module_input": "module input power (VDD_IN / POM_5V_IN): the whole Jetson module, not the carrier board",
    "board_input": "system input power (Thor's INA238 on VIN): module and carrier board",
    "agx_orin_rail_sum": "sum of the AGX Orin module supplies VDD_GPU_SOC + VDD_CPU_CV + VIN_SYS_5V0 + "
    "VDDQ_VDD2_1V8AO: the module's metered supplies, carrier board not included",
    "agx_xavier_rail_sum": "sum of the six AGX Xavier monitored supply inputs GPU + CPU + SOC + CV + VDDRQ + SYS5V: "
    "not a module-input measurement, carrier board not included",
    "rail_sum": "sum of the rails shown on a board this toolkit does not know: what it covers is not documented here",
    "gpu_board": "GPU board power (NVML energy counter): host CPU and memory not included",
    "cpu_packages": "CPU package energy (RAPL): accelerators, board and power-supply losses not included",
}


@dataclasses.dataclass(frozen=True)
class BoardFamily:
    """A Jetson family's metered rails: what each covers, and how the total is formed."""

    key: str
    name: str
    rails: Mapping[str, str]  # rail name -> what it covers
    total_rail: Optional[str]  # the rail that is the total (an input rail), else None: sum of total_rails
    quantity: str  # key of QUANTITIES
    total_rails: Tuple[str, ...] = ()
    gpu_rail: Optional[str] = None  # the rail that carries the GPU (possibly shared: see its text)
    source: str = ""
    aliases: Mapping[str, str] = dataclasses.field(default_factory=dict)  # other spellings -> rail name

    def covers(self, rail: str) -> str:
        return self.rails.get(self.aliases.get(rail, rail), "not documented for this board")


_NX_RAILS = {
    "VDD_IN": "module input: the whole module, not the carrier board",
    "VDD_CPU_GPU_CV": "CPU, GPU and CV (DLA/PVA) together on one supply: GPU energy cannot be told apart from CPU energy",
    "VDD_SOC": "SoC core supply (memory controller, fabric, engines)",
}

FAMILIES: Tuple[BoardFamily, ...] = (
    BoardFamily(
        key="nano",
        name="Jetson Nano (P3448)",
        rails={
            "POM_5V_IN": "module input (5 V): the whole module, not the carrier board",
            "POM_5V_GPU": "GPU supply, measured at its 5 V input",
            "POM_5V_CPU": "CPU supply, measured at its 5 V input",
        },
        total_rail="POM_5V_IN",
        quantity="module_input",
        gpu_rail="POM_5V_GPU",
        source="jetson_stats tests/tegrastats (Nano); L4T 32 power management for Jetson Nano",
    ),
    BoardFamily(
        key="tx2",
        name="Jetson TX2 (P3310)",
        rails={
            "VDD_IN": "module input: the whole module, not the carrier board",
            "VDD_CPU": "CPU supply",
            "VDD_GPU": "GPU supply",
            "VDD_SOC": "SoC core supply",
            "VDD_WIFI": "Wi-Fi module supply",
            "VDD_DDR": "DRAM supply",
        },
        total_rail="VDD_IN",
        quantity="module_input",
        gpu_rail="VDD_GPU",
        aliases={
            "VDD_SYS_CPU": "VDD_CPU",
            "VDD_SYS_GPU": "VDD_GPU",
            "VDD_SYS_SOC": "VDD_SOC",
            "VDD_4V0_WIFI": "VDD_WIFI",
            "VDD_SYS_DDR": "VDD_DDR",
        },
        source="jetson_stats tests/tegrastats (TX2 line)",
    ),
    BoardFamily(
        key="nx",
        name="Jetson Xavier NX (P3668) / Orin NX, Orin Nano (P3767)",
        rails=_NX_RAILS,
        total_rail="VDD_IN",
        quantity="module_input",
        gpu_rail="VDD_CPU_GPU_CV",
        source="Hunter 2023 (Tegra234 power-sensors: in1 VDD_IN, in2 VDD_CPU_GPU_CV, in3 VDD_SOC); "
        "NVIDIA forum 'Interpretation of Jetson NX power rail'",
    ),
    BoardFamily(
        key="agx-xavier",
        name="Jetson AGX Xavier (P2888)",
        rails={
            "GPU": "GPU supply, measured at its input (VDD_SYS_GPU_IN)",
            "CPU": "CPU supply, measured at its input (VDD_SYS_CPU_IN)",
            "SOC": "SoC core supply, measured at its input (VDD_SYS_SOC_IN)",
            "CV": "CV (DLA/PVA) supply, measured at its input (VDD_SYS_CV_IN)",
            "VDDRQ": "DRAM supply, measured at its input (VIN_SYS_DDRQ_IN)",
            "SYS5V": "5 V system supply input (SYS_VIN_MV): I/O and the module's other 5 V rails",
        },
        total_rail=None,
        quantity="agx_xavier_rail_sum",
        total_rails=("GPU", "CPU", "SOC", "CV", "VDDRQ", "SYS5V"),
        gpu_rail="GPU",
        source="NVIDIA Jetson AGX Xavier design guide DG-09840-001 section 5.6.2 (monitors at 0x40 GPU/CPU/SOC, "
        "0x41 CV/VDDRQ/SYS5V); tegrastats lines (martinkersner/gtop#7)",
    ),
    BoardFamily(
        key="agx-orin",
        name="Jetson AGX Orin (P3701)",
        rails={
            "VDD_GPU_SOC": "GPU and SoC core together: GPU energy cannot be told apart from SoC energy",
            "VDD_CPU_CV": "CPU and CV (DLA/PVA) together",
            "VIN_SYS_5V0": "5 V system supply: I/O and the module's other 5 V rails",
            "VDDQ_VDD2_1V8AO": "DRAM (VDDQ, VDD2) and the 1.8 V always-on rail",
        },
        total_rail=None,
        quantity="agx_orin_rail_sum",
        total_rails=("VDD_GPU_SOC", "VDD_CPU_CV", "VIN_SYS_5V0", "VDDQ_VDD2_1V8AO"),
        gpu_rail="VDD_GPU_SOC",
        source="Hunter 2023 (Tegra234 power-sensors: 0x40 VDD_GPU_SOC, VDD_CPU_CV, VIN_SYS_5V0; "
        "0x41 VDDQ_VDD2_1V8AO); no VDD_IN on this module",
    ),
    BoardFamily(
        key="thor",
        name="Jetson Thor (T5000)",
        rails={
            "VIN": "system input measured by the carrier board's INA238: module and carrier board",
            "VDD_GPU": "GPU supply",
            "VDD_CPU_SOC_MSS": "CPU, SoC and memory subsystem supply",
            "VIN_SYS_5V0": "5 V system supply",
        },
        total_rail="VIN",
        quantity="board_input",
        gpu_rail="VDD_GPU",
        source="jetson_stats PR #900 (INA238 VIN is the complete system input), PR #785 (Thor rail names); "
        "NVIDIA forum 'Question about power monitor ... on Jetson Thor'",
    ),
)

# Signature rails that identify a family (checked in order).
_SIGNATURES: Tuple[Tuple[str, Tuple[str, ...]], ...] = (
    ("thor", ("VIN",)),
    ("thor", ("VDD_CPU_SOC_MSS",)),
    ("nano", ("POM_5V_IN",)),
    ("agx-orin", ("VDD_GPU_SOC", "VDD_CPU_CV")),
    ("agx-xavier", ("GPU", "CPU", "SOC")),
    ("agx-xavier", ("CV", "VDDRQ", "SYS5V")),
    ("nx", ("VDD_IN", "VDD_CPU_GPU_CV")),
    ("tx2", ("VDD_IN", "VDD_CPU", "VDD_GPU")),
    ("tx2", ("VDD_IN", "VDD_SYS_CPU", "VDD_SYS_GPU")),
)


def family_of(rails: List[str]) -> Optional[BoardFamily]:
    """The board family whose signature rails are all present, or None for an unknown board."""
    names = set(rails)
    for key, signature in _SIGNATURES:
        if all(name in names for name in signature):
            return next(f for f in FAMILIES if f.key == key)
    return None


@dataclasses.dataclass(frozen=True)
class TotalRule:
    """How a source forms its total from the rails it reads."""

    quantity: str  # key of QUANTITIES
    label: str  # short, for column headers: "VDD_IN", "AGX Orin rail sum", ...
    rails: Tuple[str, ...]  # the rails the total is (one input rail) or sums
    family: Optional[str]

    @property
    def meaning(self) -> str:
        return QUANTITIES[self.quantity]

    def total_mw(self, rails_mw: Mapping[str, float]) -> float:
        return float(sum(rails_mw[r] for r in self.rails if r in rails_mw))

    def to_dict(self) -> Dict[str, object]:
        return {
            "quantity": self.quantity,
            "label": self.label,
            "rails": list(self.rails),
            "meaning": self.meaning,
            "family": self.family,
        }


def total_rule(rails: List[str]) -> TotalRule:
    """The total of a board with these rails: its input rail, a family's documented sum, or (unknown) the sum."""
    family = family_of(rails)
    if family is not None:
        if family.total_rail and family.total_rail in rails:
            return TotalRule(family.quantity, family.total_rail, (family.total_rail,), family.key)
        if family.total_rails:
            summed = tuple(r for r in family.total_rails if r in rails)
            label = {"agx-orin": "AGX Orin rail sum", "agx-xavier": "AGX Xavier rail sum"}.get(family.key, "rail sum")
            return TotalRule(family.quantity, label, summed, family.key)
    for name in ("VDD_IN", "POM_5V_IN"):  # an input rail on a board not in the table is still the module input
        if name in rails:
            return TotalRule("module_input", name, (name,), None)
    return TotalRule("rail_sum", "sum of rails", tuple(rails), None)


def describe_rails(rails: List[str]) -> List[Dict[str, object]]:
    """Per rail: name, what it covers on this board, whether it is (part of) the total."""
    family = family_of(rails)
    rule = total_rule(rails)
    return [
        {
            "rail": r,
            "covers": family.covers(r) if family else "not documented for this board",
            "in_total": r in rule.rails,
            "gpu": bool(family and family.aliases.get(r, r) == family.gpu_rail),
        }
        for r in rails
    ]
