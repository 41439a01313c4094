"""End to end for the dashboard (issue 19): Debian's Chromium, driven by Playwright, against the real schedserver
process with seeded HTTP schedules and scripts and a real loopback target.

Grouped by concern: the token (entry, a wrong one, where it is kept, the keyboard), the overview (what the API
lists, search and filters, refreshing), changing HTTP schedules (create, validation, the live cron preview, edit,
enable/disable, run now, delete), runs (paging, a run's response), scripts (trigger and output, reload with its
dry run first), safety (HTML in data is text, nothing the Content-Security-Policy refuses, read-only tokens) and
small screens. One server, target and browser are shared by the module; every test has a browser context of its
own and saves a screenshot of where it ended in its tmp_path. Every wait is bounded; all traffic stays on
127.0.0.1; no browser is downloaded (Playwright drives /usr/bin/chromium).
"""

from __future__ import annotations

import json
import os
import shutil
import socketserver
import stat
import threading
import time
import uuid
import wsgiref.simple_server
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from e2e_helpers import CURL_PATH, DEFAULT_TOKEN, ServerProcess, TargetServer, wait_until

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-default-apps", "--disable-sync",
                 "--metrics-recording-only", "--mute-audio"]

if not os.path.exists(CHROMIUM):
    pytest.skip(f"{CHROMIUM} is missing (Debian: apt-get install chromium)", allow_module_level=True)
try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:
    pytest.skip("the playwright package is missing (pip install playwright; no browser download needed)",
                allow_module_level=True)

import schedserver  # after the skips

EXEC = "/api/v1/exec/schedules"
READ_TOKEN = "e2e-read-token-2b7d90e4"
NEVER = "0 0 0 1 1 *"                   # does not fire while the tests run (unless at New Year's midnight)
XSS = "<img src=x onerror=alert(1)>"
WAIT_MS = 10_000                        # Playwright's bound on each wait and action
TOKEN_KEY = "schedserver.token"


###############################################################################
# Fixtures ####################################################################
###############################################################################

def write_script(root: Path, rel: str, text: str) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.lstrip("\n"))
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.fixture(scope="module")
def target():
    with TargetServer() as server:
        yield server


@pytest.fixture(scope="module")
def scripts_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("scripts")
    write_script(root, "ops/hello.sh", f"""
#!/bin/sh
# @schedule {NEVER}
# @description says hello <img src=x onerror=alert(3)>
echo "hello from the dashboard test"
echo "a note on stderr" >&2
""")
    write_script(root, "ops/guarded.sh", f"""
#!/bin/sh
# @schedule {NEVER}
# @token
echo "guarded ran"
""")
    write_script(root, "ops/tick.sh", """
#!/bin/sh
# @schedule */2 * * * * *
# @description ticks every 2 seconds
echo tick
""")
    return root


@pytest.fixture(scope="module")
def server(tmp_path_factory, scripts_dir, target):
    data = tmp_path_factory.mktemp("data")
    process = ServerProcess(data, scripts_dir, env={"SCHEDSERVER_READ_TOKEN": READ_TOKEN})
    with process:
        process.seeded = {
            "ping": create(process, "*/2 * * * * *", target.url + "/ping", name="ping"),
            "nightly": create(process, "0 30 2 * * *", target.url + "/report", name="nightly report",
                              timezone="Europe/Berlin", headers={"X-Team": "ops"}),
        }
        yield process


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
                                              timeout=30_000)
        yield launched
        launched.close()


class Tab:
    """One browser tab on the dashboard, with what it reported: JS dialogs, console errors, page errors."""

    def __init__(self, page, server: ServerProcess):
        self.page = page
        self.server = server
        self.dialogs: list[str] = []
        self.console_errors: list[str] = []
        self.page_errors: list[str] = []
        page.on("dialog", self._dialog)
        page.on("console", lambda m: self.console_errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.page_errors.append(str(e)))

    def _dialog(self, dialog) -> None:
        self.dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()

    def open(self, route: str = "#/", token: str | None = None) -> None:
        """Load the page at `route`, signed in with `token` (kept in the tab's sessionStorage) if given."""
        if token is not None:
            self.page.add_init_script(f"sessionStorage.setItem({json.dumps(TOKEN_KEY)}, {json.dumps(token)})")
        self.page.goto(self.server.url + "/" + route)

    def go(self, route: str) -> None:
        self.page.evaluate("(route) => { location.hash = route; }", route)

    def csp_violations(self) -> list[str]:
        return self.page.evaluate("window.__cspViolations || []")

    def scroll_fits(self) -> bool:
        return self.page.evaluate("document.documentElement.scrollWidth <= document.documentElement.clientWidth")


RECORD_CSP = """
window.SCHEDSERVER_REFRESH_MS = 400;
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation",
  (e) => window.__cspViolations.push(`${e.violatedDirective} ${e.blockedURI}`));
"""


def new_tab(browser, server, tmp_path, width=1280, height=900):
    context = browser.new_context(viewport={"width": width, "height": height}, timezone_id="Europe/Berlin",
                                  locale="en-US", service_workers="block")
    context.set_default_timeout(WAIT_MS)
    page = context.new_page()
    page.add_init_script(RECORD_CSP)
    return context, Tab(page, server)


@pytest.fixture
def tab(browser, server, tmp_path):
    """A fresh browser context (its own sessionStorage) at 1280x900; a screenshot at the end; no JS errors."""
    context, opened = new_tab(browser, server, tmp_path)
    yield opened
    finish(context, opened, tmp_path)


@pytest.fixture
def phone(browser, server, tmp_path):
    """As `tab`, 375 px wide."""
    context, opened = new_tab(browser, server, tmp_path, width=375, height=812)
    yield opened
    finish(context, opened, tmp_path)


def finish(context, opened: Tab, tmp_path: Path) -> None:
    try:
        opened.page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
    finally:
        context.close()
    assert not opened.page_errors, f"uncaught errors in the page: {opened.page_errors}"
    assert not opened.dialogs, f"the page opened dialogs: {opened.dialogs}"


expect.set_options(timeout=WAIT_MS)


###############################################################################
# Helpers #####################################################################
###############################################################################

def ok(response, status: int = 200):
    assert response.status_code == status, response.text
    return response.json()


def create(server: ServerProcess, cron: str, url: str, **fields) -> dict:
    request = {"url": url}
    if "headers" in fields:
        request["headers"] = fields.pop("headers")
    return ok(server.api("POST", CURL_PATH, json={"cron": cron, "request": request, **fields}), 201)


def schedule(server: ServerProcess, schedule_id: str) -> dict:
    return ok(server.api("GET", f"{CURL_PATH}/{schedule_id}"))


def row(tab: Tab, key: str):
    return tab.page.locator(f'table.schedules tr[data-key="{key}"]')


def sign_in_by_form(tab: Tab, token: str) -> None:
    tab.page.get_by_label("API token").fill(token)
    tab.page.get_by_role("button", name="Sign in").click()


def overview_ready(tab: Tab) -> None:
    expect(tab.page.get_by_role("heading", name="Schedules", level=1)).to_be_visible()
    expect(tab.page.locator("p.count")).to_contain_text(" of ")


###############################################################################
# The token ###################################################################
###############################################################################

def test_the_page_loads_without_a_token_and_asks_for_one(tab, server):
    answer = server.session.get(server.url + "/", timeout=5)
    assert answer.status_code == 200 and "default-src 'none'" in answer.headers["Content-Security-Policy"]
    tab.open()
    field = tab.page.get_by_label("API token")
    expect(field).to_be_visible()
    assert field.get_attribute("type") == "password"
    assert tab.page.evaluate(f"sessionStorage.getItem({json.dumps(TOKEN_KEY)})") is None
    expect(tab.page.locator("table.schedules")).to_have_count(0)


def test_a_right_token_signs_in_and_is_kept_in_this_tab_only(tab, server, browser):
    tab.open()
    sign_in_by_form(tab, server.token)
    overview_ready(tab)
    expect(tab.page.locator(".role")).to_have_text("admin")
    page = tab.page
    assert page.evaluate(f"sessionStorage.getItem({json.dumps(TOKEN_KEY)})") == server.token
    assert page.evaluate("localStorage.length") == 0
    assert page.evaluate("document.cookie") == ""
    assert server.token not in page.url
    page.reload()                                   # the same tab: still signed in
    overview_ready(tab)
    other = page.context.new_page()                 # another tab: asks again
    other.goto(server.url + "/")
    expect(other.get_by_label("API token")).to_be_visible()
    other.close()
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_label("API token")).to_be_visible()
    assert page.evaluate(f"sessionStorage.getItem({json.dumps(TOKEN_KEY)})") is None


def test_a_wrong_token_is_refused_with_the_servers_message(tab, server):
    refused = server.api("GET", CURL_PATH, token="not-the-token")
    assert refused.status_code == 401
    tab.open()
    sign_in_by_form(tab, "not-the-token")
    error = tab.page.locator("#token-error")
    expect(error).to_contain_text("That token was refused")
    expect(error).to_contain_text(refused.json()["message"])
    assert tab.page.evaluate(f"sessionStorage.getItem({json.dumps(TOKEN_KEY)})") is None
    expect(tab.page.locator("table.schedules")).to_have_count(0)


def test_the_keyboard_alone_signs_in_and_opens_a_schedule(tab, server):
    tab.open()
    page = tab.page
    for _ in range(6):                              # bounded: the token field is among the first stops
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == "token":
            break
    assert page.evaluate("document.activeElement.id") == "token"
    page.keyboard.type(server.token)
    page.keyboard.press("Enter")
    overview_ready(tab)
    link = row(tab, f"http:{server.seeded['nightly']['id']}").get_by_role("link")
    expect(link).to_be_visible()
    for _ in range(40):                             # Tab through the toolbar to the schedule's link
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.textContent") == "nightly report":
            break
    assert page.evaluate("document.activeElement.textContent") == "nightly report"
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline not in ("", "none"), "focus must be visible"
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="nightly report", level=1)).to_be_visible()
    assert page.url.endswith(f"#/http/{server.seeded['nightly']['id']}")


###############################################################################
# The overview ################################################################
###############################################################################

def test_the_overview_lists_what_the_api_lists(tab, server):
    tab.open(token=server.token)
    overview_ready(tab)
    http = ok(server.api("GET", CURL_PATH))["items"]
    scripts = ok(server.api("GET", EXEC + "/list"))["schedules"]
    for item in http:
        shown = row(tab, f"http:{item['id']}")
        expect(shown).to_be_visible()
        expect(shown.get_by_role("link")).to_have_text(item["name"] or item["request"]["url"])
        expect(shown).to_contain_text(item["cron"])
        expect(shown).to_contain_text(item["timezone"])
    for item in scripts:
        shown = row(tab, f"script:{item['scriptRel']}")
        expect(shown.get_by_role("link")).to_have_text(item["scriptRel"])
        expect(shown).to_contain_text(item["expression"])
    expect(tab.page.locator("table.schedules tbody tr")).to_have_count(len(http) + len(scripts))
    expect(tab.page.locator("p.count")).to_contain_text(f"{len(http) + len(scripts)} of {len(http) + len(scripts)}")
    # The plain-English description, the zones, last status and the strip of marks.
    ping = row(tab, f"http:{server.seeded['ping']['id']}")
    expect(ping).to_contain_text("every 2 seconds")
    expect(ping.locator(".badge")).to_have_text("ok")
    expect(ping.locator("ol.strip li.mark.st-ok").first).to_be_attached()
    nightly = row(tab, f"http:{server.seeded['nightly']['id']}")
    expect(nightly).to_contain_text("at 02:30")
    expect(nightly.locator(".badge")).to_have_text("never run")
    expect(nightly).to_contain_text("Europe/Berlin")
    assert "in " in nightly.locator("time.rel").text_content()
    expect(row(tab, "script:ops/tick.sh")).to_contain_text("every 2 seconds")


def test_search_and_the_kind_and_status_filters_narrow_the_overview(tab, server):
    tab.open(token=server.token)
    overview_ready(tab)
    ping, nightly = (row(tab, f"http:{server.seeded[name]['id']}") for name in ("ping", "nightly"))
    expect(ping.locator(".badge")).to_have_text("ok")
    page = tab.page
    page.get_by_label("Search").fill("nightly")
    expect(nightly).to_be_visible()
    expect(ping).to_have_count(0)
    expect(row(tab, "script:ops/tick.sh")).to_have_count(0)
    page.get_by_label("Search").fill("")
    page.get_by_label("Kind").select_option("script")
    expect(row(tab, "script:ops/tick.sh")).to_be_visible()
    expect(ping).to_have_count(0)
    page.get_by_label("Kind").select_option("all")
    page.get_by_label("Last status").select_option("never")
    expect(nightly).to_be_visible()
    expect(ping).to_have_count(0)
    page.get_by_label("Search").fill("no schedule is called this")
    expect(page.locator("p.empty")).to_have_text("No schedule matches the search and filters.")


def test_the_overview_refreshes_itself_and_pauses_while_the_tab_is_hidden(tab, server, target):
    page = tab.page
    page.add_init_script("""
(() => {
  let hidden = false;
  Object.defineProperty(document, "visibilityState", {get: () => (hidden ? "hidden" : "visible")});
  Object.defineProperty(document, "hidden", {get: () => hidden});
  window.__setHidden = (value) => { hidden = value; document.dispatchEvent(new Event("visibilitychange")); };
})();
""")
    lists: list[float] = []
    page.on("request", lambda r: lists.append(time.monotonic()) if r.url.endswith(CURL_PATH) else None)
    tab.open(token=server.token)
    overview_ready(tab)
    added = create(server, NEVER, target.url + "/late", name="appears by itself")
    expect(row(tab, f"http:{added['id']}")).to_be_visible()             # no reload: the page refreshed
    page.evaluate("window.__setHidden(true)")
    page.wait_for_timeout(600)                      # a refresh under way when it was hidden may still end
    quiet_since = len(lists)
    page.wait_for_timeout(1500)                     # more than three refresh intervals (400 ms here)
    assert len(lists) == quiet_since, "the page must not refresh while hidden"
    with page.expect_request(lambda r: r.url.endswith(CURL_PATH), timeout=5000):
        page.evaluate("window.__setHidden(false)")      # visible again: a refresh at once


###############################################################################
# Changing HTTP schedules #####################################################
###############################################################################

def test_creating_with_a_bad_cron_shows_the_apis_message_by_the_field(tab, server, target):
    before = ok(server.api("GET", CURL_PATH))["meta"]["total"]
    expected = server.api("POST", CURL_PATH, json={"cron": "every blue moon", "request": {"url": target.url}})
    assert expected.status_code == 400 and expected.json()["error"] == "INVALID_CRON_EXPRESSION"
    tab.open("#/new", token=server.token)
    page = tab.page
    page.get_by_label("Cron expression").fill("every blue moon")
    page.get_by_label("URL").fill(target.url + "/bad")
    page.get_by_role("button", name="Create schedule").click()
    message = expected.json()["message"]
    expect(page.locator("#form-error")).to_contain_text(message)
    expect(page.locator("#f-cron-error")).to_have_text(f"{message} (400 INVALID_CRON_EXPRESSION)")
    expect(page.locator("#f-cron")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#f-cron")).to_be_focused()
    assert ok(server.api("GET", CURL_PATH))["meta"]["total"] == before
    page.get_by_label("Cron expression").fill("*/10 * * * * *")       # a field the API names: the URL
    page.get_by_label("URL").fill("ftp://example.com/")
    page.get_by_role("button", name="Create schedule").click()
    expect(page.locator("#f-url-error")).to_contain_text("request.url")
    expect(page.locator("#f-url")).to_have_attribute("aria-invalid", "true")
    assert ok(server.api("GET", CURL_PATH))["meta"]["total"] == before


def test_the_form_previews_the_next_five_fires_as_the_cron_and_zone_are_typed(tab, server):
    tab.open("#/new", token=server.token)
    page = tab.page
    page.get_by_label("Cron expression").fill("0 30 2 * * *")
    page.get_by_label("Time zone").fill("America/New_York")
    expected = ok(server.api("GET", "/api/v1/cron/preview",
                             params={"expr": "0 30 2 * * *", "timezone": "America/New_York", "n": 5}))
    preview = page.locator("#cron-preview")
    expect(preview).to_contain_text(f"{expected['description']} (America/New_York)")
    times = preview.locator("ol li time")
    expect(times).to_have_count(5)
    assert [times.nth(i).get_attribute("datetime") for i in range(5)] == [f["at"] for f in expected["next"]]
    page.get_by_label("Cron expression").fill("61 * * * * *")
    refused = server.api("GET", "/api/v1/cron/preview", params={"expr": "61 * * * * *"})
    expect(preview.locator(".problem")).to_have_text(refused.json()["message"])


def test_a_schedule_created_in_the_form_is_in_the_api(tab, server, target):
    tab.open("#/new", token=server.token)
    page = tab.page
    name = f"created {uuid.uuid4().hex[:6]}"
    page.get_by_label("Name").fill(name)
    page.get_by_label("Cron expression").fill("0 15 * * * *")
    page.get_by_label("Time zone").fill("Europe/Berlin")
    page.get_by_label("Enabled").uncheck()
    page.get_by_label("Method").select_option("POST")
    page.get_by_label("URL").fill(target.url + "/created")
    page.get_by_label("Headers").fill("X-Team: ops\nX-Trace: 1")
    page.get_by_label("Body", exact=True).fill('{"report": "daily", "n": 2}')
    page.get_by_label("The body is JSON").check()
    page.get_by_label("Timeout (seconds)").fill("12.5")
    page.get_by_label("Retries after a failed run").fill("2")
    page.get_by_label("When a run is due while the last still goes").select_option("allow")
    page.get_by_role("button", name="Create schedule").click()
    expect(page.get_by_role("heading", name=name, level=1)).to_be_visible()
    created_id = page.url.rsplit("#/http/", 1)[1]
    stored = schedule(server, created_id)
    assert (stored["name"], stored["cron"], stored["timezone"], stored["enabled"]) == \
        (name, "0 15 * * * *", "Europe/Berlin", False)
    assert stored["request"] == {"url": target.url + "/created", "method": "POST",
                                 "headers": {"X-Team": "ops", "X-Trace": "1"}, "json": {"report": "daily", "n": 2},
                                 "timeout": 12.5, "follow_redirects": False}
    assert stored["retry"]["count"] == 2 and stored["overlap"] == "allow"
    expect(page.locator("dl.settings")).to_contain_text("X-Trace: 1")


def test_editing_a_schedule_changes_it_in_the_api_and_keeps_the_rest(tab, server, target):
    made = create(server, NEVER, target.url + "/edit", name="before edit", headers={"X-Keep": "yes"})
    tab.open(f"#/http/{made['id']}/edit", token=server.token)
    page = tab.page
    expect(page.get_by_label("Name")).to_have_value("before edit")
    expect(page.get_by_label("Headers")).to_have_value("X-Keep: yes")
    page.get_by_label("Name").fill("after edit")
    page.get_by_label("Cron expression").fill("0 0 9 * * MON-FRI")
    expect(page.locator("#cron-preview")).to_contain_text("at 09:00 on Monday through Friday")
    page.get_by_role("button", name="Save changes").click()
    expect(page.get_by_role("heading", name="after edit", level=1)).to_be_visible()
    stored = schedule(server, made["id"])
    assert (stored["name"], stored["cron"]) == ("after edit", "0 0 9 * * MON-FRI")
    assert stored["request"]["headers"] == {"X-Keep": "yes"} and stored["created_at"] == made["created_at"]
    tab.go(f"#/http/{made['id']}/edit")             # nothing changed: said so, nothing sent
    expect(page.get_by_label("Name")).to_have_value("after edit")
    page.get_by_role("button", name="Save changes").click()
    expect(page.locator("#form-error")).to_have_text("Nothing was changed.")


def test_disabling_and_enabling_is_reflected_in_the_api(tab, server, target):
    made = create(server, NEVER, target.url + "/toggle", name="toggled")
    tab.open(f"#/http/{made['id']}", token=server.token)
    page = tab.page
    page.get_by_role("button", name="Disable").click()
    expect(page.get_by_role("button", name="Enable")).to_be_visible()
    assert schedule(server, made["id"])["enabled"] is False
    expect(page.locator("dl.settings")).to_contain_text("Enabledno")
    page.get_by_role("button", name="Enable").click()
    expect(page.get_by_role("button", name="Disable")).to_be_visible()
    assert schedule(server, made["id"])["enabled"] is True


def test_run_now_sends_the_request_and_shows_the_response(tab, server, target):
    made = create(server, NEVER, target.url + "/run-now", name="run by hand")
    tab.open(f"#/http/{made['id']}", token=server.token)
    page = tab.page
    page.get_by_role("button", name="Run now").click()
    result = page.locator(".result")
    expect(result.locator("h2 .badge")).to_have_text("ok")
    expect(result.locator("pre.response-body")).to_have_text("recorded\n")
    expect(result).to_contain_text("manual")
    assert len(target.received("/run-now")) == 1
    runs = ok(server.api("GET", f"{CURL_PATH}/{made['id']}/runs"))["items"]
    assert [(r["trigger"], r["status"], r["status_code"]) for r in runs] == [("manual", "ok", 200)]
    run_row = page.locator(f'table.runs tr[data-key="{runs[0]["run_id"]}"]')
    expect(run_row).to_contain_text("200")
    run_row.get_by_role("button", name="Details").click()
    dialog = page.locator("dialog.modal")
    expect(dialog.locator("pre.response-headers")).to_contain_text("Content-Type: text/plain")
    page.keyboard.press("Escape")
    expect(dialog).to_have_count(0)


def test_deleting_asks_first_and_then_removes_the_schedule(tab, server, target):
    made = create(server, NEVER, target.url + "/delete", name="to be deleted")
    tab.open(f"#/http/{made['id']}", token=server.token)
    page = tab.page
    page.get_by_role("button", name="Delete…").click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text("to be deleted")
    dialog.get_by_role("button", name="Cancel").click()
    expect(dialog).to_have_count(0)
    assert schedule(server, made["id"])["id"] == made["id"]
    page.get_by_role("button", name="Delete…").click()
    page.get_by_role("dialog").get_by_role("button", name="Delete").click()
    expect(page.get_by_role("heading", name="Schedules", level=1)).to_be_visible()
    assert server.api("GET", f"{CURL_PATH}/{made['id']}").status_code == 404
    expect(row(tab, f"http:{made['id']}")).to_have_count(0)


###############################################################################
# Runs ########################################################################
###############################################################################

def test_runs_are_paged_with_next_cursor_and_show_code_duration_attempt_and_error(tab, server, target):
    made = create(server, NEVER, target.url + "/paged", name="many runs")
    for _ in range(23):
        ok(server.api("POST", f"{CURL_PATH}/{made['id']}/run"))
    failing = create(server, NEVER, "http://127.0.0.1:9/", name="unreachable")   # discard port: refused
    failed = ok(server.api("POST", f"{CURL_PATH}/{failing['id']}/run"))
    assert failed["status"] == "error" and failed["error"]
    tab.open(f"#/http/{made['id']}", token=server.token)
    page = tab.page
    rows = page.locator("table.runs tbody tr")
    expect(rows).to_have_count(20)
    first = rows.first
    expect(first).to_contain_text("manual")
    expect(first).to_contain_text("200")
    expect(first).to_contain_text(" ms")
    expect(page.locator("ol.strip li.mark")).to_have_count(20)
    page.get_by_role("button", name="Older runs").click()
    expect(rows).to_have_count(23)
    expect(page.get_by_role("button", name="Older runs")).to_be_hidden()
    tab.go(f"#/http/{failing['id']}")
    expect(page.locator("table.runs tbody tr").first).to_contain_text(failed["error"])
    expect(page.locator("table.runs tbody tr .badge").first).to_have_text("error")


###############################################################################
# Scripts #####################################################################
###############################################################################

def test_a_script_triggered_from_its_page_shows_its_output(tab, server):
    tab.open("#/script/" + "ops%2Fhello.sh", token=server.token)
    page = tab.page
    expect(page.get_by_role("heading", name="ops/hello.sh", level=1)).to_be_visible()
    page.get_by_role("button", name="Run now").click()
    result = page.locator(".result")
    expect(result.locator("h2 .badge")).to_have_text("ok")
    expect(result.locator("pre.stdout")).to_have_text("hello from the dashboard test\n")
    expect(result.locator("pre.stderr")).to_have_text("a note on stderr\n")
    entries = ok(server.api("GET", EXEC + "/history", params={"scriptPath": "ops/hello.sh"}))["entries"]
    assert entries[0]["trigger"] == "manual" and entries[0]["status"] == "ok"
    run_row = page.locator(f'table.runs tr[data-key="{entries[0]["runId"]}"]')
    expect(run_row).to_contain_text("hello from the dashboard test")
    run_row.get_by_role("button", name="Output").click()
    expect(page.locator("dialog.modal pre.stdout")).to_have_text("hello from the dashboard test\n")


def test_a_script_that_declares_token_runs_only_when_forced_and_the_role_stays_admin(tab, server):
    tab.open("#/script/" + "ops%2Fguarded.sh", token=server.token)
    page = tab.page
    page.get_by_role("button", name="Run now").click()
    result = page.locator(".result")
    expect(result.locator(".problem")).to_contain_text("@token")
    expect(result.locator(".problem")).to_contain_text("403 FORBIDDEN")
    expect(page.locator(".role")).to_have_text("admin")
    assert ok(server.api("GET", EXEC + "/history", params={"scriptPath": "ops/guarded.sh"}))["entries"] == []
    result.get_by_role("button", name="Run it anyway (force)").click()
    expect(result.locator("pre.stdout")).to_have_text("guarded ran\n")
    expect(page.get_by_role("button", name="Run now")).to_be_visible()


def test_reload_shows_the_dry_run_diff_and_applies_only_when_asked(tab, server, scripts_dir):
    write_script(scripts_dir, "ops/added.sh", "#!/bin/sh\n# @schedule 0 0 0 1 1 *\necho added\n")
    write_script(scripts_dir, "ops/broken.sh", "#!/bin/sh\n# @schedule every blue moon\necho broken\n")
    try:
        tab.open(token=server.token)
        overview_ready(tab)
        page = tab.page
        page.get_by_role("button", name="Reload scripts…").click()
        dialog = page.get_by_role("dialog")
        expect(dialog.locator(".diff-added")).to_contain_text("ops/added.sh")
        expect(dialog.locator(".diff-failed")).to_contain_text("ops/broken.sh")
        expect(dialog.locator(".diff-failed")).to_contain_text("Invalid cron expression")
        listed = [s["scriptRel"] for s in ok(server.api("GET", EXEC + "/list"))["schedules"]]
        assert "ops/added.sh" not in listed, "a dry run must not register anything"
        dialog.get_by_role("button", name="Apply").click()
        expect(page.locator(".notice")).to_contain_text("1 added")
        listed = [s["scriptRel"] for s in ok(server.api("GET", EXEC + "/list"))["schedules"]]
        assert "ops/added.sh" in listed and "ops/broken.sh" not in listed
        expect(row(tab, "script:ops/added.sh")).to_be_visible()
    finally:
        for rel in ("ops/added.sh", "ops/broken.sh"):
            (scripts_dir / rel).unlink()
        ok(server.api("POST", EXEC + "/reload", json={"dry_run": False}))


###############################################################################
# Safety ######################################################################
###############################################################################

def test_html_in_names_urls_headers_and_descriptions_is_shown_as_text(tab, server, target):
    url = target.url + "/x?q=<script>alert(2)</script>"
    made = create(server, NEVER, url, name=XSS, headers={"X-Html": "<b>bold</b>"})
    tab.open(token=server.token)
    overview_ready(tab)
    page = tab.page
    shown = row(tab, f"http:{made['id']}")
    expect(shown.get_by_role("link")).to_have_text(XSS)
    expect(shown).to_contain_text("<script>alert(2)</script>")
    expect(row(tab, "script:ops/hello.sh")).to_contain_text("says hello <img src=x onerror=alert(3)>")
    assert page.locator("main img, main script, main b").count() == 0
    shown.get_by_role("link").click()
    expect(page.get_by_role("heading", name=XSS, level=1)).to_be_visible()
    expect(page.locator("dl.settings")).to_contain_text("X-Html: <b>bold</b>")
    page.get_by_role("button", name="Delete…").click()
    expect(page.get_by_role("dialog").locator("strong")).to_have_text(XSS)
    page.keyboard.press("Escape")
    assert page.locator("main img, main script, main b, dialog img").count() == 0
    assert tab.dialogs == []
    assert tab.csp_violations() == []
    assert tab.console_errors == [], "nothing refused by the Content-Security-Policy, no failed requests"


def test_a_read_only_token_sees_everything_but_no_buttons_that_change_state(tab, server):
    tab.open()
    sign_in_by_form(tab, READ_TOKEN)
    overview_ready(tab)
    page = tab.page
    expect(page.locator(".role")).to_have_text("read-only")
    nightly = server.seeded["nightly"]
    expect(row(tab, f"http:{nightly['id']}")).to_be_visible()
    expect(row(tab, "script:ops/hello.sh")).to_be_visible()
    expect(page.get_by_role("link", name="New HTTP schedule")).to_have_count(0)
    expect(page.get_by_role("button", name="Reload scripts…")).to_have_count(0)
    tab.go(f"#/http/{nightly['id']}")
    expect(page.locator("dl.settings")).to_contain_text("X-Team: [redacted]")
    for name in ("Disable", "Enable", "Run now", "Delete…"):
        expect(page.get_by_role("button", name=name)).to_have_count(0)
    expect(page.get_by_role("link", name="Edit")).to_have_count(0)
    tab.go("#/script/ops%2Fhello.sh")
    expect(page.get_by_role("heading", name="ops/hello.sh", level=1)).to_be_visible()
    expect(page.locator("dl.settings")).to_contain_text("says hello")
    expect(page.get_by_role("button", name="Run now")).to_have_count(0)
    tab.go("#/new")
    expect(page.get_by_role("heading", name="Read-only token", level=1)).to_be_visible()
    expect(page.locator("form.form")).to_have_count(0)


def test_every_page_fits_a_375_px_wide_screen_and_a_tablet(phone, server):
    phone.open(token=server.token)
    overview_ready(phone)
    page = phone.page
    expect(row(phone, f"http:{server.seeded['ping']['id']}").locator("ol.strip li.mark").first).to_be_attached()
    assert phone.scroll_fits(), "the overview scrolls sideways at 375 px"
    for route, ready in ((f"#/http/{server.seeded['nightly']['id']}", "dl.settings"),
                         (f"#/http/{server.seeded['ping']['id']}", "table.runs tbody tr"),
                         ("#/script/ops%2Fhello.sh", "dl.settings"),
                         ("#/new", "#f-cron")):
        phone.go(route)
        expect(page.locator(ready).first).to_be_visible()
        assert phone.scroll_fits(), f"{route} scrolls sideways at 375 px"
    page.set_viewport_size({"width": 900, "height": 800})      # a tablet: the tables are cards there too
    for route in ("#/", f"#/http/{server.seeded['ping']['id']}"):
        phone.go(route)
        expect(page.locator("table.grid tbody tr").first).to_be_visible()
        assert phone.scroll_fits(), f"{route} scrolls sideways at 900 px"


###############################################################################
# Mounted under a prefix ######################################################
###############################################################################

class ThreadingWSGIServer(socketserver.ThreadingMixIn, wsgiref.simple_server.WSGIServer):
    daemon_threads = True


class QuietHandler(wsgiref.simple_server.WSGIRequestHandler):
    def log_message(self, format, *args):
        pass


def test_the_dashboard_works_mounted_under_a_prefix(browser, tmp_path):
    import bottle

    (tmp_path / "scripts").mkdir()
    config = schedserver.Config(data_dir=str(tmp_path / "data"), scripts_dir=str(tmp_path / "scripts"),
                                tokens=(DEFAULT_TOKEN,), port=0, shutdown_grace_seconds=2)
    with schedserver.Server(config) as embedded:
        host = bottle.Bottle()
        host.mount("/scheduler", embedded.wsgi_app)
        httpd = wsgiref.simple_server.make_server("127.0.0.1", 0, host, server_class=ThreadingWSGIServer,
                                                  handler_class=QuietHandler)
        thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        context.set_default_timeout(WAIT_MS)
        try:
            base = f"http://127.0.0.1:{httpd.server_address[1]}/scheduler/"
            made = embedded.http.create({"cron": NEVER, "name": "mounted",
                                         "request": {"url": "http://127.0.0.1:9/"}})
            page = context.new_page()
            requested: list[str] = []
            page.on("request", lambda r: requested.append(r.url))
            page.goto(base)
            page.get_by_label("API token").fill(DEFAULT_TOKEN)
            page.get_by_role("button", name="Sign in").click()
            link = page.locator(f'tr[data-key="http:{made["id"]}"]').get_by_role("link")
            expect(link).to_have_text("mounted")
            link.click()
            expect(page.get_by_role("heading", name="mounted", level=1)).to_be_visible()
            page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
            assert requested and all(url.startswith(base) or url.startswith("data:") for url in requested), \
                [url for url in requested if not url.startswith(base)]
        finally:
            context.close()
            httpd.shutdown()
            httpd.server_close()
            thread.join(timeout=5)


###############################################################################
# The README's screenshots ####################################################
###############################################################################

class VariedTarget(BaseHTTPRequestHandler):
    """/ok answers 200 with JSON, /fail 500, /slow after 2.5 s (so runs due meanwhile are skipped), /flaky 503 to
    every other request (so a run fails and its retry succeeds)."""

    protocol_version = "HTTP/1.0"
    flaky = 0

    def do_GET(self) -> None:
        if self.path.startswith("/slow"):
            time.sleep(2.5)
        status = 500 if self.path.startswith("/fail") else 200
        if self.path.startswith("/flaky"):
            VariedTarget.flaky += 1
            status = 503 if VariedTarget.flaky % 2 else 200
        body = b'{"status": "ok", "queued": 0}\n' if status == 200 else b'{"error": "upstream unavailable"}\n'
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET

    def log_message(self, format, *args):
        pass


def test_the_readme_screenshots_from_a_busy_server(browser, tmp_path):
    """Takes the README's two pictures (the overview; a schedule's strip and runs) from a server whose schedules
    have run for a while, and checks what they show. SCHEDSERVER_DOCS_SCREENSHOTS=1 also writes them to docs/."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), VariedTarget)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    scripts = tmp_path / "scripts"
    write_script(scripts, "ops/backup.sh", """
#!/bin/sh
# @schedule */2 * * * * *
# @description copies the data dir to the backup host
echo "backed up 3 files"
""")
    write_script(scripts, "ops/cleanup.sh", """
#!/bin/sh
# @schedule */3 * * * * *
# @description removes old exports
[ $(( $(date +%s) % 4 )) -eq 0 ] && { echo "disk busy, try later" >&2; exit 1; }
echo "removed 2 exports"
""")
    write_script(scripts, "reports/weekly.sh", """
#!/bin/sh
# @schedule 0 0 7 * * MON
# @description mails the weekly report
echo sent
""")
    try:
        with ServerProcess(tmp_path / "data", scripts) as server:
            def add(cron: str, path: str, name: str, request: dict | None = None, **fields) -> dict:
                body = {"cron": cron, "name": name, "request": {"url": base + path, **(request or {})}, **fields}
                return ok(server.api("POST", CURL_PATH, json=body), 201)

            add("0 30 2 * * *", "/report", "nightly report", timezone="Europe/Berlin")
            add("*/2 * * * * *", "/slow/export", "export to warehouse", {"timeout": 10})
            add("*/3 * * * * *", "/fail/billing", "billing webhook", {"method": "POST"})
            flaky = add("*/4 * * * * *", "/flaky/orders", "sync orders", {"headers": {"X-Team": "shop"}},
                        retry={"count": 1, "min_backoff_seconds": 1})
            health = add("* * * * * *", "/ok/health", "health check", timezone="America/New_York")
            add("0 0 9 * * MON-FRI", "/ok/standup", "stand-up reminder", enabled=False)

            context = browser.new_context(viewport={"width": 1280, "height": 760}, timezone_id="Europe/Berlin",
                                          locale="en-GB")
            context.set_default_timeout(WAIT_MS)
            context.add_init_script(f"sessionStorage.setItem('{TOKEN_KEY}', '{server.token}')")
            try:
                page = context.new_page()
                page.goto(server.url + "/#/")
                page.wait_for_function("(selector) => document.querySelectorAll(selector).length >= 12",
                                       arg=f'tr[data-key="http:{health["id"]}"] ol.strip li.mark',
                                       timeout=30_000)         # a dozen seconds of runs
                assert wait_until(lambda: {r["trigger"] for r in ok(server.api(
                    "GET", f"{CURL_PATH}/{flaky['id']}/runs?limit=50"))["items"]} >= {"cron", "retry"}, timeout=15)
                before = page.locator("p.count").text_content()
                page.wait_for_function("(text) => document.querySelector('p.count').textContent !== text",
                                       arg=before)              # just refreshed: every next run is ahead
                expect(page.locator("table.schedules tbody tr")).to_have_count(9)
                shown = set(page.locator("ol.strip li.mark").evaluate_all(
                    "(marks) => marks.map((m) => m.dataset.status || m.className)"))
                assert any("ok" in s for s in shown) and any("error" in s for s in shown), shown
                overview = tmp_path / "dashboard-overview.png"
                page.screenshot(path=str(overview), full_page=True)

                page.goto(server.url + f"/#/http/{flaky['id']}")
                expect(page.get_by_role("heading", name="sync orders", level=1)).to_be_visible()
                expect(page.locator("table.runs tbody tr").first).to_be_visible()
                expect(page.locator("table.runs tbody").get_by_text("retry").first).to_be_visible()
                top = page.evaluate("""[...document.querySelectorAll('h2')]
                    .find((h) => h.textContent === 'Last 20 runs').getBoundingClientRect().top + window.scrollY""")
                height = page.evaluate("document.documentElement.scrollHeight")
                runs = tmp_path / "dashboard-runs.png"
                page.screenshot(path=str(runs), full_page=True,
                                clip={"x": 0, "y": top - 16, "width": 1280, "height": min(700, height - top + 16)})
            finally:
                context.close()
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert overview.stat().st_size > 10_000 and runs.stat().st_size > 10_000
    if os.environ.get("SCHEDSERVER_DOCS_SCREENSHOTS") == "1":
        docs = Path(__file__).resolve().parent.parent / "docs"
        shutil.copyfile(overview, docs / "dashboard-overview.png")
        shutil.copyfile(runs, docs / "dashboard-runs.png")
