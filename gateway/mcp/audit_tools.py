"""The MCP tools for auditors and data-protection officers: query_envelopes, get_proof,
get_consistency_proof, verify_ledger, erase_subject.

No `from __future__ import annotations` here: the SDK evaluates the tools' annotations.
"""

from typing import Annotated, Any

from mcp.server.mcpserver import Context, MCPServer
from pydantic import Field

from gateway.application.service import LedgerflowService
from gateway.mcp.arguments import DESTROY, READ, Cursor, Limit, Since, Until
from gateway.mcp.calls import PrincipalResolver, registrar, tool_call
from gateway.mcp.models import (
    ConsistencyBundle,
    EnvelopePage,
    ErasureResult,
    ProofBundle,
    VerifyResult,
)
from governance import EnvelopeKind


def register(server: MCPServer[Any], service: LedgerflowService, who: PrincipalResolver) -> None:
    tool = registrar(server)

    @tool("Query the ledger", READ)
    async def query_envelopes(
        ctx: Context[Any, Any],
        execution_id: Annotated[str | None, Field(description="A trace id")] = None,
        kind: EnvelopeKind | None = None,
        policy_hash: str | None = None,
        since: Since = None,
        until: Until = None,
        limit: Limit = 100,
        cursor: Cursor = None,
    ) -> EnvelopePage:
        """Ledger envelopes in seq order (the audit records of runs, accesses and erasures)."""
        page = await tool_call(
            service.query_envelopes(
                who(ctx),
                execution_id=execution_id,
                kind=kind,
                policy_hash=policy_hash,
                since=since,
                until=until,
                limit=limit,
                cursor=cursor,
            )
        )
        return EnvelopePage(envelopes=page.items, next_cursor=page.next_cursor)

    @tool("Prove an envelope", READ)
    async def get_proof(
        seq: Annotated[int, Field(ge=0, description="The envelope's seq")],
        ctx: Context[Any, Any],
        since_size: Annotated[
            int | None,
            Field(ge=1, description="Also prove the log extends your checkpoint of this size"),
        ] = None,
    ) -> ProofBundle:
        """A self-contained proof that an envelope is in the signed ledger."""
        bundle = await tool_call(service.get_proof(who(ctx), seq, since_size))
        return ProofBundle.model_validate(bundle)

    @tool("Prove the ledger only grew", READ)
    async def get_consistency_proof(
        old_size: Annotated[
            int, Field(ge=1, description="The tree size of a signed checkpoint you hold")
        ],
        ctx: Context[Any, Any],
    ) -> ConsistencyBundle:
        """The ledger's latest signed checkpoint and a Merkle consistency proof from a checkpoint
        of old_size envelopes: check it offline against the note you hold with `ledgerflow
        verify-consistency --old NOTE --bundle FILE --key KEY` (rollbacks and forks show)."""
        bundle = await tool_call(service.get_consistency_proof(who(ctx), old_size))
        return ConsistencyBundle.model_validate(bundle)

    @tool("Audit the ledger", READ)
    async def verify_ledger(
        ctx: Context[Any, Any],
        verifier_keys: Annotated[
            list[str] | None, Field(description="Keys you trust (default: this ledger's own)")
        ] = None,
    ) -> VerifyResult:
        """Check the hash chain, every envelope, the erasure rule and every signed checkpoint."""
        report = await tool_call(service.verify_ledger(who(ctx), verifier_keys))
        return VerifyResult(
            ok=report.ok,
            entries_checked=report.entries_checked,
            checkpoints_checked=report.checkpoints_checked,
            first_bad_seq=report.first_bad_seq,
            bad_checkpoint=report.bad_checkpoint,
            reason=report.reason,
            keys=report.keys,
            verifier_keys=service.verifier_keys,
        )

    @tool("Erase a data subject", DESTROY)
    async def erase_subject(
        subject: Annotated[str, Field(min_length=1, description="The data subject's id")],
        reason: Annotated[str, Field(min_length=1, description="e.g. the GDPR request")],
        ctx: Context[Any, Any],
    ) -> ErasureResult:
        """Crypto-shred a subject's secrets (GDPR art. 17). Traces show them as
        [REDACTED_TOMBSTONE] from now on; the ledger still verifies."""
        receipt = await tool_call(service.erase_subject(who(ctx), subject, reason))
        return ErasureResult(
            request_id=receipt.request_id,
            subject_hash=receipt.subject_hash,
            refs_erased=list(receipt.ref_ids),
            erased_at=receipt.erased_at,
        )
