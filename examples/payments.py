"""Tools for the example payment programs: deterministic stand-ins for a payment provider.

Every return value is derived from the inputs only (no randomness, no clock), so two runs of the
same program with the same context produce the same trace hashes. Sync and async tools are mixed
on purpose: the VM calls both the same way.
"""

from __future__ import annotations

import hashlib
from typing import Any

from kernel import PENDING


def _ref(prefix: str, *parts: object) -> str:
    """A stable id such as `res-3f2a9c1b` derived from the inputs."""
    digest = hashlib.sha256("|".join(str(p) for p in parts).encode()).hexdigest()
    return f"{prefix}-{digest[:8]}"


def reserve_funds(order_id: str, amount: int | float) -> dict[str, Any]:
    if amount <= 0:
        raise ValueError(f"cannot reserve a non-positive amount ({amount}) for order {order_id}")
    return {"reservation_id": _ref("res", order_id, amount), "order_id": order_id, "amount": amount}


async def initiate_payment(order_id: str, amount: int | float) -> str:
    """Ask the provider to charge; the outcome arrives later as a webhook, so suspend the run.

    On resume the webhook event (e.g. {"status": "succeeded"}) becomes this step's output.
    """
    return PENDING


async def capture_payment(order_id: str, status: str) -> dict[str, Any]:
    captured = status == "succeeded"
    return {
        "capture_id": _ref("cap", order_id, status),
        "order_id": order_id,
        "captured": captured,
    }


def send_receipt(order_id: str) -> dict[str, Any]:
    return {"receipt_id": _ref("rcpt", order_id), "order_id": order_id, "sent": True}


async def issue_refund(order_id: str, amount: int | float) -> dict[str, Any]:
    return {"refund_id": _ref("ref", order_id, amount), "order_id": order_id, "amount": amount}


def send_rejection(order_id: str) -> dict[str, Any]:
    return {"rejection_id": _ref("rej", order_id), "order_id": order_id, "sent": True}


def flag_for_review(order_id: str) -> dict[str, Any]:
    return {"review_id": _ref("rev", order_id), "order_id": order_id, "queue": "manual-review"}


TOOLS = {
    "reserve_funds": reserve_funds,
    "initiate_payment": initiate_payment,
    "capture_payment": capture_payment,
    "send_receipt": send_receipt,
    "issue_refund": issue_refund,
    "send_rejection": send_rejection,
    "flag_for_review": flag_for_review,
}
