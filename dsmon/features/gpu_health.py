"""Host features of GPU health, from NVML snapshots: lost and missing GPUs, ECC, row remapping,
clock slowdowns, PCIe links, MIG changes, XID events.

These are the host's, not a target's: a lost GPU is one finding however many processes use it.
Each value counts GPUs (or events) so that a rule says "1 or more"; the matching context
field names them ("GPU 3 (H100, 0000:9b:00.0)") for the summary and the hint.
"""

from __future__ import annotations

from dsmon.features.catalogue import GPU_HEALTH_FEATURES
from dsmon.gpu.sample import SLOWDOWN_REASONS, XID_CRITICAL

# sw_power_cap alone is the board's power budget at work, not the hardware protecting itself.
POWER_CAP = "sw_power_cap"
HARDWARE_SLOWDOWNS = tuple(r for r in SLOWDOWN_REASONS if r != POWER_CAP)

class GpuHealthFeatures:
    """Snapshot in, host feature values and context out; keeps the XID counters."""

    def __init__(self):
        self.context: dict[str, str] = {}
        self._xids = 0
        self._critical_xids = 0

    def update(self, snapshot) -> dict[str, float | None]:
        values: dict[str, float | None] = dict.fromkeys(GPU_HEALTH_FEATURES)
        if snapshot is None:
            return values
        context = self.context
        healthy = [gpu for gpu in snapshot.gpus if not gpu.lost]
        lost = [gpu for gpu in snapshot.gpus if gpu.lost]
        values["gpus_lost"] = len(lost)
        context["gpus_lost_list"] = _names(lost)
        if lost:
            context["gpu_reset_command"] = "; ".join(f"nvidia-smi -r -i {gpu.index}" for gpu in lost)
        values["gpus_missing"] = max(0, snapshot.max_device_count - snapshot.device_count)
        context["gpus_missing_list"] = "; ".join(
            f"{m.get('uuid') or '?'} (bus {m.get('pci_bus_id') or '?'}, was GPU "
            f"{m.get('last_index')})" for m in snapshot.missing) or "none"
        ecc = [gpu for gpu in healthy if gpu.ecc_volatile_uncorrected]
        values["gpu_ecc_uncorrected_errors"] = _sum_known(
            [gpu.ecc_volatile_uncorrected for gpu in healthy])
        context["gpu_ecc_list"] = "; ".join(
            f"{gpu.label}: {gpu.ecc_volatile_uncorrected}" for gpu in ecc) or "none"
        failed = [gpu for gpu in healthy if gpu.remap_failure]
        pending = [gpu for gpu in healthy if gpu.remap_pending and not gpu.remap_failure]
        values["gpus_row_remap_failed"] = _count_known(healthy, "remap_failure", failed)
        values["gpus_row_remap_pending"] = _count_known(healthy, "remap_pending", pending)
        context["gpu_remap_list"] = _names(failed + pending)
        if pending and not lost:
            context["gpu_reset_command"] = "; ".join(f"nvidia-smi -r -i {gpu.index}"
                                                     for gpu in pending)
        slowed, capped = [], []
        for gpu in healthy:
            reasons = set(gpu.clock_event_reasons or ())
            hardware = sorted(reasons & set(HARDWARE_SLOWDOWNS))
            if hardware:
                slowed.append(f"{gpu.label}: {', '.join(hardware)}")
            elif POWER_CAP in reasons:
                capped.append(gpu.label)
        known = [gpu for gpu in healthy if gpu.clock_event_reasons is not None]
        values["gpus_hardware_slowdown"] = len(slowed) if known else None
        values["gpus_power_capped"] = len(capped) if known else None
        context["gpu_slowdown_list"] = "; ".join(slowed) or "none"
        context["gpu_power_cap_list"] = "; ".join(capped) or "none"
        links = [gpu for gpu in healthy if gpu.pcie_width_current and gpu.pcie_width_max]
        narrow = [gpu for gpu in links if gpu.pcie_width_current < gpu.pcie_width_max]
        values["gpus_pcie_degraded"] = len(narrow) if links else None
        context["gpu_pcie_list"] = "; ".join(
            f"{gpu.label}: x{gpu.pcie_width_current} of x{gpu.pcie_width_max}"
            for gpu in narrow) or "none"
        mig = [gpu for gpu in healthy if gpu.mig_enabled is not None
               and gpu.mig_pending is not None]
        changing = [gpu for gpu in mig if gpu.mig_enabled != gpu.mig_pending]
        values["gpus_mig_change_pending"] = len(changing) if mig else None
        context["gpu_mig_list"] = "; ".join(
            f"{gpu.label}: to {'on' if gpu.mig_pending else 'off'}" for gpu in changing) or "none"
        for event in snapshot.xid_events:
            self._xids += 1
            self._critical_xids += event.xid in XID_CRITICAL
        if snapshot.xid_events:
            context["gpu_xid_list"] = "; ".join(
                f"GPU {e.gpu_index}: Xid {e.xid} ({e.meaning})" for e in snapshot.xid_events)
        values["gpu_xid_events"] = self._xids
        values["gpu_critical_xid_events"] = self._critical_xids
        return values


def _names(gpus) -> str:
    return "; ".join(gpu.label for gpu in gpus) or "none"


def _sum_known(numbers) -> float | None:
    known = [n for n in numbers if n is not None]
    return float(sum(known)) if known else None


def _count_known(gpus, attribute: str, matching) -> float | None:
    """How many match, or None when no GPU answered the question (not supported, no data)."""
    return float(len(matching)) if any(getattr(g, attribute) is not None for g in gpus) else None
