"""Downstream MCP servers: the tools users already run, called as governed program steps.

`config` is what users write (`[servers.NAME]`, a Claude Desktop `mcpServers` file, `--server`);
`values` resolves `${ENV}` and vault refs when connecting; `connection` keeps one session per
server alive (reconnecting with backoff); `program_tools` turns a server's tools into the
callables the VM runs as `NAME.TOOL`; `pool` holds them all.
"""
