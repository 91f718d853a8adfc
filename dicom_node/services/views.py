"""What the admin views share: page requests within bounds, and pages."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Generic, TypeVar

from dicom_node.core.errors import DicomNodeError

MAX_PAGE_SIZE: Final = 100
T = TypeVar("T")


class PageInvalid(DicomNodeError):
    """page must be at least 1 and page_size between 1 and 100."""

    code = "request.page_invalid"


class FilterInvalid(DicomNodeError):
    """A filter value is not valid: the route's accepted values are in the API documentation (/docs)."""

    code = "request.filter_invalid"


class NothingToChange(DicomNodeError):
    """The request names nothing to change."""

    code = "request.invalid"


class NotFound(DicomNodeError):
    """No such object."""

    code = "request.not_found"


class Conflict(DicomNodeError):
    """The object is not in a state that allows this action."""

    code = "request.conflict"


@dataclass(frozen=True, slots=True)
class PageRequest:
    page: int = 1
    page_size: int = 50

    def __post_init__(self) -> None:
        if self.page < 1 or not 1 <= self.page_size <= MAX_PAGE_SIZE or self.page > 10_000_000:
            raise PageInvalid()


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    items: Sequence[T]
    total: int
    page: int
    page_size: int
