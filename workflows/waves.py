"""Planning in waves (patch `planning-waves`): which pages each wave covers, and planning a parsed source in the
same waves a migration reading it would use.

A migration plans each wave as soon as its pages are parsed (workflows/migration.py); a `himig plan` and a
migration started from one have every page parsed already and run the same waves one after the other, so the
plan's batches and import jobs are the ones the migration makes (activities/plan.py says what a wave plans).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from contracts.stages import PlanResult

# Waves grow (1, 1, 2, 4, ... pages) and stop growing at the larger of MAX_WAVE_PAGES and an eighth of the
# inventory: each plan reads every page parsed so far again, and this keeps those reads within about 5x the pages
# at any size, while the last wave (the imports that cannot overlap parsing) stays an eighth of the source or less.
MAX_WAVE_PAGES = 64


def wave_end(planned: int, pages: int) -> int:
    """The end of the wave after pages [0, planned) of ``pages``: as many pages again as are planned, at least 1
    and at most the cap above. A function of its arguments alone, so a continued run resumes the same waves."""
    cap = max(MAX_WAVE_PAGES, pages // 8)
    return min(pages, planned + max(1, min(planned, cap)))


def add_plans(a: PlanResult, b: PlanResult) -> PlanResult:
    """Two waves' results as one (every field is a count)."""
    return PlanResult.model_validate({k: v + getattr(b, k) for k, v in a})


async def plan_parsed(pages: int, plan: Callable[[int, int, int], Awaitable[PlanResult]]) -> PlanResult:
    """Every wave of ``pages`` parsed pages in order: ``plan(first_page, end, first_batch)`` each; the sum."""
    total = PlanResult(batches=0, direct_batches=0, files=0, duplicates=0, conflicting_duplicates=0,
                       predicted_non_primary=0)
    end = 0
    while end < pages:
        first_page, end = end, wave_end(end, pages)
        total = add_plans(total, await plan(first_page, end, total.batches))
    return total
