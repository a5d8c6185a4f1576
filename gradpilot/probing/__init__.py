"""The probe: a measured verdict on a run's learning rate — short branches from its checkpoint at ×⅓, ×1 and
×3 its LR, each scored on validation after a cooldown."""

from gradpilot.probing.measure import ProbeResult, live_task, probe, probe_live

__all__ = ["ProbeResult", "live_task", "probe", "probe_live"]
