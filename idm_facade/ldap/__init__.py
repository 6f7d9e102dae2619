"""The LDAP v3 front end: listeners (``server``), one connection's conversation
(``protocol``), what a search answers (``search``), the DIT and attribute mapping (``dit``),
LDAP filters into the directory's filter tree (``filters``), BER encoding (``ber``),
controls, and TLS."""
