"""The Redis backend: the queue contract on a Redis server shared by many hosts.

Importing it registers :class:`~.audit.RedisAuditLog` as the audit log of ``queueType = redis``.
"""

from .audit import RedisAuditLog
from .backend import RedisQueueManager

__all__ = ["RedisAuditLog", "RedisQueueManager"]
