"""The converter's own error type."""
from __future__ import annotations


class ConvertError(ValueError):
    """A conversion that cannot proceed: bad options, bad input data, an output directory in the way,
    not enough disk. The message is one line naming the file and tensor concerned and what to do."""
