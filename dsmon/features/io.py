"""I/O features: blocked threads, filesystem waits, the target's read and write rates."""

from __future__ import annotations

from dsmon.features.series import rate, ratio

# Kernel functions a thread sleeps in while it waits on a filesystem that is not a local block
# device (FUSE daemons, NFS/SMB/Ceph/9p servers). These threads sleep in S state: neither the
# D-state count nor PSI io moves, so the wait channel is the only witness.
FS_WAIT_CHANNELS = ("request_wait_answer", "fuse_", "__fuse", "rpc_wait_bit", "nfs_",
                    "nfs4_", "wait_for_response", "cifs_", "smb2_", "p9_client_rpc",
                    "ceph_", "ceph_mdsc_do_request", "afs_", "ovl_")


def _most_common(items: list[str]) -> str:
    return max(set(items), key=items.count)


class IoFeatures:
    def __init__(self, context: dict):
        self.context = context

    def update(self, values, interval) -> None:
        sweep = interval.sweep
        if sweep is not None:
            d_threads = [t for t in sweep.threads if t.state == "D"]
            values["d_state_threads"] = len(d_threads)
            values["d_state_ratio"] = ratio(len(d_threads), len(sweep.threads))
            if d_threads:
                channels = [t.wchan for t in d_threads if t.wchan]
                self.context["blocked_channel"] = _most_common(channels) if channels else "unknown"
            if sweep.switches_read:
                fs_waits = [t.wchan for t in sweep.threads
                            if t.wchan and t.wchan.startswith(FS_WAIT_CHANNELS)]
                values["fs_wait_threads"] = len(fs_waits)
                if fs_waits:
                    self.context["fs_wait_channel"] = _most_common(fs_waits)
        before = interval.before("process")
        process = interval.process
        if before is not None and process.io and before.io:
            for key in ("read_bytes", "write_bytes", "rchar"):
                values[f"{key}_per_second"] = rate(before.io.get(key), process.io.get(key),
                                                   interval.span_s)
