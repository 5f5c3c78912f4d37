"""The engine: torch-free bookkeeping (sequence, kv_cache, scheduler) and the torch side (batch, runner, engine)."""
