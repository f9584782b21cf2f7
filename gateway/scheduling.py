"""APScheduler whose jobs keep a monotonic rhythm when the wall clock steps.

APScheduler 3 plans on the wall clock. When NTP first synchronises an RTC-less box, the clock can jump
by hours or years. A backward step of an hour would stop every job (the store writer too) for an hour,
and a forward step would make each job "miss" its run time. :class:`SteadyScheduler` measures the wall
clock against ``time.monotonic()`` before each planning round. When the difference moves by more than
a second (a step, not NTP's slow slewing), it shifts every job's next run time by the step, so the jobs
keep the intervals they had in monotonic time. Job functions therefore never see a step through the
scheduler; the bus loops and waits already use the monotonic clock.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler

log = logging.getLogger(__name__)

STEP_TOLERANCE_S = 1.0


class SteadyScheduler(BackgroundScheduler):
    def __init__(self, *args: Any, wall_clock: Callable[[], float] = time.time, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._wall_clock = wall_clock
        self._offset_s = wall_clock() - time.monotonic()

    def _process_jobs(self) -> float | None:
        offset_s = self._wall_clock() - time.monotonic()
        step_s = offset_s - self._offset_s
        if abs(step_s) > STEP_TOLERANCE_S:
            self._offset_s = offset_s
            for job in self.get_jobs():
                if job.next_run_time is not None:
                    job.modify(next_run_time=job.next_run_time + timedelta(seconds=step_s))
            log.warning("the wall clock stepped by %+.1f s; scheduled jobs keep their intervals", step_s)
        return super()._process_jobs()  # type: ignore[no-any-return]
