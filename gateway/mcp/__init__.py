"""The MCP server: the tools, resources and prompt that `build_server` registers, each
group in its own module, over the application service."""
