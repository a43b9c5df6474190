"""An MCP server (stdio, one JSON-RPC message per line) for the tests of loading many plugins.

Usage: scale_peer.py ROLE DIR NAME TOOLS
  mark: writes DIR/started-NAME when it starts, then serves.
  gate: answers `initialize` only once DIR holds two `started-` files (what two other
        servers write as they start), or exits 1 after 20 s without them.
  exit: exits 3 at once (a server that cannot start).
  slow: answers `initialize` only after 4 s (a load still under way when its reload ends).
  stall: never answers `initialize` (a load that stalls until its deadline).
It lists TOOLS tools (tool_0 ...), each with a one-property input schema."""
import json
import os
import sys
import time

role, where, name, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
if role == "exit":
    sys.exit(3)
if role == "mark":
    with open(os.path.join(where, "started-" + name), "w") as f:
        f.write("started")
tools = [{"name": f"tool_{i}", "description": f"Tool {i} of {name}.",
          "inputSchema": {"type": "object", "properties": {"n": {"type": "integer"}}}}
         for i in range(count)]
for line in sys.stdin:
    msg = json.loads(line)
    if "id" not in msg:
        continue
    method = msg.get("method")
    if method == "initialize":
        if role == "gate":
            waited = 0.0
            while sum(1 for f in os.listdir(where) if f.startswith("started-")) < 2:
                if waited > 20:
                    sys.exit(1)
                time.sleep(0.05)
                waited += 0.05
        if role == "slow":
            time.sleep(4)
        if role == "stall":
            time.sleep(3600)
        result = {"protocolVersion": "2025-06-18", "capabilities": {"tools": {}},
                  "serverInfo": {"name": name, "version": "1"}}
    elif method == "tools/list":
        result = {"tools": tools}
    else:
        result = {"content": [{"type": "text", "text": "ok"}]}
    sys.stdout.write(json.dumps({"jsonrpc": "2.0", "id": msg["id"], "result": result}) + "\n")
    sys.stdout.flush()
