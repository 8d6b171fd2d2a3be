"""Stopping a study's driver cleanly on SIGTERM and SIGHUP (``docker stop``, ``kill``, Slurm, Kubernetes, a closed
terminal), as on Ctrl-C: the signal raises KeyboardInterrupt in the main thread, the phase running stops where its
trials last checkpointed, the study stays resumable, and the command exits with 128 + the signal's number (143 for
SIGTERM); ``received`` tells which signal it was (Ray and Tune may re-raise the interrupt as a new one).

``ray.init`` installs its own SIGTERM handler (abseil's, which dumps stacks and aborts with exit code 134), so a
driver calls ``stop_on_termination`` again once Ray is up.
"""

from __future__ import annotations

import signal

STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)
_received: signal.Signals | None = None


def stop_on_termination() -> None:
    """From now on SIGTERM and SIGHUP raise KeyboardInterrupt in this process's main thread."""
    for number in STOP_SIGNALS:
        signal.signal(number, _stop)


def received() -> signal.Signals | None:
    """The stop signal that interrupted this process, if one did."""
    return _received


def _stop(signum: int, frame) -> None:
    global _received
    _received = signal.Signals(signum)
    for number in STOP_SIGNALS:  # a second signal must not interrupt the stop itself
        signal.signal(number, signal.SIG_IGN)
    raise KeyboardInterrupt(_received.name)
