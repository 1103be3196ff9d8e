"""broker: short-lived AWS credentials from HashiCorp Vault, cached, single-flighted and ledgered.

Keep this module import-free: the cache-hit path imports the package on every AWS CLI call.
"""

__version__ = "0.1.0"
