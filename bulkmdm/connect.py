"""A provider on an MDM, with its one client: what ``run``, ``export`` and
``template`` all start from.

The client gets the provider's declared retry policy, headers and JSON
expectation; the rate controller starts at the provider's safe default and
never climbs past its documented limit (an explicit rate is its own ceiling).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from . import providers
from .errors import BulkMDMError
from .limits import Pacing, for_run
from .providers.base import Provider, Settings
from .quota import DayQuota
from .retry import RetryPolicy
from .client import Client

if TYPE_CHECKING:
    from .journal import Journal


@dataclass(frozen=True, slots=True, kw_only=True)
class Connection:
    """Which MDM, and how hard to press it."""

    provider: str
    url: str
    env: Mapping[str, str]
    partition: str | None = None
    rate: str | None = None
    concurrency: int | None = None
    timeout: float = 30.0
    batch_size: int | None = None
    dry_run: bool = False
    #: overrides of the provider's declared retry policy (tests shorten waits)
    retry: Mapping[str, object] | None = None


def retry_policy(provider_cls: type[Provider], overrides: Mapping[str, object] | None) -> RetryPolicy:
    return replace(provider_cls.retry_policy, **overrides) if overrides else provider_cls.retry_policy  # type: ignore[arg-type]


def make_client(
    target: Connection,
    provider_cls: type[Provider],
    *,
    stopping: Callable[[], bool] | None = None,
    pacing: Pacing | None = None,
    halt: Callable[[BulkMDMError], None] | None = None,
    quota: DayQuota | None = None,
) -> Client:
    """The one client of a run, set up as the vendor declares, paced by ``pacing`` (default: from the
    flags), its calls counted against the day's ``quota`` (if any)."""
    pacing = pacing or for_run(target.rate, target.concurrency, provider_cls)
    return Client(
        provider_cls.api_base(target.url),
        auth=provider_cls.auth_from_env(target.env),
        limiter=pacing.rate,
        retry=retry_policy(provider_cls, target.retry),
        timeout=target.timeout,
        connections=pacing.workers + 4,
        stopping=stopping,
        headers=provider_cls.request_headers,
        answers_json=provider_cls.answers_json,
        credential_hint=credential_hint(provider_cls, target.env),
        halt=halt,
        quota=quota,
    )


def credential_hint(provider_cls: type[Provider], env: Mapping[str, str]) -> str:
    """What to check when the MDM refuses the credentials: the variables this run read them from."""
    from .config import credential_sets

    sets = credential_sets(provider_cls.name)
    if not sets:
        return ""
    used = next((names for names in sets if any(env.get(name) for name in names)), sets[0])
    names = used[0] if len(used) == 1 else f"{', '.join(used[:-1])} and {used[-1]}"
    return f"check {names} (or what `bulkmdm login` stored for the profile)"


@asynccontextmanager
async def open_provider(target: Connection, *, stopping: Callable[[], bool] | None = None) -> AsyncIterator[Provider]:
    """The provider for ``target``, its client closed on the way out."""
    provider_cls = providers.get(target.provider)
    client = make_client(target, provider_cls, stopping=stopping)
    settings = Settings(
        url=target.url, env=target.env, partition=target.partition, batch_size=target.batch_size, dry_run=target.dry_run
    )
    async with client:
        provider = provider_cls(client, settings)
        try:
            yield provider
        finally:
            await provider.aclose()
            _count_calls(target, provider, client.requests_sent)


def todays_quota(
    journal: Journal, provider_cls: type[Provider], settings: Settings, *, on_hold: Callable[[str], None]
) -> DayQuota:
    """The day's quota of a run (or a look) spending ``settings.calls_today``
    and more: counted in the journal per organisation, across runs, since a
    vendor's daily quota is the day's, not the run's."""
    tenant = provider_cls.quota_tenant(settings.url, settings.env)
    return DayQuota(
        provider_cls.daily_limit_for(settings),
        settings.calls_today,
        wait=settings.wait_for_quota,
        vendor=provider_cls.name,
        on_hold=on_hold,
        save=lambda day, calls: journal.add_calls(tenant, calls, day=day.isoformat()),
    )


def provider_for_run(
    journal: Journal,
    target: Connection,
    provider_cls: type[Provider],
    *,
    wait_for_quota: bool,
    stopping: Callable[[], bool],
    pacing: Pacing,
    on_hold: Callable[[str], None],
    halt: Callable[[BulkMDMError], None] | None = None,
) -> tuple[Provider, Client, DayQuota]:
    """The provider of a run (or a look) at ``target``, its one client and
    the day's quota that client counts against, the calls earlier runs made
    today read from the journal (building the provider checks its settings:
    a refused one raises ConfigError before anything is sent)."""
    tenant = provider_cls.quota_tenant(target.url, target.env)
    settings = Settings(
        url=target.url,
        env=target.env,
        partition=target.partition,
        batch_size=target.batch_size,
        dry_run=target.dry_run,
        calls_today=journal.calls_today(tenant),
        wait_for_quota=wait_for_quota,
    )
    quota = todays_quota(journal, provider_cls, settings, on_hold=on_hold)
    client = make_client(target, provider_cls, stopping=stopping, pacing=pacing, halt=halt, quota=quota)
    return provider_cls(client, settings), client, quota


def _count_calls(target: Connection, provider: Provider, calls: int) -> None:
    """Add these calls (an export's, a template's look-ups) to the day's count
    of a vendor with a daily quota, as a run's are: the next run's budget
    (and its dry run's "used today") then holds them."""
    if provider.daily_limit is None or not calls:
        return
    from .errors import JournalError
    from .journal import Journal, state_dir

    # (a journal that cannot be written must not hide what the export itself met)
    with contextlib.suppress(JournalError), Journal(state_dir(None, target.env)) as journal:
        journal.add_calls(type(provider).quota_tenant(target.url, target.env), calls)
