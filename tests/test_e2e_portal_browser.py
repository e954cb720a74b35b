"""The developer portal end to end, in a real browser: headless Chromium driven by Selenium
(Debian's chromium-driver) against ``waypost serve --portal-port`` following a git upstream with
``--git-pull``, and a real Envoy in front of an echo backend.

A developer signs up, creates a key, requests a gold subscription; the key gets 403 through
Envoy. An admin approves in the portal; the key then gets 200. Screenshots of each step land in
test-artifacts/portal-*.png. Finally no key appears in any log or anywhere in git's history.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import Select, WebDriverWait

from support import EchoFactory, EnvoyProcess, WaypostProcess, async_wait_until, free_port
from support.gitrepo import GitRepo
from support.portal import ADMIN_KEY, seed_upstream

pytestmark = pytest.mark.e2e

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
PULL_INTERVAL = "200ms"


def _chrome(profile: Path) -> WebDriver:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if binary is None or driver is None:
        pytest.fail("chromium and chromium-driver are needed: run `make system-deps`", pytrace=False)
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000"):
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    return webdriver.Chrome(service=Service(executable_path=driver), options=options)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    driver = _chrome(tmp_path / "chrome-profile")
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


class Steps:
    """The browser side, run in a worker thread (the echo backend lives in the test's loop)."""

    def __init__(self, driver: WebDriver, base: str) -> None:
        self.driver = driver
        self.base = base
        self.wait = WebDriverWait(driver, 20)

    def shot(self, name: str) -> None:
        ARTIFACTS.mkdir(exist_ok=True)
        self.driver.save_screenshot(str(ARTIFACTS / f"portal-{name}.png"))

    def open(self, path: str) -> None:
        self.driver.get(self.base + path)

    def type(self, element_id: str, text: str) -> None:
        field = self.wait.until(ec.element_to_be_clickable((By.ID, element_id)))
        field.clear()
        field.send_keys(text)

    def click(self, element_id: str) -> None:
        self.wait.until(ec.element_to_be_clickable((By.ID, element_id))).click()

    def shown_key(self) -> str:
        self.wait.until(ec.visibility_of_element_located((By.ID, "new-key-value")))
        self.wait.until(lambda d: d.find_element(By.ID, "new-key-value").text.startswith("wpk_"))
        return str(self.driver.find_element(By.ID, "new-key-value").text)

    def sign_up(self, name: str) -> str:
        self.open("/signup")
        self.type("signup-name", name)
        self.type("signup-email", f"{name}@example.com")
        self.click("signup")
        key = self.shown_key()
        self.shot("1-signed-up")
        return key

    def create_key(self) -> str:
        self.open("/account")
        self.wait.until(lambda d: d.find_element(By.ID, "account").get_attribute("data-loaded") == "true")
        self.click("create-key")
        key = self.shown_key()
        self.shot("2-new-key")
        return key

    def request_gold(self) -> None:
        self.open("/apis/orders")
        Select(self.wait.until(ec.presence_of_element_located((By.ID, "plan")))).select_by_value("gold")
        self.click("subscribe")
        self.wait.until(ec.url_to_be(self.base + "/account"))
        self.wait.until(lambda d: "pending approval" in d.find_element(By.ID, "subscriptions").text)
        self.shot("3-pending")

    def sign_in(self, key: str) -> None:
        if self.driver.find_elements(By.ID, "signout"):
            self.click("signout")
            self.wait.until(ec.presence_of_element_located((By.ID, "nav-signin")))
        self.open("/signin")
        self.type("signin-key", key)
        self.click("signin")
        self.wait.until(ec.url_to_be(self.base + "/account"))

    def approve(self) -> float:
        self.open("/admin")
        button = self.wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, "button[id^='approve-']")))
        self.shot("4-admin-pending")
        clicked = time.monotonic()
        button.click()
        self.wait.until(
            lambda d: (
                not d.find_elements(By.CSS_SELECTOR, "button[id^='approve-']")
                and d.find_element(By.ID, "requests").get_attribute("data-loaded") == "true"
            )
        )
        return clicked

    def console(self, key: str) -> str:
        self.open("/apis/orders")
        form = self.wait.until(ec.presence_of_element_located((By.ID, "console-form")))
        form.find_element(By.NAME, "path").clear()
        form.find_element(By.NAME, "path").send_keys("/orders/42")
        form.find_element(By.NAME, "key").send_keys(key)
        form.find_element(By.TAG_NAME, "button").click()
        self.wait.until(lambda d: d.find_element(By.ID, "console-output").text.strip())
        self.shot("6-console")
        return str(self.driver.find_element(By.ID, "console-output").text)

    def usage(self) -> str:
        self.open("/account")
        self.wait.until(lambda d: "approved" in d.find_element(By.ID, "subscriptions").text)
        self.shot("5-approved-usage")
        return str(self.driver.find_element(By.ID, "subscriptions").text)


async def test_sign_up_subscribe_approve_then_envoy_lets_the_key_through(
    tmp_path: Path,
    echo_backend: EchoFactory,
    start_waypost: Callable[..., WaypostProcess],
    start_envoy: Callable[..., EnvoyProcess],
    browser: WebDriver,
) -> None:
    echo = await echo_backend("orders")
    gateway_port = free_port()
    upstream, _ = seed_upstream(tmp_path, gateway_port=gateway_port, backend_port=echo.port)
    served = GitRepo.clone(upstream.path, tmp_path / "served")
    portal_port = free_port()
    waypost = await asyncio.to_thread(
        start_waypost,
        served.path / "policies",
        args=[
            "--git-pull",
            PULL_INTERVAL,
            "--portal-port",
            str(portal_port),
            "--portal-workdir",
            str(tmp_path / "portal-clone"),
        ],
    )
    envoy = await asyncio.to_thread(start_envoy, xds_port=waypost.xds_port)
    await asyncio.to_thread(envoy.wait_for_listener, gateway_port)
    steps = Steps(browser, f"http://127.0.0.1:{portal_port}")
    url = f"http://127.0.0.1:{gateway_port}/orders/1"

    async with httpx.AsyncClient(trust_env=False, timeout=5) as client:

        async def status(key: str) -> int:
            return (await client.get(url, headers={"x-api-key": key})).status_code

        def gets(key: str, expected: int) -> Callable[[], Awaitable[bool]]:
            async def check() -> bool:
                return await status(key) == expected

            return check

        first_key = await asyncio.to_thread(steps.sign_up, "browser-dev")
        key = await asyncio.to_thread(steps.create_key)
        # Once the fleet has pulled the new Consumer, the key is known but subscribed to nothing.
        await async_wait_until(gets(key, 403), timeout=20, interval=0.1)
        await asyncio.to_thread(steps.request_gold)
        assert await status(key) == 403

        await asyncio.to_thread(steps.sign_in, ADMIN_KEY)
        clicked = await asyncio.to_thread(steps.approve)
        await async_wait_until(gets(key, 200), timeout=20, interval=0.05)
        elapsed = time.monotonic() - clicked
        print(f"approval click -> 200 through Envoy: {elapsed:.2f} s")
        answer = await client.get(url, headers={"x-api-key": key})
        assert answer.status_code == 200 and answer.headers["ratelimit-limit"] == "50"  # gold's limit

        await asyncio.to_thread(steps.sign_in, key)
        shown = await asyncio.to_thread(steps.usage)
        assert "gold" in shown and "of 50 left" in shown
        output = await asyncio.to_thread(steps.console, key)
        assert output.startswith("200") and '"path": "/orders/42"' in output

    # Nothing secret in git or in any log.
    history = upstream.git("log", "-p", "--all")
    logs = waypost.log_text() + envoy.log_text()
    for secret in (first_key, key):
        assert secret not in history and secret not in logs
        # The random part, after the `wpk_<id>_` prefix (split from the left: it may hold "_" too).
        assert secret.split("_", 2)[2] not in history + logs
