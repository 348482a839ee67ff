"""RFC 5322 messages, pure: no database, no sockets, standard library only.

:mod:`~pop3d.message.normalize` turns stored bytes into the exact octets RETR and TOP send (CRLF
line ends, Bcc removed); :mod:`~pop3d.message.render` renders a message stored as columns;
:mod:`~pop3d.message.headers` sanitises, encodes and folds its header fields;
:mod:`~pop3d.message.parse` reads the columns out of an incoming message for ``deliver``.
The store (:mod:`pop3d.store`) feeds these from PostgreSQL.
"""
