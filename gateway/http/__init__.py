"""The HTTP gateway: the Starlette app (MCP over Streamable HTTP and SSE), bearer-token
authentication, signed webhooks and health probes."""
