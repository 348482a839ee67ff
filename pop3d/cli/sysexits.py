"""sysexits(3) codes: how the admin commands end, so an MTA can call ``pop3d deliver`` as a
delivery command (EX_TEMPFAIL defers, the others bounce) and scripts can tell failures apart."""

EX_USAGE = 64  # an argument that is not an address
EX_DATAERR = 65  # a message that cannot be stored, an address already taken
EX_NOINPUT = 66  # no API key with that id or prefix
EX_NOUSER = 67  # no such user
EX_SOFTWARE = 70  # a database error or a bug
EX_TEMPFAIL = 75  # the database is unavailable: try again later
EX_CONFIG = 78  # the configuration file is unusable
