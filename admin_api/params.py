"""Query parameters every list shares."""

from __future__ import annotations

from typing import Annotated

from fastapi import Query

from dicom_node.services.views import MAX_PAGE_SIZE

PageNumber = Annotated[int, Query(ge=1, le=10_000_000, description="1-based page number")]
PageSize = Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE, description=f"at most {MAX_PAGE_SIZE}")]
