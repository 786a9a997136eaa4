#!/usr/bin/env python3
# RSS of a running node (PID) per idle RESP socket and after they close: python3 bench/idle-resp-rss.py LABEL RESP_PORT PID
# (session 20: glibc 12.0 KiB per idle socket, mimalloc 69.6 KiB; BENCHMARKS.md)
import socket, subprocess, sys, time, os
binary, port = sys.argv[1], int(sys.argv[2])
pid = int(sys.argv[3])
def rss():
    return int(open(f"/proc/{pid}/status").read().split("VmRSS:")[1].split()[0])
b = rss()
socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(1000)]
time.sleep(1.0)
d = rss()
for s in socks: s.close()
time.sleep(1.0)
a = rss()
print(f"{binary}: RSS before {b} KiB, with 1000 idle RESP sockets +{(d-b)/1000:.1f} KiB each, after they closed +{(a-b)/1024:.1f} MiB")
