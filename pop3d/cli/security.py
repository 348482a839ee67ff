"""What the admin commands change in memcached: stale cached logins, and lockouts to lift.

Revoking a key, disabling a user, adding an alias or changing a key's scopes bumps the credential
generation of every login name of the user (:func:`forget_cached_logins`), so the next login on
any host sharing memcached is verified against the database again.  When memcached cannot be
reached the database change stands, and the command says how long cached logins may still
succeed (``auth.cache_ttl``).  ``pop3d unlock`` lifts the lockouts of an address or a user.
"""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Iterator

import click

from pop3d.adapters.memcache import SharedState
from pop3d.cli.base import config_option, fail, load_config, main
from pop3d.cli.sysexits import EX_TEMPFAIL, EX_USAGE
from pop3d.config import Config
from pop3d.errors import BackendUnavailable, NoSuchUser, StoreUnavailable
from pop3d.store import Accounts, Database, DbSettings
from pop3d.worker.backends import shared_state


@contextlib.contextmanager
def _memcached(config: Config) -> Iterator[SharedState]:
    shared = shared_state(config)
    try:
        yield shared
    finally:
        shared.close()


def forget_cached_logins(config: Config, names: list[str]) -> None:
    """New credential generations for ``names``; a warning on stderr when memcached is down."""
    with _memcached(config) as shared:
        try:
            shared.auth_cache.bump(names)
        except BackendUnavailable as exc:
            click.echo(f"warning: memcached unavailable ({exc}): logins cached before this "
                       f"change may still succeed for up to auth.cache_ttl "
                       f"({config.auth.cache_ttl} s)", err=True)


def _names_of(config: Config, name: str) -> list[str]:
    """Every login name of the user ``name`` belongs to, or ``name`` alone."""
    db = config.database
    accounts = Accounts(Database(DbSettings(dsn=db.dsn, connect_timeout=db.connect_timeout,
                                            application_name="pop3d-admin")))
    try:
        return accounts.login_names(accounts.user(name).user_id)
    except NoSuchUser:
        return [name.strip()]
    except StoreUnavailable as exc:
        click.echo(f"warning: database unavailable ({exc}): unlocking {name.strip()} only, "
                   "not the user's other addresses", err=True)
        return [name.strip()]
    finally:
        accounts.db.close()


@main.command()
@config_option
@click.option("--address", "addresses", multiple=True, metavar="IP",
              help="a client address: every login name from it (IPv6: its whole prefix)")
@click.option("--user", "users", multiple=True, metavar="ADDRESS",
              help="a user (any of their addresses): from every client address")
def unlock(config_path: str | None, addresses: tuple[str, ...], users: tuple[str, ...]) -> None:
    """Lift failed-login lockouts at once, for addresses and/or users; repeat as needed."""
    config = load_config(config_path)
    if not addresses and not users:
        fail("name at least one --address or --user", EX_USAGE)
    for address in addresses:
        try:
            ipaddress.ip_address(address)
        except ValueError:
            fail(f"--address {address!r} is not an IP address", EX_USAGE)
    names = {user: _names_of(config, user) for user in users}
    with _memcached(config) as shared:
        try:
            for address in addresses:
                key = shared.rate_limiter.unlock_address(address)
                click.echo(f"unlocked {key}: every login name, and a new verification budget")
            for user, aliases in names.items():
                shared.rate_limiter.unlock_names(aliases)
                click.echo(f"unlocked {user} ({', '.join(aliases)}) from every address")
        except BackendUnavailable as exc:
            fail(f"memcached unavailable, not everything was unlocked: {exc}", EX_TEMPFAIL)
