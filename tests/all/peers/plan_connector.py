"""A JSON-lines connector for the plan tests; its state directory is argv[1]. Payload modes:
- {"mode": "slow", "ms": N}: sleeps N ms and answers {"start": T0, "end": T1} (ms since the
  epoch), so a test can count the calls that overlapped;
- {"mode": "flaky", "fail": K}: counts its calls in the file `flaky` of the state directory;
  the first K exit mid-call (a transient failure: the program exited), the next answer
  {"call": n};
- {"mode": "gate", "fail": K}: the same with the file `gate`, for a breaker's test (its
  count is how many calls reached the connector)."""
import json
import os
import sys
import time

state = sys.argv[1]


def bump(name):
    path = os.path.join(state, name)
    try:
        with open(path) as f:
            n = int(f.read() or "0")
    except FileNotFoundError:
        n = 0
    n += 1
    with open(path, "w") as f:
        f.write(str(n))
    return n


def now_ms():
    return time.time() * 1000.0


for line in sys.stdin:
    frame = json.loads(line)
    payload = frame.get("payload") or {}
    mode = payload.get("mode")
    if mode == "slow":
        start = now_ms()
        time.sleep(payload.get("ms", 100) / 1000.0)
        answer = {"start": start, "end": now_ms()}
    elif mode == "flaky":
        n = bump("flaky")
        if n <= payload.get("fail", 0):
            os._exit(3)
        answer = {"call": n}
    elif mode == "gate":
        n = bump("gate")
        if n <= payload.get("fail", 0):
            os._exit(3)
        answer = {"call": n}
    else:
        answer = {"echo": payload}
    sys.stdout.write(json.dumps({"id": frame["id"], "payload": answer, "version": 1}) + "\n")
    sys.stdout.flush()
