"""Running a whole pipeline the way `trainflow run` does: checks first, then the Prefect flow."""

from __future__ import annotations

import time
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (FlowRunFilter, FlowRunFilterParentFlowRunId,
                                            TaskRunFilter, TaskRunFilterFlowRunId)
from prefect.settings import (PREFECT_FLOWS_HEARTBEAT_FREQUENCY, get_current_settings,
                              temporary_settings)

from trainflow.flows.pipeline import pipeline
from trainflow.orchestration import check_runner
from trainflow.preflight import check_data
from trainflow.spec.pipeline import PipelineSpec


def run_pipeline(spec: PipelineSpec) -> dict:
    """Check the data, then run the pipeline flow (on the server in PREFECT_API_URL, if set)."""
    check_data(spec)
    check_runner(spec)
    embedded = not get_current_settings().api.url
    updates = {}
    if embedded:
        # The embedded server lives and dies with this process, so nothing would ever read
        # crash-detection heartbeats; and joining the heartbeat thread costs up to 1 s per flow.
        updates[PREFECT_FLOWS_HEARTBEAT_FREQUENCY] = None
    with temporary_settings(updates=updates):
        state = pipeline(spec, return_state=True)
        if embedded:
            wait_until_recorded(state.state_details.flow_run_id)
        return state.result()


def wait_until_recorded(flow_run_id: UUID, timeout: float = 15.0) -> bool:
    """Wait until the server has recorded a final state for every task run of the run.

    Task-run states reach the server as events a moment after the flow returns; stopping the
    embedded server before then loses them (and prints the server's shutdown errors).
    """
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        children = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id])))
        runs = TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(
            any_=[flow_run_id, *(child.id for child in children)]))
        while time.monotonic() < deadline:
            if all(t.state and t.state.is_final() for t in client.read_task_runs(
                    task_run_filter=runs)):
                return True
            time.sleep(0.1)
    return False
