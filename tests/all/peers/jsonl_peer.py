"""A JSON-lines peer for the process_stdio bridge tests: it answers each
{method, id, payload, version} line with {id, payload, version}, and misbehaves on request
(payload {"mode": ...}) the way a hostile program would."""
import json
import os
import sys
import time

for line in sys.stdin:
    frame = json.loads(line)
    payload = frame.get("payload")
    mode = payload.get("mode") if isinstance(payload, dict) else None
    out = sys.stdout
    if mode == "flood":
        chunk = "noise " * 10000 + "\n"
        while True:
            out.write(chunk)
    elif mode == "big_line":
        chunk = "x" * (1 << 20)
        for _ in range(100):
            out.write(chunk)
        out.write("\n")
        out.flush()
    elif mode == "wrong_id":
        out.write(json.dumps({"id": "999", "payload": {}, "version": 1}) + "\n")
        out.flush()
    elif mode == "silent":
        time.sleep(3600)
    elif mode == "exit":
        sys.stderr.write("giving up mid-call\n")
        sys.stderr.flush()
        os._exit(3)
    elif mode == "fds":
        fds = {}
        for fd in os.listdir("/proc/self/fd"):
            try:
                fds[fd] = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                pass
        out.write(json.dumps({"id": frame["id"], "payload": {"fds": fds}, "version": 1}) + "\n")
        out.flush()
    elif mode == "read":
        try:
            with open(payload["path"], "rb") as f:
                answer = {"read": len(f.read())}
        except OSError as e:
            answer = {"error": e.strerror}
        out.write(json.dumps({"id": frame["id"], "payload": answer, "version": 1}) + "\n")
        out.flush()
    elif mode == "error":
        out.write(json.dumps({"id": frame["id"], "error": {"message": "refused by the tool"}}) + "\n")
        out.flush()
    else:
        if mode == "log":
            sys.stderr.write("a line on stderr\n")
            sys.stderr.flush()
        answer = {"echo": payload, "pid": os.getpid()}
        out.write(json.dumps({"id": frame["id"], "payload": answer, "version": 1}) + "\n")
        out.flush()
