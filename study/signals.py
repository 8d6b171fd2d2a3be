"""Stopping a study's driver cleanly on SIGTERM and SIGHUP (``docker stop``, ``kill``, Slurm, Kubernetes, a closed
terminal), as on Ctrl-C: the signal raises KeyboardInterrupt in the main thread, the phase running stops where its
trials last checkpointed, the study stays resumable, and the command exits with 128 + the signal's number (143 for
SIGTERM); ``received`` tells which signal it was (Ray and Tune may re-raise the interrupt as a new one).

``ray.init`` installs its own SIGTERM handler (abseil's, which dumps stacks and aborts with exit code 134), so a
driver calls ``stop_on_termination`` again once Ray is up.

While a phase's Tune experiment runs (``tune_stops_itself``), a stop signal (Ctrl-C's SIGINT too) does not raise
at once: it asks Tune to stop as its own SIGUSR1 does, which ends the trials and saves the experiment state one
last time. Raised at an arbitrary point, the interrupt could land between a trial's newer checkpoint replacing
its older one and Tune saving a state that names it; that trial would not resume. The phase raises once ``fit``
returns (``raise_if_stopped``). A second Ctrl-C skips Tune's stop.
"""

from __future__ import annotations

import contextlib
import logging
import signal

STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)
_received: signal.Signals | None = None
_tune_running = False
# what Tune logs when it stops on a signal: a stop selfd asked for, announced in selfd's own line
_TUNE_STOP_LINES = ("Stop signal received", "Experiment has been interrupted", "Trials did not complete")


def stop_on_termination() -> None:
    """From now on SIGTERM and SIGHUP raise KeyboardInterrupt in this process's main thread."""
    global _received
    _received = None
    for number in STOP_SIGNALS:
        signal.signal(number, _stop)


def received() -> signal.Signals | None:
    """The stop signal that interrupted this process, if one did."""
    return _received


@contextlib.contextmanager
def tune_stops_itself():
    """Within this, a stop signal asks the Tune experiment running in this thread to stop and save its state."""
    global _tune_running
    # Tune installs its SIGUSR1 stop once its experiment starts (and never takes it back): until then a stop raises
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    interrupt = signal.signal(signal.SIGINT, _stop)
    _tune_running = True
    try:
        yield
    finally:
        _tune_running = False
        signal.signal(signal.SIGINT, interrupt)


def raise_if_stopped() -> None:
    """Raise KeyboardInterrupt if a stop signal came (after a Tune experiment stopped on it)."""
    if _received is not None:
        raise KeyboardInterrupt(_received.name)


def _stop(signum: int, frame) -> None:
    global _received
    _received = signal.Signals(signum)
    for number in STOP_SIGNALS:  # a second signal must not interrupt the stop itself
        signal.signal(number, signal.SIG_IGN)
    tune_stop = signal.getsignal(signal.SIGUSR1)
    if _tune_running and callable(tune_stop):
        logging.getLogger("ray.tune.tune").addFilter(
            lambda record: not record.getMessage().startswith(_TUNE_STOP_LINES))
        tune_stop(signal.SIGUSR1, frame)
        signal.signal(signal.SIGINT, signal.default_int_handler)  # after Tune's stop, which resets it
        return
    raise KeyboardInterrupt(_received.name)
