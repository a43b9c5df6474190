"""An MCP server (stdio, one JSON-RPC message per line) for the scale bench (cold.rs): it
lists TOOLS tools with realistic names, descriptions and input schemas, PAGE to a page of
tools/list (with nextCursor), and answers each tools/call with a short text.

Usage: scale_mcp.py SERVER_NUMBER TOOLS PAGE"""
import json
import sys

VERBS = ["get", "list", "create", "update", "delete", "search", "export", "import",
         "sync", "archive", "restore", "summarize", "validate", "render", "schedule"]
NOUNS = ["issue", "invoice", "customer", "ticket", "document", "calendar_event", "repository",
         "pull_request", "dashboard", "report", "message", "contact", "order", "shipment",
         "metric", "alert", "deployment", "backup", "spreadsheet", "playlist"]
DOMAINS = ["alpha", "beta", "gamma", "delta", "omega"]


def tool(server, i):
    verb = VERBS[i % len(VERBS)]
    noun = NOUNS[(i // len(VERBS)) % len(NOUNS)]
    domain = DOMAINS[(server + i) % len(DOMAINS)]
    name = f"{verb}_{noun}_{i}"
    return {
        "name": name,
        "description": (f"{verb.capitalize()} a {noun.replace('_', ' ')} in the {domain} "
                        f"workspace of service {server}. Returns the {noun.replace('_', ' ')} "
                        f"as JSON, with its id, owner, timestamps and a link; fails when the "
                        f"caller lacks access."),
        "inputSchema": {
            "type": "object",
            "properties": {
                "id": {"type": "string", "description": f"The {noun.replace('_', ' ')}'s id."},
                "workspace": {"type": "string", "description": "The workspace, by slug.",
                              "default": domain},
                "fields": {"type": "array", "items": {"type": "string"},
                           "description": "Fields to return; all when omitted."},
                "limit": {"type": "integer", "minimum": 1, "maximum": 100, "default": 20},
                "dry_run": {"type": "boolean", "description": "Check without changing anything."},
            },
            "required": ["id"],
        },
    }


def main(server, count, page):
    tools = [tool(server, i) for i in range(count)]
    for line in sys.stdin:
        msg = json.loads(line)
        if "id" not in msg:
            continue
        method = msg.get("method")
        if method == "initialize":
            result = {"protocolVersion": "2025-06-18", "capabilities": {"tools": {}},
                      "serverInfo": {"name": f"scale-{server}", "version": "1"}}
        elif method == "tools/list":
            start = int((msg.get("params") or {}).get("cursor") or 0)
            result = {"tools": tools[start:start + page]}
            if start + page < count:
                result["nextCursor"] = str(start + page)
        else:
            result = {"content": [{"type": "text", "text": "ok"}]}
        sys.stdout.write(json.dumps({"jsonrpc": "2.0", "id": msg["id"], "result": result}) + "\n")
        sys.stdout.flush()


main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
