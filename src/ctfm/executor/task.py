"""``ctfm _task JOB I``: run array task ``I`` of a job folder and report how it ended.

Slurm stops a task (time limit, ``scancel``, preemption) with SIGTERM before SIGKILL; the task turns it into
an exception so its report says so and the runners' ``finally`` blocks close their shards. Whatever the task
finished is already in its shard; a rerun or Slurm's requeue does the rest.
"""

from __future__ import annotations

import os
import signal
import time
import traceback
from pathlib import Path
from typing import Any

from ctfm.executor.jobs import JobDir


class Terminated(BaseException):
    """SIGTERM from Slurm; a BaseException so no per-case handler takes it for a case's failure."""


def _on_term(signum: int, frame: Any) -> None:
    raise Terminated()


def run_task(path: Path, index: int) -> int:
    """Run the task, writing its report before (running) and after; returns its exit status."""
    job = JobDir(path)
    slurm_id = f"{os.environ.get('SLURM_ARRAY_JOB_ID', '')}_{index}"
    attempt = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
    started = time.time()
    previous = signal.getsignal(signal.SIGTERM)
    state, reason, result = "failed", "", {}
    try:
        # Unpickling the call imports its modules. SIGTERM becomes ours only after that: an exception raised by
        # a handler inside an import's callback is swallowed ("Exception ignored"), and the task would go on.
        call = job.load_call(index)
        signal.signal(signal.SIGTERM, _on_term)
        job.write_report(index, state="running", job_id=slurm_id, attempt=attempt, started=started)
        result = call.fn(**call.kwargs)
        state = "done" if int(result.get("rc", 0)) == 0 else "incomplete"
        reason = str(result.get("reason", ""))
    except Terminated:
        reason = "stopped by Slurm (SIGTERM: time limit, scancel or preemption); rerun to finish it"
    except Exception as exc:  # the report and the log say what happened; the job's other tasks go on
        traceback.print_exc()
        reason = f"{type(exc).__name__}: {exc}"
    finally:
        signal.signal(signal.SIGTERM, previous)
        job.write_report(
            index, state=state, job_id=slurm_id, attempt=attempt, started=started, reason=reason, result=result,
            seconds=round(time.time() - started, 3),
        )  # fmt: skip
    print(f"ctfm task {index}: {state}" + (f" ({reason})" if reason else ""), flush=True)
    return {"done": 0, "incomplete": 1}.get(state, 2)
