"""pop3d: a preforking POP3 server for mail kept in PostgreSQL."""

__version__ = "0.1.0"
