"""The caller's scope: which layers a request may see.

Every caller gets `ServerSettings.anonymous_access` for now; Bearer keys and roles arrive
later and will change only `caller_scope`.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from layers.models import Access


async def caller_scope(request: Request) -> Access:
    """The `Access` scope of the caller of `request`."""
    return request.app.state.anonymous_access


Scope = Annotated[Access, Depends(caller_scope)]
"""Route parameter type giving the caller's scope."""
