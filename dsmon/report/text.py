"""The terminal report: what a performance engineer would write after an hour with /proc.

One function per section, each turning its part of the report dict into lines; what the
report says once (evidence readings, threads tables, fix texts) is decided in
dsmon.report.digest and shared with the HTML page.
"""

from __future__ import annotations

from dsmon.report.digest import FixLedger, evidence_lines, quoted_lines, thread_tables
from dsmon.report.frames import user_frames
from dsmon.report.units import bytes_text as _bytes
from dsmon.report.units import number as _num
from dsmon.report.units import percent as _pct
from dsmon.sources import format_cpulist

MAX_PER_CORE = 64
MAX_POOLS = 15
MAX_PYTHON_THREADS = 8          # lines of threads (or of threads alike) in the py-spy section
MAX_ALIKE_NAMED = 4
FINDING_STACK_FRAMES = 3
PYTHON_STACK_FRAMES = 4


def render_text(report: dict) -> str:
    fixes = FixLedger()
    sections = [
        _header(report),
        _findings(report, fixes),
        _host(report.get("host") or {}),
        _target(report.get("target") or {}),
        _threads(report.get("threads") or {}),
        _python(report.get("python"), fixes),
        _gpu(report.get("gpu"), fixes),
        _collectors(report["collectors"], fixes),
    ]
    return "\n".join(line for section in sections for line in section) + "\n"


def _fix_line(fixes: FixLedger, owner: str, hint: str, indent: str) -> str:
    earlier = fixes.owner_of_earlier(owner, hint)
    return f"{indent}fix: " + (f"same as for {earlier} above" if earlier else hint)


def _stack(frames: list[str], count: int) -> str:
    return " <- ".join(user_frames(frames)[:count])


def _header(report: dict) -> list[str]:
    window = report["window"]
    target = report.get("target") or {}
    lines = [f"dsmon diagnose  pid {target.get('pid', '?')} ({target.get('comm', '?')})  "
             f"{window['samples']} samples over {window['elapsed_seconds']} s "
             f"(every {window['interval_seconds']} s)"]
    if not window["complete"]:
        lines.append(f"PARTIAL REPORT: {window['end_reason']}"
                     + (f" ({window['gone_reason']})" if window.get("gone_reason") else "")
                     + (f" at {window['target_exited_at']}" if window.get("target_exited_at")
                        else ""))
    return lines + [""]


def _findings(report: dict, fixes: FixLedger) -> list[str]:
    findings = report.get("findings") or []
    lines = ["== Findings" + (f" (engine: {report['engine']})" if report.get("engine") else "")]
    if not findings:
        lines.append("  none: no rule matched this window")
    for finding in findings:
        lines.append(f"  [{finding['severity'].upper()} {finding['state']}] "
                     f"{finding['rule_id']}: {finding['summary']}")
        lines += [f"      evidence: {line}" for line in evidence_lines(finding, report["window"])]
        lines += [f"      quoted: {line}" for line in quoted_lines(finding)]
        for thread in (finding.get("stacks") or {}).get("threads", [])[:3]:
            lines.append(f"      stack: thread {thread['tid']} {thread['name'] or ''} "
                         f"({thread['why']}, GIL {_pct(thread['gil_ratio'])}): "
                         f"{_stack(thread['frames'], FINDING_STACK_FRAMES)}")
        lines.append(_fix_line(fixes, finding["rule_id"], finding["hint"], "      "))
    observations = report.get("observations") or []
    if observations:
        lines += ["", "== Notes"]
        lines += [f"  [{item['severity']}] {item['topic']}: {item['text']}"
                  for item in observations]
    return lines + [""]


def _host(host: dict) -> list[str]:
    lines = ["== Host",
             f"  {host.get('hostname') or '?'}  kernel {host.get('kernel') or '?'}",
             f"  {host.get('cpus_online')} CPUs online, {host.get('sockets')} socket(s), "
             f"{host.get('physical_cores')} physical cores, SMT "
             f"{'on' if host.get('smt') else 'off'}, "
             f"{len(host.get('numa_nodes') or [])} NUMA node(s)"]
    for node in host.get("numa_nodes") or []:
        lines.append(f"    node {node['node']}: cpus {format_cpulist(node['cpus'])}, memory "
                     f"{_bytes(node['mem_total_bytes'])} ({_bytes(node['mem_free_bytes'])} free)")
    memory = host.get("memory") or {}
    lines.append(f"  memory {_bytes(memory.get('total_bytes'))}, available "
                 f"{_bytes(memory.get('available_bytes'))}; swap "
                 f"{_bytes(memory.get('swap_total_bytes'))} "
                 f"({_bytes(memory.get('swap_free_bytes'))} free)")
    lines.append(f"  CPU busy {_pct(host.get('cpu_busy_ratio'))} averaged over cores")
    per_core = host.get("per_core") or []
    if per_core:
        lines.append("  per core busy: " + "  ".join(
            f"cpu{c['cpu']} {_pct(c['busy_ratio'])}" for c in per_core[:MAX_PER_CORE])
            + ("  ..." if len(per_core) > MAX_PER_CORE else ""))
    pressure = host.get("pressure")
    if pressure:
        for resource, kinds in pressure.items():
            parts = [f"{kind} avg10 {v.get('avg10', 0):.2f}% avg60 {v.get('avg60', 0):.2f}% "
                     f"window {_pct(v.get('window_stall_ratio'))}" for kind, v in kinds.items()]
            lines.append(f"  pressure {resource}: " + "; ".join(parts))
    else:
        lines.append("  pressure: unavailable (see collectors)")
    return lines + [""]


def _target(target: dict) -> list[str]:
    if not target:
        return []
    lines = ["== Target",
             f"  pid {target['pid']} ({target['comm']}) user "
             f"{target.get('user') or target.get('uid')} state {target['state']} "
             f"threads {target['threads']}"
             + (f" ({target['kind']})" if target.get("kind", "process") != "process" else ""),
             f"  cmdline: {' '.join(target.get('cmdline') or []) or 'n/a'}",
             f"  exe: {target.get('exe') or 'n/a'}",
             f"  cgroup ({target.get('cgroup_version')}): {target.get('cgroup') or 'n/a'}"]
    if len(target.get("nspid") or []) > 1:
        lines.append(f"  in a PID namespace: pids along the namespaces {target['nspid']}")
    lines += _target_cpu(target["cpu"], target["effective_cpus"])
    if target["memory"].get("unavailable"):
        lines.append(f"  memory: {target['memory']['unavailable']}")
    if target.get("kind") != "kernel thread":   # its cgroup's memory is the host's
        lines += _target_memory(target["memory"])
    lines += _target_io_and_placement(target)
    lines += _target_threading(target)
    return lines + [""]


def _target_cpu(cpu: dict, effective: dict) -> list[str]:
    quota = _num(effective["quota_cores"], "{:g}") if effective["quota_cores"] else "none"
    return [f"  CPU {_num(cpu['cores'])} cores (min {_num(cpu['cores_min'])}, max "
            f"{_num(cpu['cores_max'])}, stddev {_num(cpu['cores_stddev'])} per interval), "
            f"{_pct(cpu['utilisation_of_capacity_ratio'])} of its capacity; user "
            f"{cpu['user_seconds']} s, system {cpu['system_seconds']} s"
            + (f", throttled {cpu['throttled_seconds']} s" if cpu.get("throttled_seconds")
               else ""),
            f"  effective CPUs: {format_cpulist(effective['cpus'])} ({effective['count']} "
            f"logical, {effective['physical_cores']} physical cores, quota {quota}) "
            f"-> capacity {effective['capacity_cores']:g} cores on NUMA node(s) "
            f"{', '.join(map(str, effective['numa_nodes'])) or 'n/a'}"]


def _target_memory(mem: dict) -> list[str]:
    slope = mem["rss_slope_bytes_per_second"]
    lines = [f"  memory RSS {_bytes(mem['rss_bytes'])} (anon {_bytes(mem['rss_anon_bytes'])}, "
             f"file {_bytes(mem['rss_file_bytes'])}), peak {_bytes(mem['peak_rss_bytes'])}, "
             f"swap {_bytes(mem['swap_bytes'])}; growth "
             f"{_num(slope and slope / 2**20, '{:.2f}')} MiB/s"]
    cgroup = mem.get("cgroup")
    if cgroup:
        page_cache = (cgroup["inactive_file_bytes"] or 0) + (cgroup["active_file_bytes"] or 0)
        kills = cgroup["oom_kills"] if cgroup["oom_kills"] is not None else "n/a"
        lines.append(
            f"  cgroup memory: limit "
            f"{_bytes(cgroup['limit_bytes']) if cgroup['limit_bytes'] else 'none'}"
            + (f" (set at {cgroup['limit_set_at']})" if cgroup.get("limit_set_at") else "")
            + f", usage {_bytes(cgroup['usage_bytes'])}: unreclaimable "
            f"{_bytes(cgroup['unreclaimable_bytes'])}, page cache {_bytes(page_cache)} "
            f"(kubelet working set {_bytes(cgroup['working_set_bytes'])}), OOM kills {kills}")
    lines.append(f"  headroom to {mem.get('limit_kind') or 'limit'}: "
                 f"{_bytes(mem.get('headroom_bytes'))}"
                 + (f", gone in {mem['seconds_to_limit']:.0f} s at this rate"
                    if mem.get("seconds_to_limit") else ", not growing"))
    return lines


def _target_io_and_placement(target: dict) -> list[str]:
    lines = []
    io = target.get("io") or {}
    if io:
        lines.append(f"  I/O read {_bytes(io.get('read_bytes_per_second'))}/s write "
                     f"{_bytes(io.get('write_bytes_per_second'))}/s from storage; syscalls "
                     f"read {_bytes(io.get('rchar_per_second'))}/s write "
                     f"{_bytes(io.get('wchar_per_second'))}/s")
    fds = target.get("fds") or {}
    lines.append(f"  open fds {fds.get('open') if fds.get('open') is not None else 'n/a'} of "
                 f"{fds.get('limit') or 'unlimited'}")
    numa = target.get("numa") or {}
    if numa.get("memory_bytes_by_node") is not None:
        memory = ", ".join(f"node {n} {_bytes(b)}" for n, b in numa["memory_bytes_by_node"].items())
        cpu = ", ".join(f"node {n} {s:.2f} s"
                        for n, s in (numa.get("cpu_seconds_by_node") or {}).items()) or "n/a"
        lines.append(f"  NUMA memory: {memory}; CPU time: {cpu}; locality "
                     f"{_pct(numa.get('memory_local_ratio'))}")
    return lines


def _target_threading(target: dict) -> list[str]:
    settings = target.get("thread_settings") or {}
    env = target.get("environment")
    if env is None:
        lines = ["  threading environment: unavailable (see collectors)"]
    else:
        lines = ["  threading environment: " + (
            ", ".join(f"{k}={v}" for k, v in sorted(env.items()))
            or "none of the known variables set")]
    lines.append(f"  recommended compute threads: {settings.get('recommended_threads')} "
                 f"(85% of {settings.get('usable_physical_cores')} usable physical cores)")
    return lines + [f"    {advice}" for advice in settings.get("advice", [])]


def _threads(threads: dict) -> list[str]:
    if not threads:
        return []
    switches = threads["switches_per_second"]
    lines = ["== Threads",
             f"  {threads['listed']} threads, {threads['busy']} busy (>= "
             f"{threads['busy_threshold_cpu_ratio']:.0%} of a CPU); states "
             + ", ".join(f"{s} {_pct(v)}" for s, v in threads["state_share"].items()),
             f"  runnable but waiting for a CPU: {_pct(threads['runnable_waiting_ratio'])} of "
             f"runnable time ({_num(threads['run_queue_wait_seconds_per_second'], '{:.3f}')} s "
             f"wait/s); D state {_pct(threads['d_state_ratio'])}",
             f"  switches/s: on-CPU {_num(switches['timeslices'], '{:.0f}')}, voluntary "
             f"{_num(switches['voluntary'], '{:.0f}')}, involuntary "
             f"{_num(switches['involuntary'], '{:.0f}')}"]
    lines += [f"  note: {note}" for note in threads.get("notes", [])]
    lines += _pools(threads["pools"])
    for table in thread_tables(threads):
        lines += [f"  {table.title}:",
                  f"    {'tid':>8} {'name':<18} {'cpu':>7} {'rq wait s':>9} {'wait %':>7} "
                  f"{'cpu#':>4} state  python"]
        for row in table.rows:
            python = (row.get("python") or {}).get("top_frame") or ""
            lines.append(f"    {row['tid']:>8} {row['name'][:18]:<18} {_pct(row['cpu_ratio']):>7} "
                         f"{_num(row['run_queue_wait_seconds'], '{:.3f}'):>9} "
                         f"{_pct(row['run_queue_wait_ratio']):>7} {row['last_cpu']:>4} "
                         f"{row['state']:<5}  {python}")
    if threads["blocked"]:
        lines.append("  threads seen in D state:")
        lines += [f"    {row['tid']:>8} {row['name'][:18]:<18} wchan {row['wchan'] or 'n/a'} "
                  f"({row['d_state_samples']} samples)" for row in threads["blocked"]]
    return lines + [""]


def _pools(pools: list[dict]) -> list[str]:
    lines = ["  pools (threads grouped by name, digits masked):",
             f"    {'pool':<28} {'threads':>7} {'busy':>5} {'cpu cores':>9} {'rq wait s':>9}  states"]
    for pool in pools[:MAX_POOLS]:
        lines.append(f"    {pool['pool'][:28]:<28} {pool['threads']:>7} {pool['busy']:>5} "
                     f"{pool['cpu_cores']:>9.2f} {pool['run_queue_wait_seconds']:>9.3f}  "
                     + " ".join(f"{s}:{n}" for s, n in sorted(pool["states"].items())))
    if len(pools) > MAX_POOLS:
        lines.append(f"    ... {len(pools) - MAX_POOLS} more pools")
    return lines


def _python(python: dict | None, fixes: FixLedger) -> list[str]:
    if python is None:
        return []
    lines = ["== Python stacks (py-spy)"]
    if python.get("status") != "ok":
        lines.append(f"  unavailable: {python.get('error') or python.get('status')}")
        if python.get("hint"):
            lines.append(_fix_line(fixes, "py-spy", python["hint"], "  "))
        return lines + [""]
    holders = ", ".join(f"{h['name']} {_pct(h['gil_ratio'])}" for h in python["gil_holders"][:4])
    lines += [f"  {python['samples']} samples (every {python['sample_period_seconds']} s, "
              f"non-blocking); {python['python_threads']} Python threads, "
              f"{python['active_threads']} active, {python['idle_threads']} idle",
              f"  GIL held {_pct(python['gil_held_ratio'])} of the samples"
              + (f" (by {holders})" if holders else "")]
    groups = _alike_threads(python["threads"])
    for group in groups[:MAX_PYTHON_THREADS]:
        first = group[0]
        if len(group) == 1:
            who = f"thread {first['tid']} {first['name'] or ''}"
        else:
            names = ", ".join(f"{t['tid']} {t['name'] or ''}".strip()
                              for t in group[:MAX_ALIKE_NAMED])
            more = f", ... {len(group) - MAX_ALIKE_NAMED} more" \
                if len(group) > MAX_ALIKE_NAMED else ""
            who = f"{len(group)} threads alike ({names}{more}), each"
        lines.append(f"  {who}: cpu {_pct(first['cpu_ratio'])}, active "
                     f"{_pct(first['active_ratio'])}, GIL {_pct(first['gil_ratio'])}")
        lines += [f"      {share}  {stack}" for share, stack in _shown_stacks(first)]
    hidden = sum(len(group) for group in groups[MAX_PYTHON_THREADS:])
    if hidden:
        lines.append(f"  ... {hidden} more Python threads (JSON has all)")
    return lines + [""]


def _shown_stacks(thread: dict) -> list[tuple[str, str]]:
    return [(_pct(stack["share"]), _stack(stack["frames"], PYTHON_STACK_FRAMES))
            for stack in thread["top_stacks"][:2]]


def _alike_threads(threads: list[dict]) -> list[list[dict]]:
    """Threads whose printed line and stacks would read the same (a pool of idle workers),
    grouped in the order of their first member: the report prints each group once."""
    groups: dict[tuple, list[dict]] = {}
    for thread in threads:
        key = (_pct(thread["cpu_ratio"]), _pct(thread["active_ratio"]),
               _pct(thread["gil_ratio"]), tuple(_shown_stacks(thread)))
        groups.setdefault(key, []).append(thread)
    return list(groups.values())


def _gpu(gpu: dict | None, fixes: FixLedger) -> list[str]:
    if gpu is None:
        return []
    lines = ["== GPUs"]
    if gpu.get("status") not in ("ok", "partial"):
        return lines + [f"  unavailable: {gpu.get('error')}", ""]
    lines.append(f"  driver {gpu.get('driver_version')}, {gpu.get('device_count')} GPU(s)")
    for card in gpu.get("gpus", []):
        lines.append(f"  GPU{card['index']} {card.get('name')}: memory "
                     f"{_bytes(card.get('memory_used_bytes'))} of "
                     f"{_bytes(card.get('memory_total_bytes'))} (reserved "
                     f"{_bytes(card.get('memory_reserved_bytes'))}), util "
                     f"{_pct(card.get('utilization_gpu_ratio'))}, "
                     f"{_num(card.get('temperature_celsius'), '{:.0f}')} C, "
                     f"{_num(card.get('power_watts'), '{:.0f}')} W, PCIe gen "
                     f"{card.get('pcie_gen_current')}/{card.get('pcie_gen_max')} x"
                     f"{card.get('pcie_width_current')}/{card.get('pcie_width_max')}")
    growth = gpu.get("target_memory_growth_bytes_per_second")
    for pid, usage in (gpu.get("targets") or {}).items():
        line = f"  target pid {pid}: {usage['status']}"
        if usage.get("memory_bytes") is not None:
            line += f", GPU memory {_bytes(usage['memory_bytes'])} on GPU(s) " + \
                (", ".join(str(g) for g in usage.get("gpus", [])) or "none")
        if growth:
            line += f", growing {_bytes(growth)}/s"
        if usage.get("reason"):
            line += f" ({usage['reason']})"
        lines.append(line)
    if (gpu.get("model_size") or {}).get("text"):
        lines.append(f"  model size: {gpu['model_size']['text']}")
    return lines + [""]


def _collectors(collectors: dict, fixes: FixLedger) -> list[str]:
    lines = ["== Collectors"]
    for name, entry in collectors.items():
        line = f"  {name:<12} {entry['status']:<8} runs {entry['runs']}"
        if entry["error"]:
            line += f"  {entry['error']}"
        lines.append(line)
        if entry["hint"]:
            lines.append(_fix_line(fixes, f"the {name} collector", entry["hint"],
                                   f"  {'':<12} "))
        lines += [f"  {'':<12} {field} unavailable: {reason}"
                  for field, reason in entry["unavailable"].items()]
    return lines
