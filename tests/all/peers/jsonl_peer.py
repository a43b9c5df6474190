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
    elif mode == "daemonize":
        # A daemon the classic way: fork, setsid, fork again, let the middle one exit; the
        # grandchild is in its own session and process group, and an orphan.
        r, w = os.pipe()
        middle = os.fork()
        if middle == 0:
            os.close(r)
            os.setsid()
            if os.fork() == 0:
                null = os.open("/dev/null", os.O_RDWR)
                for fd in (0, 1, 2):
                    os.dup2(null, fd)
                os.write(w, str(os.getpid()).encode())
                os.close(w)
                while True:
                    time.sleep(3600)
            os._exit(0)
        os.close(w)
        daemon = int(os.read(r, 32))
        os.close(r)
        os.waitpid(middle, 0)
        answer = {"daemon": daemon, "sid": os.getsid(daemon), "own_sid": os.getsid(0)}
        out.write(json.dumps({"id": frame["id"], "payload": answer, "version": 1}) + "\n")
        out.flush()
    elif mode == "alive":
        try:
            with open(f"/proc/{payload['pid']}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
            answer = {"alive": state not in ("Z", "X")}
        except OSError:
            answer = {"alive": False}
        out.write(json.dumps({"id": frame["id"], "payload": answer, "version": 1}) + "\n")
        out.flush()
    elif mode == "peek":
        # What of the worker (its parent) and of itself the program can open.
        answer = {}
        # Its descriptors: the list, the socket to loongd (fd 3) by name, its stderr.
        for name, look in [
            ("worker_fds", lambda: os.listdir(f"/proc/{os.getppid()}/fd")),
            ("worker_socket", lambda: os.readlink(f"/proc/{os.getppid()}/fd/3")),
            ("worker_stderr", lambda: open(f"/proc/{os.getppid()}/fd/2", "wb").close()),
        ]:
            try:
                look()
                answer[name] = "opened"
            except OSError as e:
                answer[name] = e.strerror
        for name, path in [
            ("worker_mem", f"/proc/{os.getppid()}/mem"),
            ("worker_environ", f"/proc/{os.getppid()}/environ"),
            ("own_environ", "/proc/self/environ"),
        ]:
            try:
                # Opening is what is checked (a ptrace-mode read check, at open time).
                with open(path, "rb"):
                    answer[name] = "opened"
            except OSError as e:
                answer[name] = e.strerror
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
