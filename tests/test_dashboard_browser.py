"""The dashboard in a real browser: headless Chromium (Debian's chromium + chromium-driver).

Scripted traffic goes through the real app (on a real TCP port) against the loopback fakes; then
Chromium signs in through the login form with the admin key, and the test reads the charts' data
attributes, checks them against the traffic, and saves a screenshot.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.policy import hash_key
from tests.conftest import Fakes
from tests.test_dashboard import ADMIN, ADMIN_KEY, Expected, priced_policy, scripted_traffic

pytest.importorskip("selenium", reason="selenium is in the test extra: pip install -e '.[test]'")

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.wait import WebDriverWait

CHROMIUM = next(
    (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None
)
CHROMEDRIVER = shutil.which("chromedriver") or (
    "/usr/lib/chromium/chromedriver" if os.path.exists("/usr/lib/chromium/chromedriver") else None
)
pytestmark = [
    pytest.mark.skipif(
        CHROMIUM is None or CHROMEDRIVER is None,
        reason="headless Chromium not found: apt-get install chromium chromium-driver "
        "(.ci/run installs them)",
    ),
    pytest.mark.timeout(180),
]


@pytest.fixture
async def dashboard(make_gateway: Any, fakes: Fakes, embedder: Any) -> TestClient[Any, Any]:
    client: TestClient[Any, Any] = await make_gateway(
        priced_policy(fakes, cache={"static_threshold": 0.85}),
        embedder=embedder,
        admin_key_sha256=hash_key(ADMIN_KEY),
    )
    return client


@dataclass
class Seen:
    """What the browser read off the page."""

    title: str
    login_form: bool
    requests: list[int]
    fallbacks: list[int]
    cost_by_team: dict[str, float]
    cost_by_task: dict[str, float]
    cache_hits: str
    decision_rows: int
    breakers: dict[str, str]
    quality: dict[tuple[str, str], float]
    quality_rows: set[tuple[str, str]]


def browse(base_url: str, screenshot: Path) -> Seen:
    """Sign in, read the charts, save a full-page screenshot (blocking: runs in a thread)."""
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(arg)
    options.add_argument("--window-size=1400,1000")
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    try:
        driver.get(f"{base_url}/dashboard")
        login_form = bool(driver.find_elements(By.CSS_SELECTOR, "form.login input[name=key]"))
        driver.find_element(By.NAME, "key").send_keys(ADMIN_KEY)
        driver.find_element(By.CSS_SELECTOR, "form.login button").click()
        WebDriverWait(driver, 20).until(
            expected_conditions.presence_of_element_located(
                (By.CSS_SELECTOR, 'svg[data-chart="traffic"]')
            )
        )

        def values(selector: str) -> list[str]:
            return [
                str(e.get_attribute("data-value"))
                for e in driver.find_elements(By.CSS_SELECTOR, selector)
            ]

        def bars(chart: str) -> dict[str, float]:
            found = driver.find_elements(
                By.CSS_SELECTOR, f'svg[data-chart="{chart}"] rect[data-label]'
            )
            return {
                str(e.get_attribute("data-label")): float(str(e.get_attribute("data-value")))
                for e in found
            }

        cache = driver.find_element(By.CSS_SELECTOR, 'svg[data-chart="cache-hit-rate"]')
        seen = Seen(
            title=driver.title,
            login_form=login_form,
            requests=[int(v) for v in values('rect[data-series="requests"]')],
            fallbacks=[int(v) for v in values('rect[data-series="fallbacks"]')],
            cost_by_team=bars("cost-by-team"),
            cost_by_task=bars("cost-by-task-type"),
            cache_hits=f"{cache.get_attribute('data-hits')}/{cache.get_attribute('data-lookups')}",
            decision_rows=len(driver.find_elements(By.CSS_SELECTOR, "tr[data-request-id]")),
            breakers={
                str(e.get_attribute("data-breaker")): str(e.get_attribute("data-state"))
                for e in driver.find_elements(By.CSS_SELECTOR, "tr[data-breaker]")
            },
            quality={},
            quality_rows={
                (str(e.get_attribute("data-quality-model")), str(e.get_attribute("data-task-type")))
                for e in driver.find_elements(By.CSS_SELECTOR, "tr[data-quality-model]")
            },
        )
        quality: dict[tuple[str, str], list[float]] = {}
        for point in driver.find_elements(By.CSS_SELECTOR, 'svg[data-chart="quality"] circle'):
            key = (
                str(point.get_attribute("data-model")),
                str(point.get_attribute("data-task-type")),
            )
            n = int(str(point.get_attribute("data-n")))
            sums = quality.setdefault(key, [0.0, 0.0])
            sums[0] += float(str(point.get_attribute("data-value"))) * n
            sums[1] += n
        seen.quality = {key: total / n for key, (total, n) in quality.items()}
        height = int(driver.execute_script("return document.documentElement.scrollHeight"))
        driver.set_window_size(1400, min(max(height + 40, 1000), 6000))
        driver.save_screenshot(str(screenshot))
        return seen
    finally:
        driver.quit()


def png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", header[16:24])
    return width, height


async def test_dashboard_renders_the_scripted_traffic_in_chromium(
    dashboard: TestClient[Any, Any], fakes: Fakes, tmp_path: Path
) -> None:
    expected: Expected = await scripted_traffic(dashboard, fakes)
    base_url = str(dashboard.make_url("")).rstrip("/")  # the app on a real loopback TCP port
    screenshot = tmp_path / "dashboard.png"
    seen = await asyncio.to_thread(browse, base_url, screenshot)
    print(f"dashboard screenshot: {screenshot}")

    assert seen.login_form  # first the sign-in form, never the key in a URL
    assert "dashboard" in seen.title
    assert sum(seen.requests) == expected.requests
    assert sum(seen.fallbacks) == expected.fallbacks
    assert seen.cost_by_team == pytest.approx(expected.cost_by_team)
    assert seen.cost_by_task == pytest.approx(expected.cost_by_task)
    assert seen.cache_hits == f"{expected.cache_hits}/{expected.requests}"
    assert seen.decision_rows == expected.requests
    assert seen.breakers["provider:anthropic"] == "closed"
    assert seen.quality[("claude", "code")] < seen.quality[("gpt", "summarize")]
    assert {("claude", "code"), ("gpt", "summarize")} <= seen.quality_rows
    # The page and the JSON agree (both render one snapshot).
    data = await (await dashboard.get("/dashboard/data", headers=ADMIN)).json()
    assert data["traffic"]["totals"]["requests"] == sum(seen.requests)

    assert screenshot.stat().st_size > 20_000  # a real rendering, not a blank page
    width, height = png_size(screenshot)
    assert width >= 1000
    assert height >= 1000
