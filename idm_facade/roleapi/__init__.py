"""The role-lookup front end: "which roles does this account hold, and why", in our own JSON
and in OS2rollekatalog's shapes (``api``), with the OIOBPP privilege list for KOMBIT SAML
(``oiobpp``)."""
