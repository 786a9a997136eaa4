#!/usr/bin/env python3
"""Reads an ftrace text dump (block and workqueue events) and prints where the time of one
durable group-commit batch goes: the write, the kworker that ext4 uses to issue the cache
flush, the flush, that kworker finishing the write (it runs on the core that takes the
disk's interrupts), and the time until the next batch's write is issued (the submitter
noticing the completion, answering, and starting the next write). When the trace also
holds the shard's sendmsg and recvfrom calls, the batches whose next write had to wait for
new requests are split further: the node's turnaround to its first reply, the clients'
round trip to the next request received, and staging it until the write is issued.

Usage: trace_batch.py TRACE_FILE"""
import bisect
import re
import statistics
import sys

EVENT = re.compile(r"\[(\d+)\].*?(\d+\.\d+): (\w+): (.*)")
SYSCALL = re.compile(r"(\d+\.\d+): (?:sys_sendmsg\(|sys_recvfrom -> 0x([0-9a-f]+))")


def main(path):
    ev, dio_end, sends, recvs = [], [], [], []
    for line in open(path):
        s = SYSCALL.search(line)
        if s:
            t = float(s.group(1)) * 1e6
            if s.group(2) is None:
                sends.append(t)
            elif 1 < int(s.group(2), 16) < 1 << 63:  # request bytes: not an error, not a wake-up byte
                recvs.append(t)
            continue
        m = EVENT.search(line)
        if not m:
            continue
        t, name, rest = float(m.group(2)) * 1e6, m.group(3), m.group(4)
        if name in ("block_rq_issue", "block_rq_complete"):
            kind = rest.split()[1]
            if kind in ("WS", "FF"):
                ev.append((t, name[9:], kind))
        elif name == "workqueue_execute_start" and "iomap_dio_complete_work" in rest:
            ev.append((t, "wq", "dio"))
        elif name == "workqueue_execute_end" and "iomap_dio_complete_work" in rest:
            dio_end.append(t)
    ev.sort()
    steps = {k: [] for k in ("write", "write done -> kworker", "kworker -> flush issued", "flush",
                             "flush done -> kworker done (core of the disk IRQ)",
                             "kworker done -> next write issued (submitter)")}
    issues = [e[0] for e in ev if e[1] == "issue" and e[2] == "WS"]
    last = {}
    for t, name, kind in ev:
        if name == "issue" and kind == "WS":
            last["ws"] = t
        elif name == "complete" and kind == "WS" and "ws" in last:
            steps["write"].append(t - last.pop("ws"))
            last["wsdone"] = t
        elif name == "wq" and "wsdone" in last:
            steps["write done -> kworker"].append(t - last.pop("wsdone"))
            last["wq"] = t
        elif name == "issue" and kind == "FF" and "wq" in last:
            steps["kworker -> flush issued"].append(t - last.pop("wq"))
            last["ff"] = t
        elif name == "complete" and kind == "FF" and "ff" in last:
            steps["flush"].append(t - last.pop("ff"))
            j = bisect.bisect(dio_end, t)
            k = bisect.bisect(issues, dio_end[j]) if j < len(dio_end) else len(issues)
            if k < len(issues):
                steps["flush done -> kworker done (core of the disk IRQ)"].append(dio_end[j] - t)
                steps["kworker done -> next write issued (submitter)"].append(issues[k] - dio_end[j])
    batches = len(steps["write"])
    if batches == 0:
        print("no durable batch in the trace (WS write + FF flush): was the load running?")
        return
    print(f"{batches} batches traced; microseconds per batch:")
    total = 0.0
    for name, v in steps.items():
        if not v:
            continue
        v.sort()
        mean = statistics.mean(v)
        total += mean
        print(f"  {name:52s} mean {mean:7.1f}  p50 {v[len(v) // 2]:7.1f}  p90 {v[len(v) * 9 // 10]:7.1f}")
    print(f"  {'sum of the means':52s} {total:12.1f}")
    span = (ev[-1][0] - ev[0][0]) if len(ev) > 1 else 0.0
    print(f"  {'trace span / batches (the real cycle)':52s} {span / batches:12.1f}")
    if sends and recvs:
        round_trip(dio_end, issues, sorted(sends), sorted(recvs))


def round_trip(dio_end, issues, sends, recvs):
    """Batches whose next write waited for a reply to go out and a new request to come in."""
    split = {k: [] for k in ("kworker done -> first reply sent (node)",
                             "reply sent -> next request received (clients)",
                             "request received -> next write issued (node)")}
    waited = 0
    for t0 in dio_end:
        i, k = bisect.bisect(sends, t0), bisect.bisect(issues, t0)
        if i >= len(sends) or k >= len(issues) or sends[i] > issues[k]:
            continue
        j = bisect.bisect(recvs, sends[i])
        if j >= len(recvs) or recvs[j] > issues[k]:
            continue
        waited += 1
        split["kworker done -> first reply sent (node)"].append(sends[i] - t0)
        split["reply sent -> next request received (clients)"].append(recvs[j] - sends[i])
        split["request received -> next write issued (node)"].append(issues[k] - recvs[j])
    print(f"{waited} of {len(dio_end)} batches: the next write waited for new requests:")
    for name, v in split.items():
        if v:
            v.sort()
            print(f"  {name:52s} mean {statistics.mean(v):7.1f}  p50 {v[len(v) // 2]:7.1f}")


if __name__ == "__main__":
    main(sys.argv[1])
