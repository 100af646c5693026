"""Progress artifacts move in a few updates, not one per epoch: each update is an "artifact
updated" event in the Prefect UI's feed (issue 19, part 14)."""

from prefect import flow, get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

from trainflow.logs import Progress


class Clock:
    """Seconds that pass only when the test says so."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@flow
def epochs(key: str, count: int, seconds_each: float) -> int:
    """A training's progress calls: one per epoch, then the task's final 100 %."""
    clock = Clock()
    progress = Progress(key, f"training: up to {count} epochs", clock=clock)
    for epoch in range(1, count + 1):
        clock.now += seconds_each
        progress.update(epoch / count)
    progress.update(1.0)  # (the train task's, after early stopping or the last epoch)
    return progress.sent


def shown(key: str) -> list[float]:
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key]))
        )
    return [a.data for a in found]


def test_a_quick_60_epoch_run_sends_a_handful_of_updates_and_ends_at_100(prefect_engine):
    sent = epochs("quick-progress", 60, 0.5)  # 30 s of training
    assert 1 <= sent <= 4  # at 10 s, 20 s, 30 s (100 %)
    assert shown("quick-progress") == [100.0]


def test_a_slow_run_moves_every_5_percent_at_most(prefect_engine):
    sent = epochs("slow-progress", 60, 60.0)  # an hour: a user sees it move
    assert sent == 20  # 5 %, 10 %, ... 100 %, not 60
    assert shown("slow-progress") == [100.0]
