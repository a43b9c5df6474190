"""A JSON-lines peer that calls tools through the kernel while it serves a call: for payload
{"mode": "call", "tool": T, "input": I} it writes a tool.call request, reads the answer and
returns it; the other modes write the malformed requests a hostile program would."""
import json
import sys


def send(frame):
    sys.stdout.write(json.dumps(frame) + "\n")
    sys.stdout.flush()


def ask(request):
    send(request)
    return json.loads(sys.stdin.readline())


def tool_call(cid, tool, input):
    return {"method": "tool.call", "id": cid, "payload": {"tool": tool, "input": input}}


while True:
    line = sys.stdin.readline()
    if not line:
        break
    frame = json.loads(line)
    payload = frame.get("payload") or {}
    mode = payload.get("mode")
    answers = []
    if mode == "call":
        answers.append(ask(tool_call(1, payload["tool"], payload.get("input"))))
    elif mode == "unknown_field":
        request = tool_call(1, payload["tool"], payload.get("input"))
        request["token"] = "someone-else"
        answers.append(ask(request))
    elif mode == "unknown_payload_field":
        request = tool_call(1, payload["tool"], payload.get("input"))
        request["payload"]["chain"] = "another"
        answers.append(ask(request))
    elif mode == "reused_id":
        answers.append(ask(tool_call(7, payload["tool"], payload.get("input"))))
        answers.append(ask(tool_call(7, payload["tool"], payload.get("input"))))
    elif mode == "show_text":
        # Test builds of the worker only: asks it to send the agent's show_text kernel call.
        answers.append(ask({"method": "test.show_text", "id": 1,
                            "payload": {"text": payload.get("text", "")}}))
    elif mode == "flood":
        for i in range(payload.get("count", 100)):
            answers.append(ask(tool_call(i, payload["tool"], payload.get("input"))))
    send({"id": frame["id"], "payload": {"answers": answers}, "version": 1})
