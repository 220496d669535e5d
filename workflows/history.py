"""When a long-running workflow continues as new, so its history stays bounded at any input size."""

from __future__ import annotations

from temporalio import workflow

# Well before Temporal's 10k-event warning (and its 50k-event limit), leaving room for what is still in flight.
HISTORY_ROLLOVER = 5_000


def should_roll_over(limit: int = HISTORY_ROLLOVER) -> bool:
    """True when the server suggests continuing as new, or the history has grown past ``limit`` events.

    The caller continues as new at its next point where nothing is in flight, carrying only counts.
    """
    info = workflow.info()
    return info.is_continue_as_new_suggested() or info.get_current_history_length() > limit
