"""One network probe run by the tests as the agent's uid in the agent namespace; prints one JSON line.

    netprobe.py tcp HOST PORT [SEND]   connect, send SEND (optional), read until close (bounded)
    netprobe.py udp HOST PORT          send one datagram, wait for an answer (bounded)
    netprobe.py icmp HOST 0            one echo request on a raw socket (root only), wait for the reply

Exit 0 with {"ok": true, "data": ...} when the other end answered, else {"ok": false, "error": ...}.
No proxy variable is read: this is a raw socket.
"""

from __future__ import annotations

import json
import socket
import sys

TIMEOUT = 2.0


def tcp(host: str, port: int, send: bytes) -> bytes:
    with socket.create_connection((host, port), timeout=TIMEOUT) as s:
        if send:
            s.sendall(send)
        data = b""
        while len(data) < 4096:
            piece = s.recv(4096)
            if not piece:
                break
            data += piece
        return data


def udp(host: str, port: int) -> bytes:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.settimeout(TIMEOUT)
        s.connect((host, port))
        s.send(b"probe")
        return s.recv(2048)


def _checksum(data: bytes) -> int:
    data += b"\0" * (len(data) % 2)
    total = sum(int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def icmp(host: str) -> bytes:
    """An echo request; the kernel fills in the ICMPv6 checksum, ICMPv4's is ours."""
    v6 = ":" in host
    family, proto = (socket.AF_INET6, socket.IPPROTO_ICMPV6) if v6 else (socket.AF_INET, socket.IPPROTO_ICMP)
    request_type, reply_type = (128, 129) if v6 else (8, 0)
    body = b"\x4f\x53\x00\x01oshu-probe"  # id, sequence, payload
    header = bytes([request_type, 0, 0, 0])
    packet = bytes([request_type, 0]) + (0 if v6 else _checksum(header + body)).to_bytes(2, "big") + body
    with socket.socket(family, socket.SOCK_RAW, proto) as s:
        s.settimeout(TIMEOUT)
        s.sendto(packet, (host, 0))
        while True:
            data = s.recv(2048)
            msg = data if v6 else data[(data[0] & 0x0F) * 4 :]  # IPv4 raw sockets include the IP header
            if msg[0] == reply_type and msg[4:6] == body[:2]:
                return b"echo reply"


def main() -> int:
    kind, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    try:
        if kind == "tcp":
            data = tcp(host, port, sys.argv[4].encode() if len(sys.argv) > 4 else b"")
        else:
            data = udp(host, port) if kind == "udp" else icmp(host)
    except OSError as e:
        print(json.dumps({"ok": False, "error": f"{type(e).__name__}: {e}"}))
        return 1
    ok = bool(data)
    print(json.dumps({"ok": ok, "data": data.decode("latin-1"), **({} if ok else {"error": "closed without data"})}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
