"""A comms lead's day in a real headless Chromium (Debian's chromium and chromedriver),
against the real Service over HTTP and the loopback Slack: sign in from the link, edit a
template with an error and see it, fix it, preview, pick an audience, send, watch the
progress bar reach 100%, read survey results as charts. Screenshots of every page, at a
laptop's width and a phone's, go to tests/output/console/."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bot.channels.slack.server import HttpServer, WebApp
from bot.console import build_console
from bot.service import Service
from tests.auxil.running import ADMIN, bot_settings
from tests.auxil.surveys import insert_run
from tests.slack.fake_slack import FakeSlack

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
OUTPUT = Path(__file__).resolve().parents[1] / "output" / "console"
LAPTOP, PHONE = (1280, 860), (390, 844)

if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
    pytest.skip(
        "the browser test needs Debian's chromium and chromedriver: "
        "apt-get install -y chromium chromium-driver",
        allow_module_level=True,
    )
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
from selenium.common.exceptions import (  # noqa: E402
    NoSuchElementException,
    StaleElementReferenceException,
    WebDriverException,
)
from selenium.webdriver.chrome.options import Options  # noqa: E402
from selenium.webdriver.chrome.service import Service as DriverService  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


@pytest.fixture
def served(database_url: str, content_dir: Path) -> Iterator[tuple[Service, str, Any]]:
    """The real service (scheduler and outbox workers running) with the console, on HTTP."""
    with FakeSlack() as slack:
        settings = bot_settings(
            database_url=database_url,
            content_dir=content_dir,
            slack=slack,
            MOBILIZE_CONSOLE_SECRET="browser-test-secret",
            MOBILIZE_SEND_RATE=1000,
            MOBILIZE_TICK_SECONDS=0.5,
        )
        service = Service(settings)
        console = build_console(service)
        web = WebApp(service.app, ready=service.ready.is_set, console=console)
        server = HttpServer(web, host="127.0.0.1", port=0)
        server.start()
        base = f"http://127.0.0.1:{server.port}"
        console.links.public_url = base
        service.ready.set()
        service.start_announcements(workers=2)
        try:
            yield service, base, console
        finally:
            server.stop()
            service.stop()


@pytest.fixture
def browser() -> Iterator[Any]:
    options = Options()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        f"--window-size={LAPTOP[0]},{LAPTOP[1]}",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=DriverService(str(CHROMEDRIVER)), options=options)
    driver.implicitly_wait(0)
    try:
        yield driver
    finally:
        driver.quit()


def wait(driver: Any, condition: Callable[[Any], Any], seconds: float = 20) -> Any:
    """Poll until the condition holds. While a click navigates, an element found in the old
    page may vanish before its text is read; Chrome reports that as a stale element or as a
    plain inspector error ("Node … does not belong to the document"), so both are retried."""
    return WebDriverWait(
        driver,
        seconds,
        poll_frequency=0.1,
        ignored_exceptions=(
            NoSuchElementException,
            StaleElementReferenceException,
            WebDriverException,
        ),
    ).until(condition)


def text_of(driver: Any, css: str) -> str:
    return str(driver.find_element(By.CSS_SELECTOR, css).text)


def shoot(driver: Any, name: str) -> None:
    """The whole page at a laptop's width and at a phone's (390 px)."""
    OUTPUT.mkdir(parents=True, exist_ok=True)
    for label, (width, height) in (("laptop", LAPTOP), ("phone", PHONE)):
        driver.set_window_size(width, height)
        time.sleep(0.15)
        full = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(width, min(max(int(full), height), 5000))
        driver.execute_script("window.scrollTo(0, 0)")
        time.sleep(0.15)
        driver.save_screenshot(str(OUTPUT / f"{name}-{label}.png"))
    driver.set_window_size(*LAPTOP)


def set_source(driver: Any, text: str) -> None:
    """Replace the editor's text as typing would (an input event: HTMX checks and previews)."""
    driver.execute_script(
        "const area = document.getElementById('source'); area.value = arguments[0];"
        "area.dispatchEvent(new Event('input', {bubbles: true}));",
        text,
    )


def test_a_comms_leads_day(served: tuple[Service, str, Any], browser: Any) -> None:
    service, _base, console = served
    survey = service.surveys.surveys["readiness"]
    answers = [
        (
            {
                **{
                    q: 2 + n % 4
                    for q in (
                        "awareness",
                        "desire",
                        "knowledge",
                        "ability",
                        "reinforcement",
                        "confidence",
                    )
                },
                "recommend": 4 + n % 7,
                "comment": "More floorwalkers at Coventry" if n < 5 else "",
            },
            {"site": "Coventry DC"},
        )
        for n in range(14)
    ]
    insert_run(service.db, survey, invitations=[a[1] for a in answers] * 2, responses=answers)
    later = [({**a, "ability": 2, "confidence": 2}, seg) for a, seg in answers]  # a barrier
    insert_run(service.db, survey, invitations=[a[1] for a in later] * 2, responses=later, number=2)
    OUTPUT.mkdir(parents=True, exist_ok=True)
    for old in OUTPUT.glob("*.png"):
        old.unlink()

    # Sign in from the link the bot sends.
    link = console.links.console_link(ADMIN)
    assert link is not None
    browser.get(link)
    wait(browser, lambda d: "Sign in to the console" in d.page_source)
    shoot(browser, "01-signin")
    browser.find_element(By.CSS_SELECTOR, "button.primary").click()
    wait(browser, lambda d: d.find_element(By.TAG_NAME, "h1").text == "Overview")
    shoot(browser, "02-overview")

    # The templates; open one, break it: the error shows with its file and line.
    browser.find_element(By.LINK_TEXT, "Templates").click()
    wait(browser, lambda d: "Announcement templates" in d.page_source)
    shoot(browser, "03-templates")
    browser.find_element(By.LINK_TEXT, "go-live-day").click()
    wait(browser, lambda d: "Good morning Chika!" in text_of(d, "#preview"))
    original = browser.find_element(By.ID, "source").get_property("value")
    broken = original.replace("{{ links.service_desk }}", "{{ links.servicedesk }}")
    line = next(n for n, x in enumerate(broken.splitlines(), 1) if "servicedesk" in x)
    where = f"messages/announcements/go-live-day.md:{line}"
    set_source(browser, broken)
    wait(browser, lambda d: where in text_of(d, "#problems"))
    assert "servicedesk" in text_of(browser, "#problems")
    shoot(browser, "04-editor-error")
    browser.find_element(By.CSS_SELECTOR, "#edit button.primary").click()  # Save: refused
    wait(browser, lambda d: "Not saved" in d.page_source)
    assert where in text_of(browser, "#problems")
    path = service.settings.content_dir / "messages/announcements/go-live-day.md"
    assert "servicedesk" not in path.read_text(encoding="utf-8")

    # Fix it, preview it as Alice, save it.
    fixed = original.replace("Good morning", "Hello")
    set_source(browser, fixed)
    wait(browser, lambda d: "No errors" in text_of(d, "#problems"))
    person = browser.find_element(By.ID, "person")
    person.clear()
    person.send_keys("U1")
    wait(browser, lambda d: "Hello Alice!" in text_of(d, "#preview"))
    shoot(browser, "05-preview")
    browser.find_element(By.CSS_SELECTOR, "#edit button.primary").click()
    wait(browser, lambda d: "Saved messages/announcements/go-live-day.md" in d.page_source)
    assert "Hello {{ user.first_name }}" in path.read_text(encoding="utf-8")

    # Pick an audience: its size and who is left out, then send and confirm.
    browser.find_element(By.LINK_TEXT, "Send…").click()
    wait(browser, lambda d: "people" in text_of(d, "#audience"))
    audience = browser.find_element(By.ID, "to")
    audience.clear()
    audience.send_keys("everyone; channel:C1")
    wait(browser, lambda d: "1 channel" in text_of(d, "#audience"))
    assert "3" in text_of(browser, "#audience .size")
    browser.find_element(By.CSS_SELECTOR, "#audience summary").click()
    shoot(browser, "06-audience")
    browser.find_element(By.CSS_SELECTOR, "form button.primary").click()
    wait(browser, lambda d: "Check and confirm" in d.page_source)
    shoot(browser, "07-confirm")
    browser.find_element(By.CSS_SELECTOR, "form.actions button.primary").click()

    # Watch it go out: the bar reaches 100% against the loopback Slack.
    wait(browser, lambda d: "Queued announcement" in d.page_source)
    wait(browser, lambda d: text_of(d, "[data-testid=percent]") == "100%", seconds=40)
    bar = browser.find_element(By.ID, "bar")
    assert bar.get_attribute("value") == bar.get_attribute("max") == "4"  # 3 people, 1 channel
    wait(browser, lambda d: text_of(d, "[data-testid=send-state]") == "done", seconds=40)
    shoot(browser, "08-delivery")

    # Survey results as charts.
    browser.find_element(By.LINK_TEXT, "Surveys").click()
    wait(browser, lambda d: "How ready do you feel" in d.page_source)
    shoot(browser, "09-surveys")
    browser.find_elements(By.LINK_TEXT, "Results")[0].click()  # the latest run first
    wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "svg.chart")) == 7)
    assert "eNPS" in browser.page_source and "More floorwalkers" in browser.page_source
    # The ADKAR heat map per group, with the barrier marked and one click to what helps.
    heat = browser.find_element(By.CSS_SELECTOR, ".survey-heat")
    assert "Coventry DC" in heat.text and "ability" in heat.text.lower()
    shoot(browser, "10-results")
    heat.find_elements(By.PARTIAL_LINK_TEXT, "what helps")[0].click()
    wait(browser, lambda d: "the barrier is ability" in text_of(d, "h1"))
    assert "A targeted announcement" in browser.page_source
    shoot(browser, "11-barrier")

    # Trends across the two runs, with their confidence bands.
    browser.get(browser.current_url.split("/console/")[0] + "/console/surveys/readiness")
    wait(browser, lambda d: "Trends across runs" in d.page_source)
    assert browser.find_elements(By.CSS_SELECTOR, "svg.survey-chart")
    shoot(browser, "12-trends")

    # The timeline: move go-live a week and see what moves before saving anything.
    browser.find_element(By.LINK_TEXT, "Timeline").click()
    wait(browser, lambda d: "milestone" in text_of(d, "main") and "go_live" in d.page_source)
    shoot(browser, "13-timeline")
    rollout = service.settings.content_dir / "schedules/rollout.yaml"
    before = rollout.read_text(encoding="utf-8")
    browser.execute_script(
        "document.getElementById('move-milestone').value = 'go_live';"
        "document.getElementById('move-day').value = '2027-04-13';"
    )
    browser.find_element(By.CSS_SELECTOR, ".move-form button").click()
    wait(browser, lambda d: "→" in text_of(d, "#move-preview"))
    assert "go_live" in text_of(browser, "#move-preview")
    shoot(browser, "14-move-preview")
    assert rollout.read_text(encoding="utf-8") == before  # nothing saved by a preview

    browser.find_element(By.LINK_TEXT, "Knowledge base").click()
    wait(browser, lambda d: "What it is missing" in d.page_source)
    shoot(browser, "15-knowledge")
    assert len(list(OUTPUT.glob("*.png"))) == 30
