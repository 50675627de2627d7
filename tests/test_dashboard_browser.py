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

from tests.conftest import TEAM_KEY, Fakes
from tests.test_dashboard import ADMIN, ADMIN_KEY, Expected, scripted_traffic
from tests.test_dashboard import dashboard as dashboard  # the same fixture: cache and prices

pytest.importorskip("selenium", reason="selenium is in the test extra: pip install -e '.[test]'")

from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
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


@dataclass
class Seen:
    """What the browser read off the page."""

    title: str
    requests: list[int]
    fallbacks: list[int]
    cost_by_team: dict[str, float]
    cost_by_task: dict[str, float]
    cache_hits: str
    decision_rows: int
    breakers: dict[str, str]
    quality: dict[tuple[str, str], float]
    quality_rows: set[tuple[str, str]]


class Browser:
    """Headless Chromium driven by chromedriver; every method blocks (run it in a thread)."""

    def __init__(self, base_url: str) -> None:
        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)
        for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
            options.add_argument(arg)
        options.add_argument("--window-size=1400,1000")
        self.base_url = base_url
        self.driver = webdriver.Chrome(
            options=options, service=Service(executable_path=CHROMEDRIVER)
        )

    def close(self) -> None:
        self.driver.quit()

    def sign_in(self, key: str) -> bool:
        """Open /dashboard, submit ``key`` on its sign-in form; whether the charts came."""
        driver = self.driver
        driver.get(f"{self.base_url}/dashboard")
        driver.find_element(By.CSS_SELECTOR, "form.login input[name=key]").send_keys(key)
        driver.find_element(By.CSS_SELECTOR, "form.login button").click()

        def answered(d: Any) -> bool:
            charts = d.find_elements(By.CSS_SELECTOR, 'svg[data-chart="traffic"]')
            refused = d.find_elements(By.CSS_SELECTOR, "form.login .message")
            return bool(charts) or any("not the admin key" in e.text for e in refused)

        WebDriverWait(
            driver, 10, poll_frequency=0.1, ignored_exceptions=(StaleElementReferenceException,)
        ).until(answered)
        return bool(driver.find_elements(By.CSS_SELECTOR, 'svg[data-chart="traffic"]'))

    def attr(self, selector: str, name: str) -> list[str]:
        return [
            str(e.get_attribute(name)) for e in self.driver.find_elements(By.CSS_SELECTOR, selector)
        ]

    def bars(self, chart: str) -> dict[str, float]:
        selector = f'svg[data-chart="{chart}"] rect[data-label]'
        labels, values = self.attr(selector, "data-label"), self.attr(selector, "data-value")
        return {label: float(value) for label, value in zip(labels, values, strict=True)}

    def read(self) -> Seen:
        quality: dict[tuple[str, str], list[float]] = {}
        points = 'svg[data-chart="quality"] circle'
        for model, task, value, n in zip(
            self.attr(points, "data-model"),
            self.attr(points, "data-task-type"),
            self.attr(points, "data-value"),
            self.attr(points, "data-n"),
            strict=True,
        ):
            sums = quality.setdefault((model, task), [0.0, 0.0])
            sums[0] += float(value) * int(n)
            sums[1] += int(n)
        cache = 'svg[data-chart="cache-hit-rate"]'
        rows = "tr[data-quality-model]"
        return Seen(
            title=self.driver.title,
            requests=[int(v) for v in self.attr('rect[data-series="requests"]', "data-value")],
            fallbacks=[int(v) for v in self.attr('rect[data-series="fallbacks"]', "data-value")],
            cost_by_team=self.bars("cost-by-team"),
            cost_by_task=self.bars("cost-by-task-type"),
            cache_hits=f"{self.attr(cache, 'data-hits')[0]}/{self.attr(cache, 'data-lookups')[0]}",
            decision_rows=len(self.attr("tr[data-request-id]", "data-request-id")),
            breakers=dict(
                zip(
                    self.attr("tr[data-breaker]", "data-breaker"),
                    self.attr("tr[data-breaker]", "data-state"),
                    strict=True,
                )
            ),
            quality={key: total / n for key, (total, n) in quality.items()},
            quality_rows=set(
                zip(
                    self.attr(rows, "data-quality-model"),
                    self.attr(rows, "data-task-type"),
                    strict=True,
                )
            ),
        )

    def screenshot(self, path: Path) -> None:
        """The whole page, however tall (within reason)."""
        height = int(self.driver.execute_script("return document.documentElement.scrollHeight"))
        self.driver.set_window_size(1400, min(max(height + 40, 1000), 6000))
        self.driver.save_screenshot(str(path))

    def open(self, path: str) -> None:
        self.driver.get(f"{self.base_url}{path}")

    def wait_for_requests(self, total: int, timeout_s: float) -> bool:
        """Whether the traffic chart comes to show ``total`` requests without a reload."""
        selector = 'svg[data-chart="traffic"]'
        try:
            WebDriverWait(
                self.driver,
                timeout_s,
                poll_frequency=0.2,
                ignored_exceptions=(StaleElementReferenceException,),  # panels are swapped in
            ).until(lambda d: self.attr(selector, "data-requests") == [str(total)])
        except TimeoutException:
            return False
        return True


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
    browser = await asyncio.to_thread(Browser, base_url)
    try:
        assert not await asyncio.to_thread(browser.sign_in, "not-the-admin-key")
        assert await asyncio.to_thread(browser.sign_in, ADMIN_KEY)
        seen = await asyncio.to_thread(browser.read)
        await asyncio.to_thread(browser.screenshot, screenshot)
        print(f"dashboard screenshot: {screenshot}")

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

        # Auto-refresh: one more request shows up without reloading the page.
        await asyncio.to_thread(browser.open, "/dashboard?refresh_s=1")
        response = await dashboard.post(
            "/v1/chat/completions",
            json={"model": "gpt", "messages": [{"role": "user", "content": "One more, please."}]},
            headers={"Authorization": f"Bearer {TEAM_KEY}"},
        )
        assert response.status == 200
        assert await asyncio.to_thread(browser.wait_for_requests, expected.requests + 1, 10)
    finally:
        await asyncio.to_thread(browser.close)

    assert screenshot.stat().st_size > 20_000  # a real rendering, not a blank page
    width, height = png_size(screenshot)
    assert width >= 1000
    assert height >= 1000
