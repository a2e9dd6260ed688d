"""The argument types of the MCP tools and their annotations (hints for clients).

No `from __future__ import annotations` here: the SDK evaluates the tools' annotations, which
must not be strings naming things it cannot resolve.
"""

import datetime as dt
from typing import Annotated

from mcp.types import ToolAnnotations
from pydantic import Field, SkipValidation

from gateway.application.service import MAX_PAGE
from kernel import Program

# Clients get the DSL's JSON schema, but the raw object reaches Program.from_dict, whose errors
# name the step and field (pydantic's own, raised before the tool runs, would bury them).
ProgramObject = Annotated[Program, SkipValidation]
ProgramArg = Annotated[
    ProgramObject | str,
    Field(
        description="The program (a JSON object; see the write_program prompt) or the name "
        "of a saved program"
    ),
]
Name = Annotated[str, Field(min_length=1, max_length=200)]
TraceId = Annotated[str, Field(min_length=1, max_length=200, description="A run's trace id")]
Limit = Annotated[int, Field(ge=1, le=MAX_PAGE, description="Page size")]
Cursor = Annotated[
    str | None, Field(description="next_cursor of the previous page; omit for the first page")
]
Since = Annotated[dt.datetime | None, Field(description="ISO 8601 with offset; inclusive")]
Until = Annotated[dt.datetime | None, Field(description="ISO 8601 with offset; exclusive")]

READ = ToolAnnotations(read_only_hint=True, open_world_hint=False)
RUN = ToolAnnotations(read_only_hint=False, destructive_hint=False, open_world_hint=True)
WRITE = ToolAnnotations(read_only_hint=False, destructive_hint=False, open_world_hint=False)
DESTROY = ToolAnnotations(read_only_hint=False, destructive_hint=True, open_world_hint=False)
