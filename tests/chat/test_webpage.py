"""The web page in a real headless Chromium against a real ``scalechat serve`` process.

Each simulated user gets a browser context of its own (so one can go offline
alone) and is driven only through the page: the form, the composer, and the
stable selectors the page promises (``#status[data-state]``,
``#messages li.message[data-seq]``, ``li.notice[data-kind]``, ``.alert[data-code]``).
The one test hook is ``window.__scalechat.dropConnection()``, which makes the
page see its socket closed at once. Every wait is a Playwright ``expect`` with
a deadline. Screenshots go to ``build/artifacts/``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode

import pytest

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip(f"browser tests need Debian's chromium at {CHROMIUM} (apt-get install chromium)",
                allow_module_level=True)

from playwright.sync_api import Browser, BrowserContext, Locator, Page, expect, sync_playwright  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "build" / "artifacts"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--no-first-run"]
XSS = "<img src=x onerror=alert(1)>"

expect.set_options(timeout=10_000)


def line(sender: str, text: str) -> re.Pattern[str]:
    """How a message reads on the page: ``[hh:mm:ss] name: text``."""
    return re.compile(rf"^\[\d\d:\d\d:\d\d\] {re.escape(sender)}: {re.escape(text)}$")


@dataclass
class Chat:
    """One user: a browser context with one page showing one room."""

    context: BrowserContext
    page: Page
    dialogs: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    socket_urls: list[str] = field(default_factory=list)

    @property
    def status(self) -> Locator:
        return self.page.locator("#status")

    @property
    def confirmed(self) -> Locator:
        """Messages the server has given a seq to, in page order."""
        return self.page.locator("#messages li.message[data-seq]")

    def send(self, text: str) -> None:
        self.page.fill("#message-input", text)
        self.page.press("#message-input", "Enter")

    def seqs(self) -> list[int]:
        return self.confirmed.evaluate_all("els => els.map(e => Number(e.dataset.seq))")

    def snapshot(self) -> dict:
        return self.page.evaluate("window.__scalechat.snapshot()")

    def screenshot(self, name: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / name
        self.page.screenshot(path=path)
        return path


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def open_chat(browser: Browser):
    """Factory: ``open_chat(server, room, name)`` -> a Chat whose page is connected."""
    opened: list[Chat] = []

    def open_(server, room: str, name: str, *, via_form: bool = False) -> Chat:
        context = browser.new_context(viewport={"width": 900, "height": 540})
        chat = Chat(context, context.new_page())
        opened.append(chat)
        chat.page.on("dialog", lambda dialog: (chat.dialogs.append(dialog.message), dialog.dismiss()))
        chat.page.on("pageerror", lambda exc: chat.errors.append(str(exc)))
        chat.page.on("websocket", lambda ws: chat.socket_urls.append(ws.url))
        if via_form:
            chat.page.goto(server.http_url + "/")
            chat.page.fill("#room-input", room)
            chat.page.fill("#name-input", name)
            chat.page.click("#join-button")
            expect(chat.page).to_have_url(re.compile(r"\?" + re.escape(urlencode({"room": room, "name": name})) + "$"))
        else:
            chat.page.goto(f"{server.http_url}/?{urlencode({'room': room, 'name': name})}")
        expect(chat.status).to_have_attribute("data-state", "connected")
        expect(chat.page.locator("#room-name")).to_have_text(room)
        return chat

    yield open_
    for chat in opened:
        chat.context.close()
    errors = [error for chat in opened for error in chat.errors]
    assert not errors, f"uncaught exceptions in the page: {errors}"


def test_two_pages_in_a_room_chat_live_and_another_room_hears_nothing(chat_server, open_chat):
    alice = open_chat(chat_server, "lobby", "alice")
    bob = open_chat(chat_server, "lobby", "bob", via_form=True)
    carol = open_chat(chat_server, "elsewhere", "carol")
    expect(alice.page.locator("#members")).to_have_text("2 online")
    expect(alice.page.locator("#messages li.presence")).to_have_text([re.compile(r"bob joined$")])

    alice.send("hello from alice")
    expect(bob.confirmed).to_have_text([line("alice", "hello from alice")])
    bob.send("hi alice")
    for chat in (alice, bob):
        expect(chat.confirmed).to_have_text([line("alice", "hello from alice"), line("bob", "hi alice")])
        expect(chat.page.locator("#messages li.pending")).to_have_count(0)
    expect(alice.confirmed.first).to_have_class(re.compile(r"\bown\b"))
    assert alice.seqs() == bob.seqs() == [1, 2]

    # Carol was connected all along; her own message is the barrier: once its echo
    # is shown, anything of the lobby's routed to her would be there too.
    carol.send("anyone here?")
    expect(carol.confirmed).to_have_text([line("carol", "anyone here?")])
    expect(carol.page.locator("#members")).to_have_text("1 online")
    assert alice.seqs() == bob.seqs() == [1, 2]

    bob.page.click("#leave-button")
    expect(bob.page.locator("#join-form")).to_be_visible()
    expect(alice.page.locator("#messages li.presence").last).to_have_text(re.compile(r"bob left$"))
    expect(alice.page.locator("#members")).to_have_text("1 online")
    alice.screenshot("webpage-chat.png")


def test_markup_in_messages_and_names_is_shown_as_text(chat_server, open_chat):
    mallory = open_chat(chat_server, "lobby", "<b>mallory</b>")
    alice = open_chat(chat_server, "lobby", "alice")
    mallory.send(XSS)
    for chat in (alice, mallory):
        expect(chat.confirmed).to_have_text([line("<b>mallory</b>", XSS)])
        expect(chat.confirmed.locator(".text")).to_have_text(XSS)
        assert chat.page.locator("#messages img, #messages b").count() == 0
    expect(alice.page.locator("#messages li.presence")).to_have_count(0)  # mallory came first
    assert alice.dialogs == [] and mallory.dialogs == []


def test_dropped_connection_resumes_with_since_without_loss_or_repeat(chat_server, open_chat):
    alice = open_chat(chat_server, "lobby", "alice")
    bob = open_chat(chat_server, "lobby", "bob")
    for i in (1, 2):
        bob.send(f"m{i}")
    expect(alice.confirmed).to_have_count(2)
    epoch = alice.snapshot()["epoch"]

    # Offline first so every reconnect attempt fails until we allow it.
    alice.context.set_offline(True)
    assert alice.page.evaluate("window.__scalechat.dropConnection()")
    expect(alice.status).to_have_attribute("data-state", "reconnecting")
    expect(alice.status).to_contain_text(re.compile(r"reconnecting in \d+ s"))
    for i in (3, 4, 5, 6):
        bob.send(f"m{i}")
    alice.send("written while offline")  # queued, sent once the page is back
    expect(alice.page.locator("#messages li.message.pending")).to_have_count(1)
    expect(bob.confirmed).to_have_count(6)
    assert alice.seqs() == [1, 2]

    alice.context.set_offline(False)
    expect(alice.status).to_have_attribute("data-state", "connected")
    assert f"since=2&epoch={epoch}" in alice.socket_urls[-1]
    expect(alice.page.locator("#messages li.message.pending")).to_have_count(0)
    bob.send("m7 live after the resume")

    expected = ([line("bob", f"m{i}") for i in range(1, 7)]
                + [line("alice", "written while offline"), line("bob", "m7 live after the resume")])
    for chat in (alice, bob):
        expect(chat.confirmed).to_have_text(expected)
        assert chat.seqs() == list(range(1, 9))
    expect(alice.page.locator("#messages li.notice")).to_have_count(0)


def test_server_restart_is_survived_and_the_new_epoch_is_marked(start_server, open_chat):
    server = start_server()
    alice = open_chat(server, "lobby", "alice")
    alice.send("before the restart")
    expect(alice.confirmed).to_have_text([line("alice", "before the restart")])
    old_epoch = alice.snapshot()["epoch"]

    server.stop()  # SIGTERM: the server closes every socket with 1001
    expect(alice.status).to_have_attribute("data-state", "reconnecting")
    start_server(port=server.port)

    expect(alice.status).to_have_attribute("data-state", "connected", timeout=25_000)
    notice = alice.page.locator("#messages li.notice[data-kind=epoch]")
    expect(notice).to_contain_text("Continuity lost")
    assert f"since=1&epoch={old_epoch}" in alice.socket_urls[-1]
    assert alice.snapshot()["epoch"] != old_epoch

    alice.send("after the restart")
    expect(alice.page.locator("#messages > li")).to_have_text([
        line("alice", "before the restart"),
        re.compile(r"Continuity lost: the server restarted"),
        line("alice", "after the restart"),
    ])
    assert alice.seqs() == [1, 1]  # one per epoch, each shown once
    alice.screenshot("webpage-restart.png")


def test_error_frames_are_shown_and_mark_the_message_not_sent(start_server, open_chat):
    server = start_server("--rate-limit", "0.001", "--rate-burst", "2")
    alice = open_chat(server, "lobby", "alice")
    for text in ("one", "two", "three"):
        alice.send(text)
    expect(alice.page.locator("#alerts .alert[data-code=rate_limited]")).to_be_visible()
    expect(alice.page.locator("#messages li.message.failed")).to_have_text(
        re.compile(r"alice: three — not sent: rate limit exceeded"))
    expect(alice.confirmed).to_have_text([line("alice", "one"), line("alice", "two")])
    expect(alice.status).to_have_attribute("data-state", "connected")
