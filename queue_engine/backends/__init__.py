"""Storage backends; each implements :class:`queue_engine.manager.QueueManager`."""
