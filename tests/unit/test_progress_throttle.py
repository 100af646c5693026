"""Progress artifacts move in a few updates, not one per epoch: each update is an "artifact
updated" event in the Prefect UI's feed (issue 19, part 14)."""

import time

from prefect import flow, get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

from trainflow.logs import Progress


class Clock:
    """Seconds that pass only when the test says so."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@flow
def epochs(key: str, count: int, seconds_each: float) -> tuple[int, str]:
    """A training's progress calls: one per epoch, then the task's final 100 %."""
    clock = Clock()
    progress = Progress(key, f"training: up to {count} epochs", clock=clock)
    for epoch in range(1, count + 1):
        clock.now += seconds_each
        progress.update(epoch / count)
    progress.update(1.0)  # (the train task's, after early stopping or the last epoch)
    return progress.sent, str(progress.id)


def shown(key: str) -> list[float]:
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key]))
        )
    return [a.data for a in found]


def feed(artifact_id: str, expected: int, timeout: float = 60) -> int:
    """The artifact's "artifact updated" events in the server's event feed (the server stores
    events in batches: read until `expected` are there, then once more a little later)."""

    def count() -> int:
        with get_client(sync_client=True) as client:
            return client.read_events(
                EventFilter(
                    event=EventNameFilter(name=["prefect.artifact.updated"]),
                    resource=EventResourceFilter(id=[f"prefect.artifact.{artifact_id}"]),
                ),
                limit=50,  # (the server's most; the client's default, 100, is refused)
            ).total

    end = time.monotonic() + timeout
    while count() < expected and time.monotonic() < end:
        time.sleep(1)
    time.sleep(3)  # any later ones
    return count()


def test_a_quick_60_epoch_run_sends_a_handful_of_updates_and_ends_at_100(prefect_engine):
    sent, artifact = epochs("quick-progress", 60, 0.5)  # 30 s of training
    assert sent == 3  # at 10 s, 20 s and the end (100 %), not one per epoch
    assert feed(artifact, sent) == sent
    assert shown("quick-progress") == [100.0]


def test_a_slow_run_moves_every_5_percent_at_most(prefect_engine):
    sent, artifact = epochs("slow-progress", 60, 60.0)  # an hour: a user sees it move
    assert sent == 20  # 5 %, 10 %, ... 100 %, not 60
    assert feed(artifact, sent) == sent
    assert shown("slow-progress") == [100.0]
