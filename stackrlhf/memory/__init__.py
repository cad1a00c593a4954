"""Peak memory measured on any device (CPU included) by following tensor storages: `MemoryTracker`."""

from stackrlhf.memory.tracker import BASELINE_PHASE, MemoryTracker, PhaseStats, StorageRecord, storage_bytes

__all__ = ["BASELINE_PHASE", "MemoryTracker", "PhaseStats", "StorageRecord", "storage_bytes"]
