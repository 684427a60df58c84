"""bulkmdm: run a spreadsheet of device-management actions against your MDM.

The public names are few on purpose; the command line is the main surface.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
