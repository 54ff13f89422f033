"""One network probe run by the tests as the agent's uid in the agent namespace; prints one JSON line.

    netprobe.py tcp HOST PORT [SEND]   connect, send SEND (optional), read until close (bounded)
    netprobe.py udp HOST PORT          send one datagram, wait for an answer (bounded)

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


def main() -> int:
    kind, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    try:
        data = tcp(host, port, sys.argv[4].encode() if len(sys.argv) > 4 else b"") if kind == "tcp" else udp(host, port)
    except OSError as e:
        print(json.dumps({"ok": False, "error": f"{type(e).__name__}: {e}"}))
        return 1
    ok = bool(data)
    print(json.dumps({"ok": ok, "data": data.decode("latin-1"), **({} if ok else {"error": "closed without data"})}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
