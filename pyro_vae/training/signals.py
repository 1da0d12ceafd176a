"""SIGINT and SIGTERM as a request to stop after the current step."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading


class StopRequest:
    """Set by the first SIGINT or SIGTERM: finish the current step, save, stop."""

    requested = False


@contextlib.contextmanager
def stop_on_signals(enabled: bool = True):
    """Turn SIGINT and SIGTERM into a :class:`StopRequest`; a second SIGINT quits at once
    (every file is written atomically, so the last checkpoint stays whole). Signal handlers can
    only be set from the main thread; elsewhere nothing changes."""
    stop = StopRequest()
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def request(signum, frame):
        stop.requested = True
        signal.signal(signal.SIGINT, signal.default_int_handler)
        sys.stderr.write("\nstopping after this step and saving the run; "
                         "press Ctrl-C again to quit at once\n")

    # A process started with SIGINT ignored (nohup, background jobs) keeps ignoring it.
    watched = [sig for sig in (signal.SIGINT, signal.SIGTERM)
               if signal.getsignal(sig) is not signal.SIG_IGN]
    previous = {sig: signal.signal(sig, request) for sig in watched}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
