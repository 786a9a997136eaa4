#!/usr/bin/env python3
"""Reads an ftrace text dump of block events and of raw syscalls of chosen threads (the
shard and the generator's threads) during a device-GET run, and prints what the device saw
and what each thread spent its time in: the device's mean number of requests in flight
(out of the 32 the clients keep outstanding), its mean latency, each thread's time per
syscall, and how often a readiness poller went to sleep (a one-byte write to its helper)
and how long it slept (the helper's blocking epoll_wait).

Usage: trace_waves.py TRACE_FILE [TID=NAME ...]"""
import collections
import re
import statistics
import sys

LINE = re.compile(r"-(\d+)\s+\[\d+\].*?(\d+\.\d+): (\w+): (.*)")
SECTOR = re.compile(r" (\d+) \+ \d+")
NAMES = {0: "read", 1: "write", 44: "sendto", 45: "recvfrom", 46: "sendmsg", 232: "epoll_wait",
         426: "io_uring_enter", 202: "futex", 24: "sched_yield"}


def main(path, labels):
    entered, calls = {}, collections.defaultdict(lambda: [0, 0.0])
    issued, latencies = {}, []
    in_flight, area, first, last = 0, 0.0, None, None
    for line in open(path):
        m = LINE.search(line)
        if not m:
            continue
        tid, t, event, rest = int(m.group(1)), float(m.group(2)) * 1e6, m.group(3), m.group(4)
        first = t if first is None else first
        if event == "sys_enter":
            entered[tid] = (int(rest.split()[1]), t, rest)
        elif event == "sys_exit" and tid in entered:
            nr, t0, args = entered.pop(tid)
            ret = int(rest.split("=")[-1])
            name = NAMES.get(nr, str(nr))
            if name in ("sendto", "write") and ret == 1:
                name += " (1 byte: wake-up or sleep request)"
            c = calls[(tid, name)]
            c[0] += 1
            c[1] += t - t0
        elif event in ("block_rq_issue", "block_rq_complete"):
            s = SECTOR.search(rest)
            if not s or not rest.split()[1].startswith("R"):
                continue
            if last is not None:
                area += in_flight * (t - last)
            last = t
            if event == "block_rq_issue":
                issued[s.group(1)] = t
                in_flight += 1
            elif s.group(1) in issued:
                latencies.append(t - issued.pop(s.group(1)))
                in_flight -= 1
    span = (last or 0) - (first or 0)
    if not latencies or span <= 0:
        sys.exit("no completed reads in the trace")
    print(f"traced {span / 1000:.1f} ms: {len(latencies)} device reads "
          f"({len(latencies) / span * 1e6:,.0f} per second)")
    print(f"device: {area / span:.1f} reads in flight on average, "
          f"latency mean {statistics.mean(latencies):.0f} us, p50 {statistics.median(latencies):.0f} us")
    for (tid, name), (n, total) in sorted(calls.items(), key=lambda kv: (kv[0][0], -kv[1][1])):
        if total / span < 0.005:
            continue
        who = labels.get(str(tid), str(tid))
        print(f"{who:>12} {name:<44} {n:6d} calls {total / n:7.1f} us each "
              f"{100 * total / span:5.1f}% of the time")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1], dict(a.split("=", 1) for a in sys.argv[2:]))
