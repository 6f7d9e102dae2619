"""Running the facade: configuration into a :class:`~idm_facade.access.facade.Facade`,
listeners (HTTP for SCIM and the role API, LDAP), forked workers, and the HTTP site that
holds each answer until its access record is committed."""
