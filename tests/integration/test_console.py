"""The web console (``/console``) in a real headless browser: Debian's chromium driven through
chromedriver by selenium, against a broker with archived data in moto S3 (issue 18 item 11).

Each page is loaded and what it renders is compared with the broker's own numbers (admin API
storage report, the records produced, the committed group offsets). Screenshots of every page
are kept under the test session's temporary directory; the path is printed (``-s`` shows it).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select, WebDriverWait

from tests.support import admin_http, ops
from tests.support.broker import BrokerProcess
from tests.support.moto import MotoS3
from tests.support.tiered import TieredTopic, fill_tiered_topic, tiered_settings

pytestmark = [pytest.mark.streamd_only]

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
GROUP = "console-group"
COMMITTED = 100


@pytest.fixture(scope="module")
def tiered(moto_s3: MotoS3, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TieredTopic]:
    bucket = moto_s3.new_bucket()
    broker = BrokerProcess(
        tmp_path_factory.mktemp("console") / "data", tiered_settings(moto_s3, bucket)
    )
    broker.start()
    try:
        data = fill_tiered_topic(broker, bucket, "console-orders")
        consumer = Consumer(
            {"bootstrap.servers": broker.bootstrap, "group.id": GROUP, "enable.auto.commit": False}
        )
        consumer.commit(
            offsets=[TopicPartition(data.topic, 0, COMMITTED)], asynchronous=False
        )
        consumer.close()
        yield data
    finally:
        broker.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("console-screenshots")
    print(f"\nconsole screenshots: {path}")
    return path


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    assert Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists(), (
        "Debian's chromium and chromium-driver are needed (.ci/run installs them)"
    )
    profile = tempfile.mkdtemp(prefix="streamd-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={profile}", "--window-size=1400,1000",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def url(broker: BrokerProcess, path: str) -> str:
    return f"http://127.0.0.1:{broker.admin_port}{path}"


def text(driver: WebDriver, css: str) -> str:
    """An element's text; found again when a live refresh replaced it meanwhile."""
    for _ in range(5):
        try:
            return str(driver.find_element(By.CSS_SELECTOR, css).text)
        except StaleElementReferenceException:
            continue
    raise AssertionError(f"{css} kept changing under the test")


def cell(driver: WebDriver, table: str, row: str, column: str) -> str:
    return text(driver, f"table#{table} tr[{row}] td.{column}")


def test_overview_shows_cluster_health(
    tiered: TieredTopic, browser: WebDriver, shots: Path
) -> None:
    broker = tiered.broker
    browser.get(url(broker, "/console"))
    assert text(browser, "#health-status") == "ok"
    assert text(browser, "#kafka-address") == broker.bootstrap
    cluster = admin_http.get(broker.admin_port, "/v1/cluster").json()
    assert text(browser, "#cluster-id") == cluster["cluster_id"]
    assert text(browser, "#topic-count") == "1"
    assert text(browser, "#group-count") == "1"
    assert text(browser, "#tiering-status") == "ok"
    assert "KiB" in text(browser, "#remote-bytes")
    browser.save_screenshot(str(shots / "overview.png"))


def test_topics_and_partitions_show_local_and_archived_offsets(
    tiered: TieredTopic, browser: WebDriver, shots: Path
) -> None:
    broker, topic = tiered.broker, tiered.topic
    browser.get(url(broker, "/console/topics"))
    row = f'data-topic="{topic}"'
    assert cell(browser, "topics", row, "partitions") == "2"
    assert cell(browser, "topics", row, "records") == str(len(tiered.records))
    assert cell(browser, "topics", row, "archived") != "0 B"
    assert not browser.find_elements(By.CSS_SELECTOR, 'tr[data-topic="__consumer_offsets"]')
    browser.save_screenshot(str(shots / "topics.png"))
    browser.find_element(By.ID, "internal-toggle").click()
    WebDriverWait(browser, 10).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, 'tr[data-topic="__consumer_offsets"]')
    )
    browser.get(url(broker, "/console/topics"))

    browser.find_element(By.LINK_TEXT, topic).click()
    WebDriverWait(browser, 10).until(lambda d: d.find_elements(By.ID, "partitions"))
    report = admin_http.get(broker.admin_port, f"/v1/topics/{topic}/storage").json()
    p0 = next(p for p in report["partitions"] if p["partition"] == 0)
    row = 'data-partition="0"'
    assert cell(browser, "partitions", row, "earliest") == "0"
    assert cell(browser, "partitions", row, "archive-start") == "0"
    assert int(cell(browser, "partitions", row, "local-start")) > 200
    assert int(cell(browser, "partitions", row, "local-start")) <= p0["local_start_offset"]
    assert int(cell(browser, "partitions", row, "last-archived")) >= int(
        cell(browser, "partitions", row, "local-start")
    ) - 1
    assert cell(browser, "partitions", row, "high-watermark") == str(len(tiered.records))
    assert cell(browser, "partitions", 'data-partition="1"', "high-watermark") == "0"
    assert text(browser, "#topic-id") == report["topic_id"]
    browser.save_screenshot(str(shots / "topic.png"))


def test_group_lag_per_partition(tiered: TieredTopic, browser: WebDriver, shots: Path) -> None:
    broker, topic = tiered.broker, tiered.topic
    browser.get(url(broker, "/console/groups"))
    assert cell(browser, "groups", f'data-group="{GROUP}"', "lag") == str(
        len(tiered.records) - COMMITTED
    )
    browser.find_element(By.LINK_TEXT, GROUP).click()
    WebDriverWait(browser, 10).until(lambda d: d.find_elements(By.ID, "group-partitions"))
    row = f'data-topic="{topic}"][data-partition="0"'
    assert cell(browser, "group-partitions", row, "committed") == str(COMMITTED)
    assert cell(browser, "group-partitions", row, "log-end") == str(len(tiered.records))
    assert cell(browser, "group-partitions", row, "lag") == str(len(tiered.records) - COMMITTED)
    assert text(browser, "#group-state") == "Empty"
    browser.save_screenshot(str(shots / "group.png"))


def test_message_browser_reads_archived_offsets(
    tiered: TieredTopic, browser: WebDriver, shots: Path
) -> None:
    broker, topic = tiered.broker, tiered.topic
    wanted = 5
    assert wanted < tiered.local_start, "the offset must come from the bucket"
    browser.get(url(broker, f"/console/topics/{topic}/messages"))
    form = browser.find_element(By.ID, "browse")
    Select(form.find_element(By.NAME, "partition")).select_by_value("0")
    form.find_element(By.NAME, "offset").send_keys(str(wanted))
    limit = form.find_element(By.NAME, "limit")
    limit.clear()
    limit.send_keys("3")
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    WebDriverWait(browser, 20).until(lambda d: d.find_elements(By.ID, "messages"))
    rows = browser.find_elements(By.CSS_SELECTOR, "table#messages tbody tr")
    assert [r.get_attribute("data-offset") for r in rows] == ["5", "6", "7"]
    first = tiered.records[wanted]
    assert cell(browser, "messages", 'data-offset="5"', "key") == first.key.decode()
    assert "i: 5" in cell(browser, "messages", 'data-offset="5"', "headers")
    browser.save_screenshot(str(shots / "messages-text.png"))

    Select(browser.find_element(By.NAME, "format")).select_by_value("hex")
    browser.find_element(By.CSS_SELECTOR, "#browse button[type=submit]").click()
    WebDriverWait(browser, 20).until(
        lambda d: "format=hex" in d.current_url and d.find_elements(By.ID, "messages")
    )
    value = cell(browser, "messages", 'data-offset="5"', "value").replace(" ", "").replace("\n", "")
    assert value.startswith(first.value[:64].hex())
    browser.save_screenshot(str(shots / "messages-hex.png"))

    at = tiered.records[40].timestamp
    browser.get(url(broker, f"/console/topics/{topic}/messages?partition=0&timestamp={at}&limit=1"))
    rows = browser.find_elements(By.CSS_SELECTOR, "table#messages tbody tr")
    assert [r.get_attribute("data-offset") for r in rows] == ["40"]


def test_live_refresh_updates_without_reloading(
    tiered: TieredTopic, browser: WebDriver, shots: Path
) -> None:
    broker, topic = tiered.broker, tiered.topic
    browser.get(url(broker, f"/console/topics/{topic}"))
    browser.execute_script("window.__sameDocument = true;")
    before = int(cell(browser, "partitions", 'data-partition="1"', "high-watermark"))
    producer = ops.producer(broker.bootstrap)
    for i in range(7):
        producer.produce(topic, value=b"live-%d" % i, partition=1)
    assert producer.flush(30) == 0

    def updated(driver: WebDriver) -> bool:
        text = cell(driver, "partitions", 'data-partition="1"', "high-watermark")
        return text == str(before + 7)

    WebDriverWait(browser, 15, poll_frequency=0.3).until(updated)
    assert browser.execute_script("return window.__sameDocument === true;"), "page was reloaded"
    assert text(browser, "#updated").startswith("updated ")
    browser.save_screenshot(str(shots / "live-refresh.png"))
