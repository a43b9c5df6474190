# The platform SDK's side of the channel worker's Feishu cross-check (lark-oapi, pinned in
# scripts/install-mcp-servers). Reads a JSON array of requests on stdin and prints, as its
# last line, the JSON array of their answers (the SDK may log to stdout before it).
#   {"mode": "verify", "encrypt_key", "token", "body", "timestamp", "nonce", "signature"}:
#     lark-oapi's EventDispatcherHandler judges the request: {"status", "body", "text", "event_id"}.
#   {"mode": "make", "encrypt_key", "event", "timestamp", "nonce"}:
#     encrypts (with the SDK's cipher library) and signs `event` as the platform does:
#     {"body", "signature"}.
import base64, hashlib, json, os, sys

import lark_oapi as lark
from lark_oapi.core.model import RawRequest
from Crypto.Cipher import AES


def verify(req):
    seen = {}

    def on_message(data):
        seen["text"] = json.loads(data.event.message.content)["text"]
        seen["event_id"] = data.header.event_id

    handler = (lark.EventDispatcherHandler.builder(req["encrypt_key"], req["token"])
               .register_p2_im_message_receive_v1(on_message).build())
    raw = RawRequest()
    raw.uri = "/events"
    raw.body = req["body"].encode()
    raw.headers = {"X-Lark-Request-Timestamp": req["timestamp"],
                   "X-Lark-Request-Nonce": req["nonce"],
                   "X-Lark-Signature": req["signature"]}
    resp = handler.do(raw)
    return {"status": resp.status_code, "body": resp.content.decode(),
            "text": seen.get("text"), "event_id": seen.get("event_id")}


def make(req):
    key = hashlib.sha256(req["encrypt_key"].encode()).digest()
    iv = os.urandom(16)
    plain = json.dumps(req["event"]).encode()
    pad = 16 - len(plain) % 16
    enc = iv + AES.new(key, AES.MODE_CBC, iv).encrypt(plain + bytes([pad]) * pad)
    body = json.dumps({"encrypt": base64.b64encode(enc).decode()})
    sig = hashlib.sha256((req["timestamp"] + req["nonce"] + req["encrypt_key"]).encode()
                         + body.encode()).hexdigest()
    return {"body": body, "signature": sig}


answers = [verify(r) if r["mode"] == "verify" else make(r) for r in json.load(sys.stdin)]
print(json.dumps(answers))
