"""Who is calling and what they may do: scopes, the scope each operation needs, and the
downstream tools a token may call through the gateway."""

from __future__ import annotations

import fnmatch
import getpass
import os
from dataclasses import dataclass
from enum import StrEnum


class Scope(StrEnum):
    RUN = "run"  # run, resume, cancel, save programs
    READ = "read"  # programs and traces
    AUDIT = "audit"  # envelopes, proofs, verify
    ADMIN = "admin"  # erase, delete programs, tokens
    TOOLS = "tools"  # call downstream servers' exposed tools directly (pass-through)


TOOL_SCOPES: dict[str, Scope] = {
    "run_program": Scope.RUN,
    "resume_run": Scope.RUN,
    "cancel_run": Scope.RUN,
    "save_program": Scope.RUN,
    "validate_program": Scope.READ,
    "get_trace": Scope.READ,
    "list_traces": Scope.READ,
    "get_program": Scope.READ,
    "list_programs": Scope.READ,
    "query_envelopes": Scope.AUDIT,
    "get_proof": Scope.AUDIT,
    "get_consistency_proof": Scope.AUDIT,
    "verify_ledger": Scope.AUDIT,
    "erase_subject": Scope.ADMIN,
    "delete_program": Scope.ADMIN,
}
# Every operation of the application service: the MCP tools, and what only the command line and
# a serving process's own maintenance do.
OPERATION_SCOPES: dict[str, Scope] = {
    **TOOL_SCOPES,
    "call_tool": Scope.TOOLS,  # a pass-through call of an exposed downstream tool
    "list_checkpoints": Scope.AUDIT,  # the audit console's checkpoints page
    "recover_runs": Scope.RUN,
    "fire_timers": Scope.RUN,
    "prune_runs": Scope.ADMIN,
    "witness_checkpoint": Scope.ADMIN,  # submit the latest checkpoint to the witnesses
}


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller: a token's name (never the token), its scopes, and the
    downstream tools (`SERVER.TOOL` glob patterns) it may call through the gateway; None: any
    exposed tool, as far as the `tools` scope and the policy allow."""

    name: str
    scopes: frozenset[Scope]
    tools: tuple[str, ...] | None = None

    def allows(self, scope: Scope) -> bool:
        return scope in self.scopes

    def may_call(self, tool: str) -> bool:
        """True when the token's tool allow-list (if any) matches `tool` (`SERVER.TOOL`)."""
        return self.tools is None or any(fnmatch.fnmatchcase(tool, p) for p in self.tools)

    @classmethod
    def local_operator(cls, scopes: frozenset[Scope] | None = None) -> Principal:
        """The person who started this process (command line, stdio server, a server's own
        maintenance): `local:<user>`, every scope unless narrowed. The policy applies to them
        as to anyone, and their calls are recorded under this name."""
        return cls(f"local:{_os_user()}", scopes if scopes is not None else frozenset(Scope))


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry and no $USER (some containers)
        return f"uid-{os.getuid()}"
