"""The admin page (`/ui/`) in real Chromium against a real data server, with real client
processes so that the farm and the timeline have data: sign in, edit a price, schedule a
change in UTC and in local time, import a file, roll back after the confirmation that lists
the production keys it changes, see a thousand-member farm and a timeline with a measured
spread, and check that a read token cannot edit and that another origin cannot write.

Screenshots go to target/ui-screenshots/."""

import datetime
import http.client
import json
import os
import re
import signal
import time
from zoneinfo import ZoneInfo

import pytest
from playwright.sync_api import expect, sync_playwright

from admin_ui_support import (ADMIN_TOKEN, READ_TOKEN, REPO, Clients, DataServer, OtherOrigin,
                              synthetic_checkins)

CHROMIUM = os.environ.get("LOCKSTEP_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
SHOTS = os.path.join(REPO, "target", "ui-screenshots")
# The whole test, browser included, must end well within CI's patience.
TEST_BUDGET_S = 110
# The browser's time zone: Berlin is never on UTC, so local and UTC times differ on the page.
TIMEZONE = "Europe/Berlin"


class OutOfTime(Exception):
    pass


@pytest.fixture
def budget():
    def expired(*_):
        raise OutOfTime(f"the admin page test ran past {TEST_BUDGET_S} s")
    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(TEST_BUDGET_S)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.fixture
def farm(tmp_path):
    assert os.path.exists(CHROMIUM), f"{CHROMIUM} is missing: apt-get install chromium"
    server = DataServer(tmp_path)
    clients = None
    try:
        server.admin("/v1/admin/put", {"key": "price:apple", "value": "1.25"})
        server.admin("/v1/admin/put", {"key": "price:pear", "value": "2.10"})
        # The clients' check-ins perform the rotations: status alone never rotates.
        clients = Clients(server.url, ["web-1", "web-2", "web-3"])
        server.wait_active("price:apple", "1.25")
        server.clients = clients
        yield server
    finally:
        if clients:
            clients.stop()
        server.stop()


def duration(us):
    """What the page's format.js duration() shows for `us` microseconds."""
    a = abs(us)
    sign = "\u2212" if us < 0 else ""

    def fit(n):
        v = float(f"{n:.3g}")
        return str(int(v)) if v.is_integer() else repr(v)
    if a < 1000:
        return f"{sign}{int(a + 0.5)} µs"
    if a < 1e6:
        return f"{sign}{fit(a / 1000)} ms"
    return f"{sign}{fit(a / 1e6)} s"


def shot(page, name, full_page=False):
    os.makedirs(SHOTS, exist_ok=True)
    page.screenshot(path=os.path.join(SHOTS, name + ".png"), full_page=full_page)


def assert_no_token_in_urls(page):
    """Every URL the page has loaded or fetched so far, and its own."""
    urls = page.evaluate(
        "performance.getEntriesByType('resource').map(e => e.name).concat([location.href])")
    assert len(urls) > 3
    for url in urls:
        assert ADMIN_TOKEN not in url and READ_TOKEN not in url, url


def sign_in(page, token):
    page.fill("#token", token)
    page.click("#signin-form button[type=submit]")


def test_admin_page_in_chromium(farm, budget):
    server = farm
    status = server.admin("/v1/admin/status")
    assert not any(m["name"].startswith("shop-") for m in status["farm"]), status["farm"]
    synthetic_checkins(server, hosts=50, per_host=20, active=status["sync"]["active_version"],
                       staged=status["sync"]["staged_version"])
    # The page itself: its own files only, never cached stale, never framed.
    code, headers, _ = server.request("GET", "/ui/", token=None)
    assert code == 200
    csp = headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "connect-src 'self'" in csp and "'unsafe-inline'" not in csp
    assert headers["Content-Type"].startswith("text/html")
    assert headers["Cache-Control"] == "no-cache" and headers["ETag"]
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("GET", "/ui")
    bare = conn.getresponse()
    assert (bare.status, bare.getheader("Location")) == (308, "/ui/")
    conn.close()
    code, headers, _ = server.request("GET", "/ui/app.js", token=None)
    assert code == 200 and headers["Content-Type"].startswith("text/javascript")
    code, _, _ = server.request("GET", "/ui/app.js", token=None,
                                headers={"If-None-Match": headers["ETag"]})
    assert code == 304
    # No CORS grant: a preflight for an authenticated write from elsewhere gets no allow.
    code, headers, _ = server.request(
        "OPTIONS", "/v1/admin/put", token=None,
        headers={"Origin": "http://elsewhere.test", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization,content-type"})
    assert not any(h.lower().startswith("access-control-allow") for h in headers.keys()), headers

    requests, problems = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1400, "height": 900},
                                      timezone_id=TIMEZONE, locale="en-GB")
        context.set_default_timeout(15_000)
        page = context.new_page()
        page.on("request", lambda r: requests.append(r.url))
        page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
        # The sign-in probe and the refused attempts are answered 400 and 403 on purpose.
        expected = re.compile(r"Failed to load resource: .* status of (400|403)")
        page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}")
                if m.type == "error" and not expected.search(m.text) else None)
        try:
            admin_session(page, server)
            read_only_session(page, server)
            other_origin_cannot_write(context, server)
        except BaseException:
            shot(page, "failure", full_page=True)
            raise
        finally:
            browser.close()

    assert not problems, problems
    for url in requests:
        assert ADMIN_TOKEN not in url and READ_TOKEN not in url, url
    log = server.log_text()
    assert ADMIN_TOKEN not in log and READ_TOKEN not in log


def admin_session(page, server):
    page.goto(server.url + "/ui/")
    expect(page.locator("#signin")).to_be_visible()
    shot(page, "01-sign-in")
    sign_in(page, "not-the-token")
    expect(page.locator("#signin-error")).to_contain_text("refused")
    sign_in(page, ADMIN_TOKEN)
    expect(page.locator("#scope")).to_have_text("admin: read and write")

    # Browse by prefix and edit a price in place.
    page.fill("#prefix", "price:")
    page.click("text=Search")
    apple = page.locator('#keys tr[data-key="price:apple"]')
    expect(apple.locator("td.value")).to_have_text("1.25")
    apple.locator("button.edit").click()
    apple.locator("input.edit-value").fill("0.99")
    apple.locator("button.save").click()
    expect(page.locator("#flash")).to_contain_text("production changed")
    expect(apple.locator("td.value")).to_have_text("0.99")
    assert server.production("price:apple") == "0.99"
    shot(page, "02-production-edited")
    assert_no_token_in_urls(page)

    # Schedule a change for an exact time, typed in UTC, and another typed in local time.
    at = (datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=2)).replace(
        microsecond=0)
    page.fill("#change-key", "price:pear")
    page.fill("#change-value", "1.99")
    page.fill("#change-at", at.strftime("%Y-%m-%dT%H:%M:%S"))
    page.select_option("#change-zone", "utc")
    utc_text = at.strftime("%Y-%m-%d %H:%M:%S UTC")
    expect(page.locator("#change-preview")).to_contain_text(utc_text)
    berlin = at.astimezone(ZoneInfo(TIMEZONE))
    expect(page.locator("#change-preview")).to_contain_text(berlin.strftime("%H:%M:%S"))
    shot(page, "03-schedule-form")
    page.click("#change-submit")
    expect(page.locator("#flash")).to_contain_text("scheduled for " + at.strftime("%Y-%m-%dT%H:%M:%S"))
    page.fill("#change-key", "promo:winter")
    page.fill("#change-value", "on")
    page.select_option("#change-zone", "local")
    page.fill("#change-at", at.strftime("%Y-%m-%dT%H:%M:%S"))
    page.click("#change-submit")
    expect(page.locator("#flash")).to_contain_text("promo:winter: scheduled")
    scheduled = {s["key"]: s for s in server.admin("/v1/admin/scheduled")}
    assert scheduled["price:pear"]["effective_us"] == int(at.timestamp()) * 1_000_000
    # The same wall-clock digits read as Berlin's time.
    in_berlin = at.replace(tzinfo=ZoneInfo(TIMEZONE))
    assert in_berlin.utcoffset() != datetime.timedelta(0)
    assert scheduled["promo:winter"]["effective_us"] == int(in_berlin.timestamp()) * 1_000_000
    assert server.production("price:pear") == "2.10"

    page.click("#nav >> text=Scheduled")
    pear = page.locator('#scheduled tr[data-key="price:pear"]')
    expect(pear).to_contain_text(utc_text)
    expect(pear).to_contain_text(berlin.strftime("%H:%M:%S"))
    shot(page, "04-scheduled")

    # Import a JSON file.
    page.click("#nav >> text=Production")
    path = os.path.join(os.path.dirname(server.log_path), "prices.json")
    with open(path, "w") as f:
        json.dump({"price:kiwi": "0.45", "price:plum": 0.8, "price:fig": "3.00"}, f)
    page.set_input_files("#import-file", path)
    expect(page.locator("#import-summary")).to_contain_text("3 entries")
    page.click("#import-submit")
    expect(page.locator("#flash")).to_contain_text("imported 3 entries, 3 changed")
    assert server.production("price:plum") == "0.8"
    expect(page.locator('#keys tr[data-key="price:kiwi"] td.value')).to_have_text("0.45")
    # A text value that looks like base64 stays text; bytes given as base64 stay bytes.
    page.fill("#change-key", "note:odd")
    page.fill("#change-value", "base64:AAE=")
    page.fill("#change-at", "")
    page.click("#change-submit")
    expect(page.locator("#flash")).to_contain_text("note:odd: production changed")
    assert server.production("note:odd") == "base64:AAE="
    page.check("#change-value-b64")
    page.fill("#change-value", "/wA=")
    page.click("#change-submit")
    deadline = time.time() + 10
    while server.production("note:odd") != {"b64": "/wA="}:
        assert time.time() < deadline, server.production("note:odd")
        time.sleep(0.05)
    page.uncheck("#change-value-b64")
    page.fill("#prefix", "note:")
    page.click("text=Search")
    expect(page.locator('#keys tr[data-key="note:odd"] td.value')).to_have_text("base64 /wA=")
    page.fill("#prefix", "price:")
    page.click("text=Search")
    # CSV as the CLI reads it: a header line, and a quoted value holding a comma and a quote.
    path = os.path.join(os.path.dirname(server.log_path), "more.csv")
    with open(path, "w") as f:
        f.write('key,value\r\nprice:melon,"1,20 ""each"""\r\n')
    page.set_input_files("#import-file", path)
    expect(page.locator("#import-summary")).to_contain_text("1 entry,")
    page.click("#import-submit")
    expect(page.locator("#flash")).to_contain_text("imported 1 entries, 1 changed")
    assert server.production("price:melon") == '1,20 "each"'
    page.once("dialog", lambda d: d.accept())
    page.locator('#keys tr[data-key="price:melon"] button.delete').click()
    expect(page.locator('#keys tr[data-key="price:melon"]')).to_have_count(0)
    # Delete, after the browser's confirmation.
    page.once("dialog", lambda d: d.accept())
    page.locator('#keys tr[data-key="price:fig"] button.delete').click()
    expect(page.locator('#keys tr[data-key="price:fig"]')).to_have_count(0)
    assert server.production("price:fig") is None

    # Versions: diff, then roll back to the version that had apple at 1.25.
    server.wait_active("price:kiwi", "0.45")
    history = server.admin("/v1/admin/history")
    old = next(v["version"] for v in history
               if server.in_version(v["version"], "price:apple") == "1.25")
    newest = history[0]["version"]
    page.click("#nav >> text=Versions")
    page.locator(f'#history tr[data-version="{old}"] input[name=diff-a]').check()
    page.locator(f'#history tr[data-version="{newest}"] input[name=diff-b]').check()
    page.click("#diff-button")
    expect(page.locator('#diff tr[data-key="price:apple"]')).to_contain_text("1.25")
    expect(page.locator('#diff tr[data-key="price:apple"]')).to_contain_text("0.99")
    page.locator(f'#history tr[data-version="{old}"] button.pin').click()
    expect(page.locator(f'#history tr[data-version="{old}"] .tag.pinned')).to_be_visible()
    assert next(v for v in server.admin("/v1/admin/history") if v["version"] == old)["pinned"]
    page.click("#diff-button")
    shot(page, "05-versions-diff", full_page=True)
    page.locator(f'#history tr[data-version="{old}"] button.rollback').click()
    dialog = page.locator("#rollback-dialog")
    expect(dialog).to_be_visible()
    expect(dialog.locator('tr[data-key="price:apple"]')).to_contain_text("0.99")
    expect(dialog.locator('tr[data-key="price:apple"]')).to_contain_text("1.25")
    expect(dialog.locator('tr[data-key="price:kiwi"]')).to_contain_text("removed")
    expect(dialog.locator('tr[data-key="price:kiwi"] code.old')).to_have_text("0.45")
    expect(dialog.locator('tr[data-key="price:plum"]')).to_contain_text("removed")
    shot(page, "06-rollback-confirmation")
    assert server.production("price:apple") == "0.99", "the preview changed production"
    page.click("#rollback-confirm")
    expect(page.locator("#flash")).to_contain_text(f"has the content of version {old}")
    assert server.production("price:apple") == "1.25"
    assert server.production("price:kiwi") is None

    # An urgent change, confirmed first, then an urgent publish (a dismissed one changes
    # nothing). Each is an urgent activation or queued after the one armed; either way the
    # audit says urgent.
    page.click("#nav >> text=Production")
    page.fill("#change-key", "price:fig")
    page.fill("#change-value", "2.50")
    page.check("#change-urgent")
    page.once("dialog", lambda d: d.accept())
    page.click("#change-submit")
    expect(page.locator("#flash")).to_contain_text("urgent")
    assert server.production("price:fig") == "2.50"
    server.wait_active("price:fig", "2.50")
    audit_before = len(server.admin("/v1/admin/audit"))
    page.once("dialog", lambda d: d.dismiss())
    page.click("#publish-urgent")
    page.once("dialog", lambda d: d.accept())
    page.click("#publish-urgent")
    expect(page.locator("#flash")).to_contain_text("live already")
    assert len(server.admin("/v1/admin/audit")) == audit_before

    page.click("#nav >> text=Interval")
    expect(page.locator("#interval-now")).to_have_text("1 s")
    expect(page.locator("#window-now")).to_have_text("500 ms")
    page.fill("#window-input", "400ms")
    page.click("#interval-form button[type=submit]")
    expect(page.locator("#window-now")).to_have_text("400 ms")
    expect(page.locator("#flash")).to_contain_text("minimum retrieval window 400ms")
    assert server.admin("/v1/admin/status")["sync"]["min_window_us"] == 400_000
    shot(page, "07-interval")

    # The farm: a thousand synthetic members, every other one checking in again so that the
    # others (silent past the stale threshold by now) show greyed, and the three real clients.
    deadline = time.time() + 20
    while True:
        shops = [m for m in server.admin("/v1/admin/status")["farm"]
                 if m["name"].startswith("shop-")]
        assert len(shops) == 1000, len(shops)
        if all(m["stale"] for m in shops):
            break
        assert time.time() < deadline, "the synthetic members never went stale"
        time.sleep(0.2)
    status = server.admin("/v1/admin/status")
    # They report what real clients do once the staged version is active: it, nothing staged.
    synthetic_checkins(server, hosts=50, per_host=20, active=status["sync"]["staged_version"],
                       staged=0, only=lambda h, p: p % 2 == 0)
    page.click("#nav >> text=Farm")
    expect(page.locator("#farm-summary")).to_contain_text("1003 processes")
    expect(page.locator("#farm-summary")).to_contain_text("503 live")
    expect(page.locator("#farm-summary")).to_contain_text("500 stale")
    expect(page.locator("#members tbody tr")).to_have_count(50)
    expect(page.locator("#members + div .pager")).to_contain_text("of 1003")
    expect(page.locator("#members tbody tr.stale").first).to_be_visible()
    color = page.locator("#members tbody tr.stale td").first.evaluate(
        "td => getComputedStyle(td).color")
    assert color == "rgb(154, 163, 174)", color
    shot(page, "08-farm-1003", full_page=True)
    page.fill("#farm-filter", "web-")
    expect(page.locator("#members tbody tr")).to_have_count(3)
    # Live, each on its own line; lagging too when a cycle's download came late on this
    # crowded machine, which the page must say rather than hide.
    expect(page.locator('#members tbody tr:not(.stale)')).to_have_count(3)
    shot(page, "09-farm-real-clients", full_page=True)

    # The timeline: rotations, each client's retrieval of a staged version, and an
    # activation all three clients proved. A member holds a staged version only between its
    # retrieval and the activation, so change a price each cycle until the page has seen
    # every client retrieve one.
    page.click("#nav >> text=Timeline")
    expect(page.locator("svg.timeline path.rotation").first).to_be_visible()
    deadline = time.time() + 20
    cents = 30
    while not all(page.locator(f'svg.timeline g[data-member="web-{i}"] circle.retrieval').count()
                  for i in (1, 2, 3)):
        assert time.time() < deadline, "the page never saw the three clients retrieve"
        cents += 1
        server.admin("/v1/admin/put", {"key": "price:apple", "value": f"1.{cents}"})
        page.wait_for_timeout(1000)
    # An activation of the last cycles that all three clients proved (one that a client on
    # this crowded machine caught up late shows that instead, and the next one counts).
    proof = page.locator("#activations section.proof").filter(has_text="3 switched on time").first
    expect(proof).to_be_visible(timeout=20_000)
    # The spread the page shows is that activation's, as the API measured it.
    shown_version = int(proof.get_attribute("data-version"))
    measured = next(a for a in server.admin("/v1/admin/activations?limit=50")
                    if a["version"] == shown_version)
    assert measured["clients_switched"] == 3, measured
    # That card, by its version: newer cards come in above it as cycles pass.
    proved = page.locator(f'#activations section.proof[data-version="{shown_version}"]')
    expect(proved.locator(".spread-value")).to_have_text(duration(measured["spread_us"]))
    expect(proved.locator(".spread")).to_contain_text(
        f"true spread at most {duration(measured['spread_us'] + measured['error_us'])}")
    for i in (1, 2, 3):
        expect(page.locator(f'svg.timeline g[data-member="web-{i}"] rect.switch').first).to_be_visible()
    shot(page, "10-timeline", full_page=True)

    # A straggler: web-3 is stopped (SIGSTOP) before the rotation that stages a change and
    # resumed after its activation time, so it downloads the version late and catches up.
    # The proof of that activation lists it as late, with how long after T it switched.
    web3 = server.clients.procs[2]
    before = server.admin("/v1/admin/status")["sync"]
    os.kill(web3.pid, signal.SIGSTOP)
    try:
        server.admin("/v1/admin/put", {"key": "price:apple", "value": "1.77"})
        deadline = time.time() + 10
        while True:
            sync = server.admin("/v1/admin/status")["sync"]
            if server.in_version(sync["active_version"], "price:apple") == "1.77":
                break
            assert time.time() < deadline, (before, sync)
            time.sleep(0.05)
        late_version = sync["active_version"]
        time.sleep(0.3)
    finally:
        os.kill(web3.pid, signal.SIGCONT)
    card = page.locator(f'#activations section.proof[data-version="{late_version}"]')
    expect(card).to_contain_text("1 late", timeout=15_000)
    expect(card.locator(".stragglers")).to_contain_text("web-3")
    expect(card.locator(".stragglers")).to_contain_text("late, switched T +")
    expect(page.locator('svg.timeline g[data-member="web-3"] rect.switch.late')).to_be_visible()
    shot(page, "10b-timeline-straggler", full_page=True)

    page.click("#nav >> text=Audit")
    expect(page.locator("#view h1")).to_have_text("Audit log")
    # Who changed what, each change the page made among them.
    for action in ("put", "schedule-put", "import", "rollback", "interval", "put-urgent"):
        expect(page.locator(f'#audit tbody tr[data-action="{action}"]').first).to_be_visible()
    expect(page.locator('#audit tbody tr[data-action="rollback"]')).to_contain_text(
        f"content of version {old}")
    shot(page, "11-audit")
    page.click("#signout")
    expect(page.locator("#signin")).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('lockstep.token')") is None


def read_only_session(page, server):
    apple = server.production("price:apple")
    sign_in(page, READ_TOKEN)
    expect(page.locator("#scope")).to_have_text("read only")
    page.click("#nav >> text=Production")
    page.fill("#prefix", "price:")
    page.click("text=Search")
    expect(page.locator('#keys tr[data-key="price:apple"] td.value')).to_have_text(apple)
    assert page.locator("#keys button.edit").count() == 0
    assert_no_token_in_urls(page)
    assert page.locator("#change-form, #import-form").count() == 0
    shot(page, "12-read-only-production")
    page.click("#nav >> text=Versions")
    expect(page.locator("#history tbody tr").first).to_be_visible()
    assert page.locator("#history button.rollback").count() == 0
    page.click("#nav >> text=Interval")
    expect(page.locator("#sync-table")).to_be_visible()
    assert page.locator("#interval-form").count() == 0
    # Hidden controls are a courtesy; the data server is what refuses.
    status = page.evaluate("""async () => (await fetch('/v1/admin/put', {method: 'POST',
        headers: {'Authorization': 'Bearer ' + sessionStorage.getItem('lockstep.token'),
                  'Content-Type': 'application/json'},
        body: JSON.stringify({key: 'price:apple', value: '0.01'})})).status""")
    assert status == 403
    assert server.production("price:apple") == apple
    page.click("#signout")


def other_origin_cannot_write(context, server):
    apple = server.production("price:apple")
    other = OtherOrigin(server.url, ADMIN_TOKEN)
    try:
        page = context.new_page()
        page.goto(other.url)
        results = page.evaluate("window.results")
        page.close()
    finally:
        other.stop()
    # Without the header the write is refused; with it, the browser never sends it.
    assert results["simple"].startswith("status 0 opaque"), results
    assert results["bearer"].startswith("blocked"), results
    assert server.production("price:apple") == apple
