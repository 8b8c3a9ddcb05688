"""The terminal report: what a performance engineer would write after an hour with /proc."""

from __future__ import annotations

from dsmon.report.units import bytes_text as _bytes
from dsmon.report.units import number as _num
from dsmon.report.units import percent as _pct
from dsmon.sources import format_cpulist


def render_text(report: dict) -> str:
    lines: list[str] = []
    out = lines.append
    window = report["window"]
    target = report.get("target") or {}
    host = report.get("host") or {}
    threads = report.get("threads") or {}

    out(f"dsmon diagnose  pid {target.get('pid', '?')} ({target.get('comm', '?')})  "
        f"{window['samples']} samples over {window['elapsed_seconds']} s "
        f"(every {window['interval_seconds']} s)")
    if not window["complete"]:
        out(f"PARTIAL REPORT: {window['end_reason']}"
            + (f" at {window['target_exited_at']}" if window.get("target_exited_at") else ""))
    out("")

    findings = report.get("findings") or []
    out("== Findings" + (f" (engine: {report['engine']})" if report.get("engine") else ""))
    if not findings:
        out("  none: no rule matched this window")
    for finding in findings:
        out(f"  [{finding['severity'].upper()} {finding['state']}] {finding['rule_id']}: "
            f"{finding['summary']}")
        for item in finding["evidence"]:
            out(f"      evidence: {item['text']}")
        for thread in (finding.get("stacks") or {}).get("threads", [])[:3]:
            out(f"      stack: thread {thread['tid']} {thread['name'] or ''} ({thread['why']}, "
                f"GIL {_pct(thread['gil_ratio'])}): {' <- '.join(thread['frames'][:3])}")
        out(f"      fix: {finding['hint']}")
    observations = report.get("observations") or []
    if observations:
        out("")
        out("== Notes")
        for item in observations:
            out(f"  [{item['severity']}] {item['topic']}: {item['text']}")
    out("")

    out("== Host")
    out(f"  {host.get('hostname') or '?'}  kernel {host.get('kernel') or '?'}")
    out(f"  {host.get('cpus_online')} CPUs online, {host.get('sockets')} socket(s), "
        f"{host.get('physical_cores')} physical cores, SMT {'on' if host.get('smt') else 'off'}, "
        f"{len(host.get('numa_nodes') or [])} NUMA node(s)")
    for node in host.get("numa_nodes") or []:
        out(f"    node {node['node']}: cpus {format_cpulist(node['cpus'])}, memory "
            f"{_bytes(node['mem_total_bytes'])} ({_bytes(node['mem_free_bytes'])} free)")
    memory = host.get("memory") or {}
    out(f"  memory {_bytes(memory.get('total_bytes'))}, available "
        f"{_bytes(memory.get('available_bytes'))}; swap {_bytes(memory.get('swap_total_bytes'))} "
        f"({_bytes(memory.get('swap_free_bytes'))} free)")
    out(f"  CPU busy {_pct(host.get('cpu_busy_ratio'))} averaged over cores")
    per_core = host.get("per_core") or []
    if per_core:
        out("  per core busy: " + "  ".join(
            f"cpu{c['cpu']} {_pct(c['busy_ratio'])}" for c in per_core[:64])
            + ("  ..." if len(per_core) > 64 else ""))
    pressure = host.get("pressure")
    if pressure:
        for resource, kinds in pressure.items():
            parts = [f"{kind} avg10 {v.get('avg10', 0):.2f}% avg60 {v.get('avg60', 0):.2f}% "
                     f"window {_pct(v.get('window_stall_ratio'))}" for kind, v in kinds.items()]
            out(f"  pressure {resource}: " + "; ".join(parts))
    else:
        out("  pressure: unavailable (see collectors)")
    out("")

    if target:
        out("== Target")
        out(f"  pid {target['pid']} ({target['comm']}) user {target.get('user') or target.get('uid')}"
            f" state {target['state']} threads {target['threads']}")
        out(f"  cmdline: {' '.join(target.get('cmdline') or []) or 'n/a'}")
        out(f"  exe: {target.get('exe') or 'n/a'}")
        out(f"  cgroup ({target.get('cgroup_version')}): {target.get('cgroup') or 'n/a'}")
        if len(target.get("nspid") or []) > 1:
            out(f"  in a PID namespace: pids along the namespaces {target['nspid']}")
        cpu = target["cpu"]
        effective = target["effective_cpus"]
        out(f"  CPU {_num(cpu['cores'])} cores (min {_num(cpu['cores_min'])}, max "
            f"{_num(cpu['cores_max'])}, stddev {_num(cpu['cores_stddev'])} per interval), "
            f"{_pct(cpu['utilisation_of_capacity_ratio'])} of its capacity; user "
            f"{cpu['user_seconds']} s, system {cpu['system_seconds']} s"
            + (f", throttled {cpu['throttled_seconds']} s" if cpu.get("throttled_seconds") else ""))
        out(f"  effective CPUs: {format_cpulist(effective['cpus'])} ({effective['count']} logical, "
            f"{effective['physical_cores']} physical cores, quota "
            f"{_num(effective['quota_cores'], '{:g}') if effective['quota_cores'] else 'none'}) "
            f"-> capacity {effective['capacity_cores']:g} cores on NUMA node(s) "
            f"{', '.join(map(str, effective['numa_nodes'])) or 'n/a'}")
        mem = target["memory"]
        out(f"  memory RSS {_bytes(mem['rss_bytes'])} (anon {_bytes(mem['rss_anon_bytes'])}, file "
            f"{_bytes(mem['rss_file_bytes'])}), peak {_bytes(mem['peak_rss_bytes'])}, swap "
            f"{_bytes(mem['swap_bytes'])}; growth "
            f"{_num(mem['rss_slope_bytes_per_second'] and mem['rss_slope_bytes_per_second'] / 2**20, '{:.2f}')} MiB/s")
        cgroup = mem.get("cgroup")
        if cgroup:
            out(f"  cgroup memory: limit {_bytes(cgroup['limit_bytes']) if cgroup['limit_bytes'] else 'none'}"
                + (f" (set at {cgroup['limit_set_at']})" if cgroup.get("limit_set_at") else "")
                + f", usage {_bytes(cgroup['usage_bytes'])}: unreclaimable "
                f"{_bytes(cgroup['unreclaimable_bytes'])}, page cache "
                f"{_bytes((cgroup['inactive_file_bytes'] or 0) + (cgroup['active_file_bytes'] or 0))}"
                f" (kubelet working set {_bytes(cgroup['working_set_bytes'])}), OOM kills "
                f"{cgroup['oom_kills'] if cgroup['oom_kills'] is not None else 'n/a'}")
        out(f"  headroom to {mem.get('limit_kind') or 'limit'}: {_bytes(mem.get('headroom_bytes'))}"
            + (f", gone in {mem['seconds_to_limit']:.0f} s at this rate" if mem.get("seconds_to_limit")
               else ", not growing"))
        io = target.get("io") or {}
        if io:
            out(f"  I/O read {_bytes(io.get('read_bytes_per_second'))}/s write "
                f"{_bytes(io.get('write_bytes_per_second'))}/s from storage; syscalls read "
                f"{_bytes(io.get('rchar_per_second'))}/s write {_bytes(io.get('wchar_per_second'))}/s")
        fds = target.get("fds") or {}
        out(f"  open fds {fds.get('open') if fds.get('open') is not None else 'n/a'} of "
            f"{fds.get('limit') or 'unlimited'}")
        numa = target.get("numa") or {}
        if numa.get("memory_bytes_by_node") is not None:
            out("  NUMA memory: " + ", ".join(f"node {n} {_bytes(b)}" for n, b in
                                             numa["memory_bytes_by_node"].items())
                + "; CPU time: " + (", ".join(f"node {n} {s:.2f} s" for n, s in
                                             (numa.get("cpu_seconds_by_node") or {}).items())
                                    or "n/a")
                + f"; locality {_pct(numa.get('memory_local_ratio'))}")
        settings = target.get("thread_settings") or {}
        env = target.get("environment")
        if env is None:
            out("  threading environment: unavailable (see collectors)")
        else:
            out("  threading environment: " + (", ".join(f"{k}={v}" for k, v in sorted(env.items()))
                                               or "none of the known variables set"))
        out(f"  recommended compute threads: {settings.get('recommended_threads')} "
            f"(85% of {settings.get('usable_physical_cores')} usable physical cores)")
        for advice in settings.get("advice", []):
            out(f"    {advice}")
        out("")

    if threads:
        out("== Threads")
        out(f"  {threads['listed']} threads, {threads['busy']} busy (>= "
            f"{threads['busy_threshold_cpu_ratio']:.0%} of a CPU); states "
            + ", ".join(f"{s} {_pct(v)}" for s, v in threads["state_share"].items()))
        switches = threads["switches_per_second"]
        out(f"  runnable but waiting for a CPU: {_pct(threads['runnable_waiting_ratio'])} of runnable "
            f"time ({_num(threads['run_queue_wait_seconds_per_second'], '{:.3f}')} s wait/s); "
            f"D state {_pct(threads['d_state_ratio'])}")
        out(f"  switches/s: on-CPU {_num(switches['timeslices'], '{:.0f}')}, voluntary "
            f"{_num(switches['voluntary'], '{:.0f}')}, involuntary {_num(switches['involuntary'], '{:.0f}')}")
        for note in threads.get("notes", []):
            out(f"  note: {note}")
        out("  pools (threads grouped by name, digits masked):")
        out(f"    {'pool':<28} {'threads':>7} {'busy':>5} {'cpu cores':>9} {'rq wait s':>9}  states")
        for pool in threads["pools"][:15]:
            out(f"    {pool['pool'][:28]:<28} {pool['threads']:>7} {pool['busy']:>5} "
                f"{pool['cpu_cores']:>9.2f} {pool['run_queue_wait_seconds']:>9.3f}  "
                + " ".join(f"{s}:{n}" for s, n in sorted(pool["states"].items())))
        if len(threads["pools"]) > 15:
            out(f"    ... {len(threads['pools']) - 15} more pools")
        for title, key in (("top threads by CPU", "top_by_cpu"),
                           ("top threads by run-queue wait", "top_by_run_queue_wait")):
            rows = threads[key]
            if not rows:
                continue
            out(f"  {title}:")
            out(f"    {'tid':>8} {'name':<18} {'cpu':>7} {'rq wait s':>9} {'wait %':>7} {'cpu#':>4} "
                "state  python")
            for row in rows:
                python = (row.get("python") or {}).get("top_frame") or ""
                out(f"    {row['tid']:>8} {row['name'][:18]:<18} {_pct(row['cpu_ratio']):>7} "
                    f"{_num(row['run_queue_wait_seconds'], '{:.3f}'):>9} "
                    f"{_pct(row['run_queue_wait_ratio']):>7} {row['last_cpu']:>4} "
                    f"{row['state']:<5}  {python}")
        if threads["blocked"]:
            out("  threads seen in D state:")
            for row in threads["blocked"]:
                out(f"    {row['tid']:>8} {row['name'][:18]:<18} wchan {row['wchan'] or 'n/a'} "
                    f"({row['d_state_samples']} samples)")
        out("")

    _python_section(out, report.get("python"))

    gpu = report.get("gpu")
    if gpu is not None:
        out("== GPUs")
        if gpu.get("status") not in ("ok", "partial"):
            out(f"  unavailable: {gpu.get('error')}")
        else:
            out(f"  driver {gpu.get('driver_version')}, {gpu.get('device_count')} GPU(s)")
            for card in gpu.get("gpus", []):
                util = card.get("utilization_gpu_ratio")
                out(f"  GPU{card['index']} {card.get('name')}: memory {_bytes(card.get('memory_used_bytes'))}"
                    f" of {_bytes(card.get('memory_total_bytes'))} (reserved "
                    f"{_bytes(card.get('memory_reserved_bytes'))}), util {_pct(util)}, "
                    f"{_num(card.get('temperature_celsius'), '{:.0f}')} C, "
                    f"{_num(card.get('power_watts'), '{:.0f}')} W, PCIe gen "
                    f"{card.get('pcie_gen_current')}/{card.get('pcie_gen_max')} x"
                    f"{card.get('pcie_width_current')}/{card.get('pcie_width_max')}")
            for pid, usage in (gpu.get("targets") or {}).items():
                line = f"  target pid {pid}: {usage['status']}"
                if usage.get("memory_bytes") is not None:
                    line += f", GPU memory {_bytes(usage['memory_bytes'])} on GPU(s) " + \
                        (", ".join(str(g) for g in usage.get("gpus", [])) or "none")
                growth = gpu.get("target_memory_growth_bytes_per_second")
                if growth:
                    line += f", growing {_bytes(growth)}/s"
                if usage.get("reason"):
                    line += f" ({usage['reason']})"
                out(line)
            if (gpu.get("model_size") or {}).get("text"):
                out(f"  model size: {gpu['model_size']['text']}")
        out("")

    out("== Collectors")
    for name, entry in report["collectors"].items():
        line = f"  {name:<12} {entry['status']:<8} runs {entry['runs']}"
        if entry["error"]:
            line += f"  {entry['error']}"
        out(line)
        if entry["hint"]:
            out(f"  {'':<12} fix: {entry['hint']}")
        for field, reason in entry["unavailable"].items():
            out(f"  {'':<12} {field} unavailable: {reason}")
    return "\n".join(lines) + "\n"


def _python_section(out, python: dict | None) -> None:
    if python is None:
        return
    out("== Python stacks (py-spy)")
    if python.get("status") != "ok":
        out(f"  unavailable: {python.get('error') or python.get('status')}")
        if python.get("hint"):
            out(f"  fix: {python['hint']}")
        out("")
        return
    out(f"  {python['samples']} samples (every {python['sample_period_seconds']} s, "
        f"non-blocking); {python['python_threads']} Python threads, "
        f"{python['active_threads']} active, {python['idle_threads']} idle")
    holders = ", ".join(f"{h['name']} {_pct(h['gil_ratio'])}" for h in python["gil_holders"][:4])
    out(f"  GIL held {_pct(python['gil_held_ratio'])} of the samples"
        + (f" (by {holders})" if holders else ""))
    for thread in python["threads"][:8]:
        out(f"  thread {thread['tid']} {thread['name'] or ''}: cpu {_pct(thread['cpu_ratio'])}, "
            f"active {_pct(thread['active_ratio'])}, GIL {_pct(thread['gil_ratio'])}")
        for stack in thread["top_stacks"][:2]:
            out(f"      {_pct(stack['share'])}  " + " <- ".join(stack["frames"][:4]))
    if len(python["threads"]) > 8:
        out(f"  ... {len(python['threads']) - 8} more Python threads (JSON has all)")
    out("")
