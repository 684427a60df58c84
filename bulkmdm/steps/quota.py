"""The day's quota: each attempt counted against a vendor's daily API calls
(``quota.py``'s :class:`~bulkmdm.quota.DayQuota`) as it goes out, not while
it queues for a slot; it holds, or stops the run, while the day's calls are
spent. Token requests are the token server's, not the MDM's: not counted."""

from __future__ import annotations

from collections.abc import Callable

from ..quota import DayQuota


class DailyQuota:
    """One call per attempt against ``quota`` (None: the vendor has no daily quota)."""

    def __init__(self, quota: DayQuota | None = None) -> None:
        self.quota = quota

    def counts(self, *, credential: bool) -> bool:
        """Whether this attempt is counted (the client asks first: most runs count nothing)."""
        return self.quota is not None and not credential

    def take_now(self) -> bool:
        """Count this attempt when the day's calls are not spent (no await:
        most attempts); False: :meth:`take` holds or raises."""
        return self.quota is None or self.quota.take_now()

    async def take(self, stopping: Callable[[], bool]) -> bool:
        """Count this attempt; False when the run stopped during a hold.
        Raises ``QuotaExhausted`` when the calls are spent and the run does not wait."""
        if self.quota is None:
            return True
        return await self.quota.take(stopping)

    def waits(self) -> bool:
        """A run that holds until the quota resets (``--wait-for-quota``)."""
        return self.quota is not None and self.quota.wait

    def refused_by_server(self) -> None:
        """The MDM says its quota is spent: the next attempt holds until it resets."""
        if self.quota is not None:
            self.quota.refused_by_server()

    def limited(self) -> bool:
        """Each call spends a day's quota: no request is sent twice to save time."""
        return self.quota is not None and self.quota.limit is not None

    def flush(self) -> None:
        if self.quota is not None:
            self.quota.flush()
