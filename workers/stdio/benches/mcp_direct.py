"""The direct call the MCP bench compares Loong against: the official Python `mcp` client
starts mcp-server-time over stdio and calls get_current_time, timing each call.

Usage: mcp_direct.py SERVER CALLS WARMUP; prints {"median_us", "p99_us", "n"} as JSON."""
import asyncio
import json
import sys
import time

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client


async def main(server: str, calls: int, warmup: int) -> None:
    params = StdioServerParameters(command=server, args=["--local-timezone", "UTC"])
    async with stdio_client(params) as (read, write):
        async with ClientSession(read, write) as session:
            await session.initialize()
            args = {"timezone": "UTC"}
            for _ in range(warmup):
                await session.call_tool("get_current_time", args)
            samples = []
            for _ in range(calls):
                t = time.perf_counter()
                result = await session.call_tool("get_current_time", args)
                samples.append(time.perf_counter() - t)
                assert not getattr(result, "is_error", getattr(result, "isError", False)), result
    samples.sort()
    pick = lambda p: samples[round((len(samples) - 1) * p)] * 1e6
    print(json.dumps({"median_us": pick(0.5), "p99_us": pick(0.99), "n": len(samples)}))


asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
