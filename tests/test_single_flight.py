"""SingleFlight: concurrent calls for one key run the work once and share its result or its error; other keys
are not held up; nothing is kept once the run ends."""

import threading
import time

import pytest

from backend.core.single_flight import SingleFlight


def run_together(flight: SingleFlight, key: str, work, n: int = 4) -> list:
    outcomes: list = []

    def call() -> None:
        try:
            outcomes.append(flight.run(key, work))
        except Exception as exc:  # noqa: BLE001 - recorded for the assertions
            outcomes.append(exc)

    threads = [threading.Thread(target=call) for _ in range(n)]
    for thread in threads:
        thread.start()
    time.sleep(0.05)
    assert flight.run("other", lambda: "free") == "free"  # another key does not wait for the busy one
    for thread in threads:
        thread.join(5)
    return outcomes


def test_concurrent_calls_share_one_run_and_its_result():
    flight, runs = SingleFlight(), []

    def work() -> str:
        runs.append(1)
        time.sleep(0.3)
        return "bytes"

    assert run_together(flight, "url", work) == ["bytes"] * 4
    assert len(runs) == 1 and len(flight) == 0


def test_concurrent_calls_share_one_error_and_the_next_call_runs_again():
    """A slow URL that fails answers every waiting request at its one deadline, not one deadline per request."""
    flight, runs = SingleFlight(), []

    def work() -> str:
        runs.append(1)
        time.sleep(0.3)
        raise TimeoutError("no answer within DOWNLOAD_TIMEOUT")

    started = time.monotonic()
    outcomes = run_together(flight, "url", work)
    assert len(runs) == 1 and time.monotonic() - started < 0.3 * 2
    assert all(isinstance(outcome, TimeoutError) for outcome in outcomes) and len(outcomes) == 4
    assert len(flight) == 0
    with pytest.raises(TimeoutError):
        flight.run("url", work)
    assert len(runs) == 2
