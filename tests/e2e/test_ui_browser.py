"""A real browser: headless Chromium opens the Prefect UI, starts a run from the deployment's
form with changed parameters, and sees it complete with its report."""

from __future__ import annotations

import os
import re
import shutil
from uuid import uuid4

import pytest

from tests.conftest import ROOT
from trainflow.spec.pipeline import load_spec

CHROMIUM = next(
    (
        path
        for path in (
            shutil.which("chromium"),
            shutil.which("chromium-browser"),
            shutil.which("google-chrome"),
        )
        if path
    ),
    None,
)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no headless Chromium on this machine (Debian/Ubuntu: apt-get "
    "install chromium); the browser test drives the system's Chromium",
)
SPEC = load_spec(ROOT / "pipelines" / "breast_cancer_mlp.yaml")
# TRAINFLOW_UI_SCREENSHOT=1 also writes the run page into the docs
SCREENSHOT = ROOT / "docs" / "ui-run-page.png"


def submit(page, folder) -> None:
    """Submit the run form. A busy server (SQLite under load) can refuse the request with a
    toast and leave the form filled in; a user submits again, and so does this test."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    for attempt in range(3):
        page.get_by_role("button", name="Submit").click()
        try:  # on success the UI moves to the deployment's list of runs
            page.wait_for_url(
                re.compile(r".*/deployments/deployment/[^/?]+\?tab=Runs.*"), timeout=20_000
            )
            return
        except PlaywrightTimeout:
            page.screenshot(path=folder / f"submit-{attempt}.png")
    raise AssertionError(f"the run form was not accepted; screenshots in {folder}")


KNOBS = ("epochs", "lr", "batch_size", "cv_folds")  # the form's number fields, in order


def knob_input(page, knob: str):
    """The number input of a run-form knob (the form lists them in the schema's order)."""
    return page.get_by_role("spinbutton").nth(KNOBS.index(knob))


def test_a_run_started_from_the_ui_form_completes(served, prefect_server, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    name = f"ui-run-{uuid4().hex[:8]}"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(60_000)
            # two deployments share the pipeline's name (its training and its scoring): the
            # list links each to its own page; open the training one's, as a user picks the
            # row under the `trainflow` flow
            deployment = prefect_server.deployment("breast_cancer_mlp")["id"]
            page.goto(f"{prefect_server.ui}/deployments", wait_until="networkidle")
            page.locator(f"a[href='/deployments/deployment/{deployment}']").first.click()
            page.get_by_role("button", name="Run", exact=True).click()
            page.get_by_text("Custom run").click()
            page.locator("input[type=text]").first.fill(name)  # the run's name
            # typed fields showing the pipeline's own values (issue 19 part 9)
            epochs = knob_input(page, "epochs")
            expect(
                page.get_by_text(f"(train.epochs; this pipeline: {SPEC.train.epochs})")
            ).to_be_visible()
            expect(epochs).to_have_value(str(SPEC.train.epochs))
            expect(knob_input(page, "lr")).to_have_value(str(SPEC.train.lr))
            if os.environ.get("TRAINFLOW_UI_SCREENSHOT"):
                page.screenshot(path=ROOT / "docs" / "ui-run-form.png")
            epochs.fill("0")  # refused by the form before anything is submitted
            page.get_by_role("button", name="Submit").click()
            refused = page.get_by_text("Validation failed for field 'epochs'").first
            expect(refused).to_be_visible()
            assert "/runs/flow-run/" not in page.url and "tab=Runs" not in page.url
            page.screenshot(path=tmp_path / "refused.png")
            epochs.fill("3")
            knob_input(page, "cv_folds").fill("2")
            submit(page, tmp_path)
            page.get_by_role("link", name=name).first.click()  # in the deployment's runs
            page.wait_for_url("**/runs/flow-run/*")
            run_id = page.url.split("/runs/flow-run/")[1].split("?")[0]
            # the page polls the run's state every few seconds; read it once the run is over
            prefect_server.wait_final(run_id)
            page.reload(wait_until="networkidle")
            (tmp_path / "run-page.html").write_text(page.content())
            expect(page.get_by_text(name, exact=True).first).to_be_visible()
            expect(page.locator("[class*=page-heading] .state-badge")).to_have_text("Completed")
            # the Task Runs tab lists the run's tasks with their states (issue 19 part 8:
            # tasks that took a subflow's result as input were "No task runs" there)
            page.get_by_text("Task Runs", exact=True).first.click()
            expect(page.get_by_text(re.compile(r"^train-")).first).to_be_visible()
            expect(page.get_by_text(re.compile(r"^publish_report-")).first).to_be_visible()
            expect(page.get_by_text("No task runs")).to_have_count(0)
            page.screenshot(path=tmp_path / "task-runs.png")
            if os.environ.get("TRAINFLOW_UI_SCREENSHOT"):
                page.screenshot(path=ROOT / "docs" / "ui-task-runs.png")
            page.get_by_text("Parameters", exact=True).click()
            expect(page.get_by_text('"epochs": 3')).to_be_visible()
            page.get_by_text("Artifacts", exact=True).click()
            page.get_by_text("breast-cancer-mlp-report", exact=True).first.wait_for()
            page.screenshot(path=tmp_path / "run-page.png")
            if os.environ.get("TRAINFLOW_UI_SCREENSHOT"):
                SCREENSHOT.parent.mkdir(exist_ok=True)
                page.screenshot(path=SCREENSHOT)

            # the report opens with its plots drawn (inline PNGs, decoded by the browser)
            page.get_by_text("breast-cancer-mlp-report", exact=True).first.click()
            page.get_by_text("Cross-validation (2 folds, validation metrics)").wait_for()
            images = page.locator("img[src^='data:image/png']")
            expect(images).to_have_count(4)  # loss curves, confusion matrix, ROC and PR (binary)
            widths = images.evaluate_all("all => all.map(i => i.naturalWidth)")
            assert all(width > 100 for width in widths)
        finally:
            browser.close()
    run = next(
        r
        for r in prefect_server.post("/flow_runs/filter", {"flow_runs": {"name": {"any_": [name]}}})
    )
    assert run["state"]["type"] == "COMPLETED"
    assert run["parameters"] == {  # the two changed, the rest as the form showed them
        "pipeline": "breast_cancer_mlp",
        "epochs": 3,
        "cv_folds": 2,
        "lr": SPEC.train.lr,
        "batch_size": SPEC.train.batch_size,
        "overrides": [],
        "note": None,  # (a new-data trigger's note; empty from the form)
    }


def test_a_failed_run_shows_its_one_message(served, prefect_server, tmp_path):
    """A run of the deployment with a misspelt key in its overrides (as typed into the run
    form) fails before any work: its page says Failed with the one line that names the key
    and the closest one, and its logs hold that line without a traceback (issue 19 part 10)."""
    from playwright.sync_api import expect, sync_playwright

    run = prefect_server.run(
        "breast_cancer_mlp",
        {"pipeline": "breast_cancer_mlp", "overrides": ["train.optimizer.tpye=adam"]},
    )
    final = prefect_server.wait_final(run["id"])
    message = final["state"]["message"]
    assert final["state"]["type"] == "FAILED" and "\n" not in message, message
    assert "did you mean `type`?" in message, message
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(60_000)
            page.goto(f"{prefect_server.ui}/runs/flow-run/{run['id']}", wait_until="networkidle")
            expect(page.locator("[class*=page-heading] .state-badge")).to_have_text("Failed")
            page.get_by_text("Logs", exact=True).first.click()
            expect(page.get_by_text("did you mean `type`?").first).to_be_visible()
            page.screenshot(path=tmp_path / "failed-run.png")
            (tmp_path / "failed-run.html").write_text(page.content())
            expect(page.get_by_text("Traceback")).to_have_count(0)
            # one error line (the run's own), beside Prefect's "Finished in state Failed(...)"
            expect(page.locator(".log-level-label--error")).to_have_count(1)
            if os.environ.get("TRAINFLOW_UI_SCREENSHOT"):
                page.screenshot(path=ROOT / "docs" / "ui-failed-run.png")
        finally:
            browser.close()
