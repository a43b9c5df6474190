"""An MCP server (stdio, one JSON-RPC message per line) that lists 202 tools with 128-byte
names, so that its plugin.loaded record is far above the audit detail bound."""
import json
import sys

TOOLS = [{"name": f"t{i:03d}" + "x" * 124, "description": "padding",
          "inputSchema": {"type": "object"}} for i in range(202)]

for line in sys.stdin:
    msg = json.loads(line)
    if "id" not in msg:
        continue
    method = msg.get("method")
    if method == "initialize":
        result = {"protocolVersion": "2025-03-26", "capabilities": {"tools": {}},
                  "serverInfo": {"name": "many", "version": "1"}}
    elif method == "tools/list":
        result = {"tools": TOOLS}
    else:
        result = {"content": [{"type": "text", "text": "ok"}]}
    sys.stdout.write(json.dumps({"jsonrpc": "2.0", "id": msg["id"], "result": result}) + "\n")
    sys.stdout.flush()
