"""The Dagster UI in a real browser (Debian's chromium, headless, through chromedriver):
the asset graph tells the pipeline's story, a run's page shows it succeeded, and the follow-up
asset plots its numbers over runs. Screenshots go to SCREENSHOTS_DIR; the README's images
are refreshed with `SCREENSHOTS_DIR=docs/img .venv/bin/pytest -k test_the_ui_shows`.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from enrollment_pipeline.lib.clients.dagster_api import followup_run_config
from enrollment_pipeline.lib.mongo.collections import APPLICATIONS
from enrollment_pipeline.lib.sample_data import synthetic_events
from enrollment_pipeline_tests.dagster_dev import DagsterDev, dagster_dev
from enrollment_pipeline_tests.pipeline import Pipeline

pytestmark = pytest.mark.integration

# Dagster's first-visit dialog ("Join the Dagster community") and its way out.
NEWSLETTER_SKIP = "//button[normalize-space()='Skip']"


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
    assert binary and driver, "chromium and chromium-driver are needed: bash scripts/setup.sh"
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1600,1200",
    ):
        options.add_argument(argument)
    chrome = webdriver.Chrome(service=Service(driver), options=options)
    chrome.set_page_load_timeout(60)
    yield chrome
    chrome.quit()


def screenshots_dir(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("SCREENSHOTS_DIR") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def dismiss_newsletter(chrome: webdriver.Chrome, wait_s: float = 0) -> bool:
    """Click the newsletter dialog's Skip, as a user would; True when it was there."""
    deadline = time.monotonic() + wait_s
    while True:
        skips = chrome.find_elements(By.XPATH, NEWSLETTER_SKIP)
        if skips:
            skips[0].click()
            chrome.newsletter_dismissed = True
            WebDriverWait(chrome, 10).until(
                lambda d: not d.find_elements(By.XPATH, NEWSLETTER_SKIP)
            )
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.5)


def screenshot(chrome: webdriver.Chrome, path: Path) -> None:
    dismiss_newsletter(chrome)
    chrome.save_screenshot(str(path))


def open_page(chrome: webdriver.Chrome, url: str, *texts: str, timeout_s: float = 60) -> str:
    """Load `url` and wait until it shows `texts`."""
    chrome.get(url)

    def ready(driver) -> str | bool:
        dismiss_newsletter(driver)
        return body_with(driver, *texts)

    try:
        return WebDriverWait(chrome, timeout_s, poll_frequency=1).until(ready)
    except TimeoutException:
        body = chrome.find_element(By.TAG_NAME, "body").text
        raise AssertionError(f"{url} never showed {texts}; it shows:\n{body[:2000]}") from None


def body_with(driver: webdriver.Chrome, *texts: str) -> str | bool:
    body = driver.find_element(By.TAG_NAME, "body").text
    return body if all(text in body for text in texts) else False


def run_logs_loaded(driver: webdriver.Chrome) -> str | bool:
    body = body_with(driver, "STEP_SUCCESS", "RUN_SUCCESS")
    return body if body and "Loading run logs" not in body else False


def launch_followups(dev: DagsterDev, as_of: datetime) -> str:
    run_id = dev.api.launch_run("send_broker_followups", followup_run_config(as_of.isoformat()))
    assert dev.api.wait_for_run(run_id, 180) == "SUCCESS", dev.log_tail()
    return run_id


def test_the_ui_shows_the_lineage_a_run_and_the_plotted_follow_up_numbers(
    services, pipeline: Pipeline, smtp_server, browser, tmp_path
):
    _, smtp_port = smtp_server
    pipeline.produce(
        list(synthetic_events(40, seed=3, start=datetime.now(UTC) - timedelta(days=1)))
    )
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": services.kafka_bootstrap_servers,
        "ENROLLMENT_TOPIC": pipeline.topic,
        "LEAD_TOPIC": f"ui-leads-{uuid.uuid4().hex[:8]}",
        "MONGO_URI": services.mongo_uri,
        "MONGO_DATABASE": pipeline.mongo.database,
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": str(smtp_port),
    }
    shots = screenshots_dir(tmp_path)
    home = tmp_path / "home"
    home.mkdir()
    with dagster_dev(env, home) as dev:
        deadline = time.monotonic() + 120
        while not pipeline.mongo.db()[APPLICATIONS].count_documents({}):
            dev.assert_alive()
            assert time.monotonic() < deadline, "the sensor ingested nothing: " + dev.log_tail()
            time.sleep(2)
        hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
        launch_followups(dev, hour + timedelta(hours=1))
        run_id = launch_followups(dev, hour + timedelta(hours=2))
        base = f"http://127.0.0.1:{dev.port}"

        lineage = open_page(
            browser,
            f"{base}/asset-groups",
            "enrollment_events_topic",
            "applications",
            "lead_integration_events",
            "crm_leads",
            "broker_followup_emails",
            "historic_enrollment_events",
        )
        assert "enrollment_archive" in lineage
        # A fresh browser meets the newsletter dialog once, a moment after the first page:
        # give it the time to show, so it does not cover a screenshot later.
        if not getattr(browser, "newsletter_dismissed", False):
            dismiss_newsletter(browser, wait_s=20)
        time.sleep(3)  # the nodes' latest events finish loading
        screenshot(browser, shots / "asset-graph.png")

        open_page(browser, f"{base}/runs/{run_id}", "send_broker_followups", "Success")
        # The event log loads after the header: wait for its last events, not a fixed time.
        run_page = WebDriverWait(browser, 60, poll_frequency=1).until(run_logs_loaded)
        assert "broker_followup_emails" in run_page
        screenshot(browser, shots / "run.png")

        overview = open_page(
            browser,
            f"{base}/assets/broker_followup_emails",
            "broker_followup_emails",
            "Automation details",
            "Every hour",  # the schedule that keeps it fresh
        )
        assert "sent" in overview and "send_broker_followups" in overview
        # The Metadata section's Plots toggle plots each numeric entry over the runs.
        browser.find_element(By.CSS_SELECTOR, "button [aria-label=asset_plot]").click()
        plots = WebDriverWait(browser, 60, poll_frequency=1).until(
            lambda d: (
                len(d.find_elements(By.TAG_NAME, "canvas")) >= 2
                and body_with(d, "escalated_to_pending", "open_followups")
            )
        )
        assert "sent" in plots
        time.sleep(2)  # let the charts finish drawing
        screenshot(browser, shots / "followup-emails.png")
    for name in ("asset-graph.png", "run.png", "followup-emails.png"):
        assert (shots / name).stat().st_size > 10_000, name
