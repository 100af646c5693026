"""The report's "Where each step ran" section: runner, worker, host, device, threads."""

from __future__ import annotations

from trainflow.reporting.table import table


def placement_lines(records: list[dict] | None) -> list[str]:
    """One row per task run (as trainflow.placement recorded it), in the order they started;
    the device column shows how train.device resolved (`auto -> cpu`)."""
    if not records:
        return []
    rows = [
        [
            r["task"],
            r["state"],
            r["runner"],
            r["worker"] + (f" + {r['ranks']}" if r.get("ranks") else ""),
            r["host"],
            device(r),
            r["threads"] if r.get("threads") is not None else "-",
        ]
        for r in records
    ]
    out = [
        "",
        "## Where each step ran",
        "data steps on the CPU (a Dask worker with `runner.data`), training on train.device; "
        "a cached step names where its cache was looked up",
        "",
        table(["step", "state", "runner", "worker", "host", "device", "threads"], rows),
    ]
    augmented = sorted({r["augmentation"] for r in records if r.get("augmentation")})
    out += [f"\naugmentation: {where}" for where in augmented]
    tagged = {r["task"]: ", ".join(r["tags"]) for r in records if r.get("tags")}
    if tagged:  # `trainflow serve --max-trainings N` limits the device tag's runs at once
        out.append(
            "\ntask tags (a concurrency limit on a tag bounds its tasks across runs): "
            + "; ".join(f"{task}: {tags}" for task, tags in tagged.items())
        )
    return out


def device(record: dict) -> str:
    if record["requested"] == record["device"]:
        return record["device"]
    return f"{record['requested']} -> {record['device']}"
