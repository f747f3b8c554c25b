"""The builder page in a real headless Chromium (Debian's chromium + chromium-driver).

Builds "active contacts in list newsletter who never opened" by clicking, checks the
live count against `segengine count` on the same workspace, saves the segment and
opens it again with /?segment=NAME. Set SEGENGINE_UPDATE_SCREENSHOT=1 to refresh the
screenshots docs/serve.md and docs/analytics.md show.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from conftest import REPO, Cli
from test_server import sample_ws, start_server, stop, ws_path  # noqa: F401 - fixtures

import segengine

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
    pytest.skip("no Chromium here: apt-get install chromium chromium-driver", allow_module_level=True)
webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

SCREENSHOT = REPO / "docs" / "images" / "serve-builder.png"


def keep_picture(element, name: str) -> None:
    """With SEGENGINE_UPDATE_SCREENSHOT set, a picture of `element` for the docs."""
    driver = element.parent
    size = driver.get_window_size()
    driver.set_window_size(size["width"], 2400)  # a whole panel, not the part in view
    try:
        png = element.screenshot_as_png  # taken every run: a panel that cannot be drawn fails
    finally:
        driver.set_window_size(size["width"], size["height"])
    if os.environ.get("SEGENGINE_UPDATE_SCREENSHOT"):
        (REPO / "docs" / "images" / name).write_bytes(png)


@pytest.fixture
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="segengine-chromium-")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1440,900", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def text_of(driver, testid: str) -> str:
    return driver.find_element(By.CSS_SELECTOR, f"[data-testid={testid}]").text


def wait_for_count(driver, total: int, sendable: int) -> None:
    want = (f"{total:,}", f"{sendable:,}")
    WebDriverWait(driver, 15).until(
        lambda d: (text_of(d, "count-total"), text_of(d, "count-sendable")) == want,
        message=f"the page never showed {want}",
    )


def test_build_save_and_reopen_in_chromium(browser, ws_path: Path, tmp_path: Path) -> None:  # noqa: F811
    definition = {
        "name": "never-opened-newsletter",
        "rules": [
            {"field": "status", "op": "is", "value": "active"},
            {"field": "lists", "op": "includes", "value": "newsletter"},
            {"activity": "opened", "negate": True},
        ],
    }
    (tmp_path / "seg.json").write_text(json.dumps(definition))
    expected = Cli(ws_path).json("count", tmp_path / "seg.json")
    expected.pop("elapsed_ms")  # the CLI's own timing, not part of the answer
    proc, url = start_server(ws_path)
    try:
        d = browser
        d.get(url + "/")
        WebDriverWait(d, 15).until(lambda d: d.find_elements(By.CSS_SELECTOR, "[data-testid=add-field]"))
        by_id = d.find_element
        by_id(By.CSS_SELECTOR, "[data-testid=add-field]").click()
        Select(by_id(By.ID, "rules[0]-field")).select_by_value("status")
        Select(by_id(By.ID, "rules[0]-op")).select_by_value("is")
        Select(by_id(By.ID, "rules[0]-value")).select_by_value("active")
        by_id(By.CSS_SELECTOR, "[data-testid=add-field]").click()
        Select(by_id(By.ID, "rules[1]-field")).select_by_value("lists")
        Select(by_id(By.ID, "rules[1]-op")).select_by_value("includes")
        Select(by_id(By.ID, "rules[1]-value")).select_by_value("newsletter")
        by_id(By.CSS_SELECTOR, "[data-testid=add-activity]").click()
        Select(by_id(By.ID, "rules[2]-activity")).select_by_value("opened")
        by_id(By.ID, "rules[2]-negate").click()
        wait_for_count(d, expected["total"], expected["sendable"])
        # each top-level rule shows its own count, as `explain` reports it
        alone = [r["matches"] for r in Cli(ws_path).json("explain", tmp_path / "seg.json")["tree"]["rules"]]
        WebDriverWait(d, 10).until(
            lambda d: [by_id(By.ID, f"rule-count-{i}").text for i in range(3)] == [f"{n:,}" for n in alone])
        # the SQL panel shows the definition's SQL in the chosen dialect
        d.find_element(By.CSS_SELECTOR, "#sql-panel summary").click()
        Select(by_id(By.ID, "dialect")).select_by_value("postgres")
        postgres = Cli(ws_path)("sql", tmp_path / "seg.json", "--dialect", "postgres").stdout.strip()
        WebDriverWait(d, 10).until(lambda d: by_id(By.ID, "sql").text.strip() == postgres)
        d.find_element(By.CSS_SELECTOR, "#sql-panel summary").click()

        # a typo'd value is shown at its rule, then fixed by typing
        by_id(By.CSS_SELECTOR, "[data-testid=add-field]").click()
        Select(by_id(By.ID, "rules[3]-field")).select_by_value("score")
        Select(by_id(By.ID, "rules[3]-op")).select_by_value("gte")
        WebDriverWait(d, 10).until(lambda d: by_id(By.ID, "problem-rules[3]").text != "")
        d.execute_script("document.addEventListener('input', () => { window.lastInput = performance.now(); }, true)")
        by_id(By.ID, "rules[3]-value").send_keys("0")
        WebDriverWait(d, 10).until(lambda d: by_id(By.ID, "problem-rules[3]").text == "")
        latency = d.execute_script("return Number(document.body.dataset.countedAt) - window.lastInput")
        print(f"last keystroke to updated count: {latency:.0f} ms (debounce 150 ms included)")
        assert 0 < latency < 5000
        by_id(By.ID, "rules[3]-remove").click()
        wait_for_count(d, expected["total"], expected["sendable"])

        by_id(By.ID, "seg-name").send_keys("never-opened-newsletter")
        by_id(By.ID, "seg-desc").send_keys("Active newsletter contacts who never opened")
        by_id(By.ID, "save").click()
        WebDriverWait(d, 10).until(lambda d: by_id(By.ID, "save-status").text == "saved never-opened-newsletter")
        saved = Cli(ws_path).json("count", "never-opened-newsletter")
        saved.pop("elapsed_ms")
        assert saved == expected

        d.get(url + "/?segment=never-opened-newsletter")
        wait_for_count(d, expected["total"], expected["sendable"])
        assert by_id(By.ID, "rules[2]-negate").is_selected()
        assert Select(by_id(By.ID, "rules[1]-value")).first_selected_option.get_attribute("value") == "newsletter"
        WebDriverWait(d, 10).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#members tbody tr")) > 0)
        WebDriverWait(d, 10).until(lambda d: by_id(By.ID, "rule-count-0").text not in ("…", ""))
        d.save_screenshot(str(tmp_path / "builder.png"))
        if os.environ.get("SEGENGINE_UPDATE_SCREENSHOT"):
            SCREENSHOT.parent.mkdir(exist_ok=True)
            shutil.copyfile(tmp_path / "builder.png", SCREENSHOT)

        # The API docs render offline: Swagger UI comes from the server itself.
        d.get(url + "/docs")
        WebDriverWait(d, 20).until(
            lambda d: any("/api/count" in e.text for e in d.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")))
    finally:
        assert stop(proc) < 5


def test_analytics_panels_in_chromium(browser, ws_path: Path) -> None:  # noqa: F811
    """The overlap heatmap, the trend line and the why panel show the commands' answers."""
    cli = Cli(ws_path)
    today = cli.json("count", "state-ca")["as_of"]
    overlap = cli.json("overlap", "state-ca", "never-opened", "--as-of", today)
    trend = cli.json("trend", "state-ca", "--from", "2026-01-31", "--to", "2026-05-31", "--every", "month")
    email = segengine.open(ws_path).members("state-ca")["email"][0]
    proc, url = start_server(ws_path)
    try:
        d = browser
        d.get(url + "/?segment=state-ca")
        wait_for_count(d, overlap["total"][0][0], overlap["sendable"][0][0])
        d.find_element(By.CSS_SELECTOR, "#overlap-panel summary").click()
        WebDriverWait(d, 10).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#overlap-choices input[value=never-opened]"))
        d.find_element(By.CSS_SELECTOR, "#overlap-choices input[value=never-opened]").click()
        d.find_element(By.ID, "overlap-show").click()
        WebDriverWait(d, 10).until(lambda d: d.find_elements(By.CSS_SELECTOR, "[data-testid=overlap-heatmap] rect"))
        cells = [t.text for t in d.find_elements(By.CSS_SELECTOR, "[data-testid=overlap-heatmap] g text")]
        assert cells == [f"{n:,}" for row in overlap["total"] for n in row]

        d.find_element(By.CSS_SELECTOR, "#trend-panel summary").click()
        d.execute_script("document.getElementById('trend-from').value = '2026-01-31';"
                         "document.getElementById('trend-to').value = '2026-05-31';")
        Select(d.find_element(By.ID, "trend-every")).select_by_value("month")
        d.find_element(By.ID, "trend-show").click()
        WebDriverWait(d, 10).until(lambda d: d.find_elements(By.CSS_SELECTOR, "[data-testid=trend-chart] circle"))
        tips = [c.get_attribute("textContent") for c in d.find_elements(By.CSS_SELECTOR, "[data-testid=trend-chart] circle")]
        assert [t.split(":")[0] for t in tips] == [p["as_of"] for p in trend["points"]]
        assert tips[1].startswith(f"{trend['points'][1]['as_of']}: {trend['points'][1]['total']:,}")
        keep_picture(d.find_element(By.ID, "overlap-panel"), "analytics-overlap.png")
        keep_picture(d.find_element(By.ID, "trend-panel"), "analytics-trend.png")

        d.find_element(By.CSS_SELECTOR, "#why-panel summary").click()
        d.find_element(By.ID, "why-email").send_keys(email.upper())
        d.find_element(By.ID, "why-show").click()
        WebDriverWait(d, 10).until(lambda d: d.find_elements(By.CSS_SELECTOR, "[data-testid=why-member]"))
        assert d.find_element(By.CSS_SELECTOR, "[data-testid=why-member]").text == f"{email} is in this segment"
    finally:
        assert stop(proc) < 5



def table_rows(driver, testid: str, part: str = "tbody") -> list[list[str]]:
    rows = driver.find_elements(By.CSS_SELECTOR, f"[data-testid={testid}] {part} tr")
    return [[c.text for c in row.find_elements(By.CSS_SELECTOR, "th, td")] for row in rows]


def retype(element, text: str) -> None:
    """Replace an input's text by typing, so the page sees its input events."""
    element.send_keys(Keys.CONTROL, "a")
    element.send_keys(text)


def test_split_and_priority_panels_in_chromium(browser, ws_path: Path) -> None:  # noqa: F811
    """The split and priority tables show the API's answers; a save makes the groups' segments."""
    cli = Cli(ws_path)
    today = cli.json("count", "state-ca")["as_of"]
    groups = [("a", 45), ("b", 35), ("holdout", 10), ("c", 10)]
    ws = segengine.open(ws_path)
    this_split = ws.split("state-ca", groups=groups, seed="spring-ab", as_of=today)
    saved_split = ws.split("never-opened", groups=groups, seed="spring-ab", as_of=today)
    order = ["state-ca", "cto-or-sales-west", "never-opened"]
    priority = ws.priority(*order, as_of=today)

    def shown(doc: dict) -> list[list[str]]:
        return [[g["name"], f"{g['percent']:g} %", f"[{g['from']}, {g['to']})", f"{g['total']:,}",
                 f"{g['sendable']:,}"] for g in doc["groups"]]

    proc, url = start_server(ws_path)
    try:
        d = browser
        by_id = d.find_element
        d.get(url + "/?segment=state-ca")
        counted = cli.json("count", "state-ca")
        wait_for_count(d, counted["total"], counted["sendable"])

        # the segment on screen, cut into the page's default groups after two edits
        by_id(By.CSS_SELECTOR, "#split-panel summary").click()
        by_id(By.ID, "split-seed").send_keys("spring-ab")
        retype(by_id(By.ID, "split-group-percent-1"), "35")
        by_id(By.ID, "split-add-group").click()
        by_id(By.ID, "split-group-name-3").send_keys("c")
        by_id(By.ID, "split-group-percent-3").send_keys("10")
        by_id(By.ID, "split-show").click()
        WebDriverWait(d, 10).until(lambda d: table_rows(d, "split-table") == shown(this_split))
        assert table_rows(d, "split-table", "thead") == [["group", "share", "buckets", "total", "sendable"]]
        assert table_rows(d, "split-table", "tfoot") == [[
            "all groups", "100 %", "[0, 10000)", f"{sum(g['total'] for g in this_split['groups']):,}",
            f"{sum(g['sendable'] for g in this_split['groups']):,}"]]
        numbers = d.find_elements(By.CSS_SELECTOR, "[data-testid=split-table] tbody td.num")
        assert numbers and all(c.value_of_css_property("text-align") == "right" for c in numbers)

        # groups that do not sum to 100: the server's one line, in the panel
        retype(by_id(By.ID, "split-group-percent-2"), "5")
        by_id(By.ID, "split-show").click()
        WebDriverWait(d, 10).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#split-result [data-testid=panel-error]"))
        problem = by_id(By.CSS_SELECTOR, "#split-result [data-testid=panel-error]").text
        assert problem.startswith("groups: the percentages sum to 95, not 100") and "\n" not in problem
        retype(by_id(By.ID, "split-group-percent-2"), "10")

        # a saved segment split and saved as spring-*: the groups become saved segments
        by_id(By.CSS_SELECTOR, "#overlap-panel summary").click()
        WebDriverWait(d, 10).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#overlap-choices input[value=never-opened]"))
        by_id(By.CSS_SELECTOR, "#overlap-choices input[value=never-opened]").click()
        Select(by_id(By.ID, "split-segment")).select_by_value("never-opened")
        by_id(By.ID, "split-prefix").send_keys("spring")
        by_id(By.ID, "split-save").click()
        names = ["spring-a", "spring-b", "spring-holdout", "spring-c"]
        WebDriverWait(d, 10).until(lambda d: d.find_elements(By.CSS_SELECTOR, "[data-testid=split-saved]"))
        assert by_id(By.CSS_SELECTOR, "[data-testid=split-saved]").text == f"saved segments: {', '.join(names)}"
        assert table_rows(d, "split-table") == shown(saved_split)
        keep_picture(by_id(By.ID, "split-panel"), "analytics-split.png")
        saved = segengine.open(ws_path)
        assert set(names) <= set(saved.snapshot().segments)
        for name, group in zip(names, saved_split["groups"], strict=True):
            assert saved.count(name, as_of=today)["total"] == group["total"]
        # the new segments are offered at once in the pickers, and the overlap's ticks stay
        for picker in ("#saved-select option", "#overlap-choices input", "#priority-pick option"):
            WebDriverWait(d, 10).until(
                lambda d, picker=picker: d.find_elements(By.CSS_SELECTOR, f"{picker}[value=spring-holdout]"))
        assert by_id(By.CSS_SELECTOR, "#overlap-choices input[value=never-opened]").is_selected()

        # a priority list built with the picker and reordered with the arrows
        by_id(By.CSS_SELECTOR, "#priority-panel summary").click()
        for name in ("state-ca", "never-opened", "cto-or-sales-west"):
            Select(by_id(By.ID, "priority-pick")).select_by_value(name)
            by_id(By.ID, "priority-add").click()
        assert not d.find_elements(By.CSS_SELECTOR, "#priority-pick option[value=state-ca]")
        by_id(By.ID, "priority-up-2").click()
        listed = [li.get_attribute("data-name") for li in d.find_elements(By.CSS_SELECTOR, "#priority-list li")]
        assert listed == order
        by_id(By.ID, "priority-show").click()
        WebDriverWait(d, 10).until(lambda d: d.find_elements(By.CSS_SELECTOR, "[data-testid=priority-table]"))
        assert table_rows(d, "priority-table") == [
            [r["segment"], f"{r['matched']:,}", f"{r['total']:,}", f"{r['sendable']:,}", f"{r['lost']:,}"]
            for r in priority["segments"]]
        assert table_rows(d, "priority-table", "tfoot") == [[
            "union", f"{priority['union']['total']:,}", f"{priority['union']['total']:,}",
            f"{priority['union']['sendable']:,}", "–"]]
        assert by_id(By.CSS_SELECTOR, "[data-testid=priority-table] caption").text == (
            f"priority {' > '.join(order)} (as of {today})")
        assert any(r["lost"] > 0 for r in priority["segments"])  # the order changed the answer
        keep_picture(by_id(By.ID, "priority-panel"), "analytics-priority.png")

        # one segment left is not a priority list: the server's line
        by_id(By.ID, "priority-remove-2").click()
        by_id(By.ID, "priority-remove-1").click()
        by_id(By.ID, "priority-show").click()
        WebDriverWait(d, 10).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#priority-result [data-testid=panel-error]"))
        problem = by_id(By.CSS_SELECTOR, "#priority-result [data-testid=panel-error]").text
        assert "at least two segments (got 1)" in problem and "\n" not in problem
    finally:
        assert stop(proc) < 5
