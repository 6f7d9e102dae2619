"""SCIM 2.0 read endpoint (RFC 7643/7644, RFC 9865 cursors) over the directory."""
