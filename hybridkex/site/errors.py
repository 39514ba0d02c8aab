"""What is wrong with a site: one error type for every module of the package."""

from __future__ import annotations

from hybridkex.errors import InvalidParameter

__all__ = ["SiteError"]


class SiteError(InvalidParameter):
    """A site directory is missing, incomplete, malformed, or would be overwritten."""
