"""Administration commands: database migrations, users, API keys and delivery.

Output contract, for scripts: results go to stdout (an id, a table, or, for ``key create``,
the key alone on one line); everything else goes to stderr.  Changes that must end logins
(``user disable``, ``user alias``, ``key revoke``, ``key scopes``) take effect at the next login on
every host: the commands bump the user's credential generations in memcached
(:mod:`pop3d.cli.security`).  Errors are one line on stderr
and a sysexits(3) code:

    64 bad argument (address, scope)      65 conflict or bad message data
    66 no such API key                    67 no such user
    70 database error                     75 database unavailable (try again)
    78 configuration error

``deliver`` is run by an MTA (Postfix pipe(8), say) and also answers 75 for database errors
and anything unexpected: deferring keeps the message in the MTA's queue, bouncing would lose
it over a fault the operator can fix.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from datetime import datetime
from typing import BinaryIO

import click

from pop3d.auth import NewKey, generate_key
from pop3d.cli.base import config_option, fail, load_config, main
from pop3d.cli.security import forget_cached_logins
from pop3d.cli.sysexits import EX_DATAERR, EX_NOINPUT, EX_NOUSER, EX_SOFTWARE, EX_TEMPFAIL, EX_USAGE
from pop3d.config import Config
from pop3d.errors import (
    BadMessage,
    NoSuchUser,
    Pop3dError,
    StorePermanentError,
    StoreUnavailable,
)
from pop3d.store import (
    Accounts,
    AddressTaken,
    Database,
    DbSettings,
    InvalidAddress,
    NoSuchKey,
    PrefixTaken,
    deliver,
    migrate,
)

_SCOPE = re.compile(r"^[a-z0-9][a-z0-9:._-]{0,63}$")
_KEY_ATTEMPTS = 3  # prefix collisions are ~1 in 10^15; three tries means a broken RNG

_EXIT_CODES: tuple[tuple[type[Pop3dError], int, str], ...] = (
    (NoSuchUser, EX_NOUSER, ""),
    (NoSuchKey, EX_NOINPUT, ""),
    (InvalidAddress, EX_USAGE, ""),
    (AddressTaken, EX_DATAERR, ""),
    (BadMessage, EX_DATAERR, "bad message: "),
    (StoreUnavailable, EX_TEMPFAIL, "database unavailable: "),
    (StorePermanentError, EX_SOFTWARE, "database error: "),
)


@contextlib.contextmanager
def _reported(permanent: int = EX_SOFTWARE) -> Iterator[None]:
    """Turn every error into one line on stderr and its exit code.

    ``permanent`` replaces EX_SOFTWARE (database errors and bugs) where deferring is safer.
    """
    try:
        yield
    except Pop3dError as exc:
        code, prefix = next(((code, prefix) for kind, code, prefix in _EXIT_CODES
                             if isinstance(exc, kind)), (EX_SOFTWARE, ""))
        fail(f"{prefix}{exc}", permanent if code == EX_SOFTWARE else code)
    except Exception as exc:
        fail(f"internal error: {type(exc).__name__}: {exc}", permanent)


def _database(config: Config, *, purpose: str, statement_timeout: float | None = None) -> Database:
    db = config.database
    return Database(DbSettings(
        dsn=db.dsn, connect_timeout=db.connect_timeout,
        statement_timeout=db.statement_timeout if statement_timeout is None else statement_timeout,
        application_name=f"pop3d-{purpose}"))


def _when(moment: datetime | None) -> str:
    return "-" if moment is None else moment.strftime("%Y-%m-%dT%H:%M:%SZ")


@main.group("db")
def db_group() -> None:
    """The database schema."""


@db_group.command("migrate")
@config_option
def db_migrate(config_path: str | None) -> None:
    """Create or upgrade the schema (idempotent; safe to run twice at once)."""
    config = load_config(config_path)
    # Migrations may rebuild indexes on large tables: no statement timeout.
    database = _database(config, purpose="admin", statement_timeout=0)
    with _reported():
        applied = migrate(database)
    database.close()
    for label in applied:
        click.echo(f"applied {label}")
    if not applied:
        click.echo("schema is up to date")


@main.group("user")
def user_group() -> None:
    """Users and their verified aliases."""


@user_group.command("add")
@config_option
@click.argument("address")
@click.option("--name", default=None, help="display name")
def user_add(config_path: str | None, address: str, name: str | None) -> None:
    """Create a user with this primary address; prints the user id."""
    config = load_config(config_path)
    with _reported():
        user_id = Accounts(_database(config, purpose="admin")).add_user(address, name)
    click.echo(user_id)


@user_group.command("list")
@config_option
def user_list(config_path: str | None) -> None:
    """Users, one per line: address, status, id, display name, aliases (tab-separated)."""
    config = load_config(config_path)
    with _reported():
        users = Accounts(_database(config, purpose="admin")).list_users()
    for user in users:
        status = "active" if user.disabled_at is None else f"disabled {_when(user.disabled_at)}"
        click.echo("\t".join((user.address, status, user.user_id, user.display_name or "",
                              ",".join(user.aliases))))


@user_group.command("disable")
@config_option
@click.argument("address")
def user_disable(config_path: str | None, address: str) -> None:
    """Refuse all further logins of a user, at once (mail is still delivered)."""
    config = load_config(config_path)
    with _reported():
        accounts = Accounts(_database(config, purpose="admin"))
        changed = accounts.disable_user(address)
        names = accounts.login_names(accounts.user(address).user_id)
    forget_cached_logins(config, names)
    click.echo(f"disabled {address}" if changed else f"{address} was already disabled")


@user_group.command("alias")
@config_option
@click.argument("address")
@click.argument("alias")
def user_alias(config_path: str | None, address: str, alias: str) -> None:
    """Add a verified alias: ALIAS then logs in and receives mail as ADDRESS's user."""
    config = load_config(config_path)
    with _reported():
        Accounts(_database(config, purpose="admin")).add_alias(address, alias)
    forget_cached_logins(config, [alias.strip()])  # failures cached before it was an alias
    click.echo(f"{alias.strip()} is now an alias of {address.strip()}")


@main.group("key")
def key_group() -> None:
    """API keys (the passwords of POP3 logins)."""


@key_group.command("create")
@config_option
@click.argument("address")
@click.option("--name", required=True, help="what the key is for, e.g. 'laptop fetchmail'")
@click.option("--scope", "scopes", multiple=True, default=("pop3",), show_default=True,
              help="a scope the key carries; repeat for several")
def key_create(config_path: str | None, address: str, name: str, scopes: tuple[str, ...]) -> None:
    """Create an API key; prints the key, alone, once. Only its hash is stored."""
    config = load_config(config_path)
    _check_scopes(scopes)
    if not name.strip():
        fail("--name must not be empty", EX_USAGE)
    with _reported():
        accounts = Accounts(_database(config, purpose="admin"))
        user = accounts.user(address)
        key_id, new = _new_key(accounts, user.user_id, name.strip(),
                               list(dict.fromkeys(scopes)), config.auth.bcrypt_cost)
    click.echo(new.key)
    click.echo(f"created key {key_id} ({new.prefix}) for {user.address}; it is not shown again",
               err=True)


def _check_scopes(scopes: tuple[str, ...]) -> None:
    bad = [scope for scope in scopes if not _SCOPE.match(scope)]
    if bad:
        fail(f"invalid scope {bad[0]!r}", EX_USAGE)


def _new_key(accounts: Accounts, user_id: str, name: str, scopes: list[str],
             cost: int) -> tuple[str, NewKey]:
    for _ in range(_KEY_ATTEMPTS):
        new = generate_key(cost)
        try:
            return accounts.add_key(user_id, name, new.prefix, new.bcrypt_hash, scopes), new
        except PrefixTaken:
            continue
    raise StorePermanentError("could not find an unused key prefix")


@key_group.command("list")
@config_option
@click.argument("address")
def key_list(config_path: str | None, address: str) -> None:
    """A user's keys: id, prefix, name, scopes, created, last used, status (tab-separated)."""
    config = load_config(config_path)
    with _reported():
        keys = Accounts(_database(config, purpose="admin")).list_keys(address)
    for key in keys:
        status = "active" if key.revoked_at is None else f"revoked {_when(key.revoked_at)}"
        click.echo("\t".join((key.key_id, key.prefix or "-", key.name, ",".join(key.scopes),
                              _when(key.created_at), _when(key.last_used_at), status)))


@key_group.command("revoke")
@config_option
@click.argument("key_id")
def key_revoke(config_path: str | None, key_id: str) -> None:
    """Revoke a key, given by id or public prefix; logins with it fail at once."""
    config = load_config(config_path)
    with _reported():
        accounts = Accounts(_database(config, purpose="admin"))
        changed = accounts.revoke_key(key_id)
        names = accounts.login_names(accounts.key_owner(key_id))
    forget_cached_logins(config, names)
    click.echo(f"revoked {key_id}" if changed else f"{key_id} was already revoked")


@key_group.command("scopes")
@config_option
@click.argument("key_id")
@click.option("--scope", "scopes", multiple=True, required=True,
              help="a scope the key carries from now on; repeat for several")
def key_scopes(config_path: str | None, key_id: str, scopes: tuple[str, ...]) -> None:
    """Replace a key's scopes (given by id or public prefix); logins see them at once."""
    config = load_config(config_path)
    _check_scopes(scopes)
    with _reported():
        accounts = Accounts(_database(config, purpose="admin"))
        changed = accounts.set_scopes(key_id, list(dict.fromkeys(scopes)))
        names = accounts.login_names(accounts.key_owner(key_id))
    forget_cached_logins(config, names)
    wanted = ",".join(dict.fromkeys(scopes))
    click.echo(f"{key_id} now has scopes {wanted}" if changed
               else f"{key_id} already had scopes {wanted}")


class _SysexitsUsageError(click.UsageError):
    exit_code = EX_USAGE


class _SysexitsCommand(click.Command):
    """A command whose usage errors exit EX_USAGE (64) instead of click's 2: MTAs read the
    exit code of a delivery command as a sysexits(3) code."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as exc:
            raise _SysexitsUsageError(exc.format_message(), exc.ctx) from None


@main.command("deliver", cls=_SysexitsCommand)
@config_option
@click.option("--to", "recipients", multiple=True, required=True, metavar="ADDRESS",
              help="an envelope recipient; repeat for several")
@click.argument("message", type=click.File("rb"), default="-")
def deliver_command(config_path: str | None, recipients: tuple[str, ...],
                    message: BinaryIO) -> None:
    """Store one RFC 5322 message (FILE, or - for stdin) for its envelope recipients.

    Prints the new email id.  Exit codes for MTAs: 0 stored, 65 bad message, 67 unknown
    recipient (nothing stored), 75 try again later, 78 bad configuration.
    """
    # Delivery reads only [database]: the TLS key and the secret need not be readable by the
    # MTA's delivery user.
    config = load_config(config_path, quiet=True, check_files=False)
    with _reported(permanent=EX_TEMPFAIL):
        raw = message.read()
        email_id = deliver(_database(config, purpose="deliver"), raw, recipients)
    click.echo(email_id)
