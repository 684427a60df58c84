"""The steps each attempt of the one client goes through (``client.py``).

Each cross-cutting concern of the request path is one small class, as
Dramatiq gives each of its middleware one class with hooks before and after
a message: :class:`~.credentials.Credentials`, :class:`~.pacing.Pace`,
:class:`~.quota.DailyQuota`, :class:`~.inflight.InFlightMark`,
:class:`~.canary.CanaryTurn`, :class:`~.readback.ReadBack` and
:class:`~.reachability.Reachability`. The client calls them at fixed points
of an attempt, in that order; what one request carries from step to step is
a value (:class:`~.context.RequestContext` per batch, the frozen
:class:`~bulkmdm.retry.RetryState` per request), never a ``ContextVar``.
"""
