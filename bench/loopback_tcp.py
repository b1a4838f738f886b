#!/usr/bin/env python3
"""The floor under the server-overhead figure: how long plain TCP over loopback
takes to move one tensor's bytes one way (no gRPC, no HTTP/2, no protobuf).

    /usr/bin/python3 bench/loopback_tcp.py [--mib 2] [--runs 300]

A thread receives --mib MiB into a preallocated buffer and answers one byte;
the figure is the median round trip (send all, read the byte) over --runs.
Compare with attention-bench --target at the same tensor size: a call moves
the input one way and the output back.
"""
import argparse
import socket
import threading
import time


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mib", type=float, default=2.0)
    ap.add_argument("--runs", type=int, default=300)
    opts = ap.parse_args()
    n = int(opts.mib * (1 << 20))

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)

    def receiver():
        conn, _ = listener.accept()
        buf = memoryview(bytearray(n))
        while True:
            got = 0
            while got < n:
                k = conn.recv_into(buf[got:])
                if k == 0:
                    return
                got += k
            conn.sendall(b"k")

    threading.Thread(target=receiver, daemon=True).start()
    sender = socket.create_connection(("127.0.0.1", listener.getsockname()[1]))
    data = bytes(n)
    times = []
    for _ in range(opts.runs):
        t0 = time.perf_counter()
        sender.sendall(data)
        sender.recv(1)
        times.append(time.perf_counter() - t0)
    times.sort()
    print(f"{opts.mib:g} MiB one way over loopback TCP: median {times[len(times) // 2] * 1e3:.3f} ms, "
          f"p10 {times[len(times) // 10] * 1e3:.3f} ms ({opts.runs} runs)")


if __name__ == "__main__":
    main()
