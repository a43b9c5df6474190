"""A JSON-lines peer for the egress tests: each {method, id, payload, version} line names one
network attempt in its payload ({"op": ...}); the answer says what happened."""
import errno
import json
import os
import socket
import sys
import urllib.error
import urllib.request


def name(e):
    return errno.errorcode.get(e.errno, str(e.errno)) if isinstance(e, OSError) and e.errno else repr(e)


def attempt(p):
    op = p.get("op")
    if op == "get":
        try:
            with urllib.request.urlopen(p["url"], timeout=p.get("timeout", 10)) as r:
                return {"status": r.status, "body": r.read().decode()}
        except urllib.error.HTTPError as e:
            return {"status": e.code, "body": e.read().decode()}
        except Exception as e:
            return {"error": repr(e)}
    if op == "env":
        return {k: os.environ.get(k) for k in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "http_proxy", "no_proxy")}
    if op == "fds":
        out = {}
        for fd in os.listdir("/proc/self/fd"):
            try:
                out[fd] = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                pass
        return {"fds": out}
    if op in ("connect", "fastopen", "mptcp"):
        host, port = p["host"], p["port"]
        try:
            if op == "connect":
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.settimeout(5)
                s.connect((host, port))
                s.sendall(b"GET / HTTP/1.0\r\n\r\n")
                data = b""
                while len(data) < 12:
                    more = s.recv(100)
                    if not more:
                        break
                    data += more
                return {"result": "ok", "got": data.decode(errors="replace")}
            if op == "fastopen":
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.sendto(b"GET / HTTP/1.0\r\n\r\n", 0x20000000, (host, port))
                return {"result": "ok"}
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM, 262)
            s.settimeout(5)
            s.connect((host, port))
            return {"result": "ok"}
        except OSError as e:
            return {"result": name(e)}
    if op == "two":
        # A tunnel held open through the proxy, then a second request while it is.
        host, port = os.environ["HTTP_PROXY"][len("http://"):].split(":")
        held = socket.create_connection((host, int(port)), timeout=10)
        held.sendall(f"CONNECT {p['target']} HTTP/1.1\r\n\r\n".encode())
        first = held.recv(100).decode(errors="replace")
        second = attempt({"op": "get", "url": p["url"]})
        held.close()
        return {"first": first, "second": second}
    if op == "bench":
        # n GETs of url, each on a new connection; the wall time of each, in µs.
        import time
        times = []
        for _ in range(p["n"]):
            t = time.perf_counter()
            with urllib.request.urlopen(p["url"], timeout=p.get("timeout", 10)) as r:
                r.read()
            times.append(int((time.perf_counter() - t) * 1e6))
        return {"us": times}
    if op == "raw_head":
        # These bytes, as they are, to the proxy; its answer.
        host, port = os.environ["HTTP_PROXY"][len("http://"):].split(":")
        s = socket.create_connection((host, int(port)), timeout=10)
        s.sendall(p["head"].encode())
        got = b""
        while True:
            try:
                more = s.recv(4096)
            except OSError:
                break
            if not more:
                break
            got += more
        return {"got": got.decode(errors="replace")}
    if op == "pipeline":
        # Two absolute-form requests on one connection to the proxy, to two destinations.
        host, port = os.environ["HTTP_PROXY"][len("http://"):].split(":")
        s = socket.create_connection((host, int(port)), timeout=10)
        s.sendall("".join(f"GET {u} HTTP/1.1\r\nHost: x\r\n\r\n" for u in p["urls"]).encode())
        got = b""
        while True:
            try:
                more = s.recv(4096)
            except OSError:
                break
            if not more:
                break
            got += more
        return {"got": got.decode(errors="replace")}
    if op == "hello":
        # A TLS ClientHello naming p["sni"] (none when null), made by Python's ssl without a
        # socket, or plain bytes (p["plain"]), sent through a CONNECT tunnel to p["target"] or
        # on its raw forward (p["via"] == "forward"); the status and whatever comes back.
        import ssl
        if p.get("plain"):
            first = b"PLAIN-BYTES\r\n\r\n"
        else:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
            tls = ctx.wrap_bio(incoming, outgoing, server_hostname=p.get("sni"))
            try:
                tls.do_handshake()
            except ssl.SSLWantReadError:
                pass
            first = outgoing.read()
        port = int(p["target"].rsplit(":", 1)[1])
        if p.get("via") == "forward":
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            status = "forward"
        else:
            host, proxy = os.environ["HTTP_PROXY"][len("http://"):].split(":")
            s = socket.create_connection((host, int(proxy)), timeout=10)
            s.sendall(f"CONNECT {p['target']} HTTP/1.1\r\n\r\n".encode())
            status = s.recv(200).split(b"\r\n")[0].decode()
        got = b""
        try:
            s.sendall(first)
            while True:
                more = s.recv(4096)
                if not more:
                    break
                got += more
        except OSError as e:
            got += f"[{name(e)}]".encode()
        return {"status": status, "got": got.decode(errors="replace")}
    return {"error": f"unknown op {op!r}"}


for line in sys.stdin:
    frame = json.loads(line)
    answer = attempt(frame.get("payload") or {})
    sys.stdout.write(json.dumps({"id": frame["id"], "payload": answer, "version": 1}) + "\n")
    sys.stdout.flush()
