"""The web dashboard in a real headless Chromium (Debian's, driven by Playwright) against a
real 3-node cluster: the page loads without console errors, shows the nodes and their
links, launches a previewed placement that becomes ready, streams a chat with its TTFT and
speed, deletes an instance, moves, stops and restarts a download from a local hub, and
marks a SIGKILLed node down; a node started with --api-key has the page ask for its key
once. Screenshots of each state go to test-artifacts/dashboard/
(or $EXO_TEST_ARTIFACTS) for a person to look at."""

from __future__ import annotations

import os
import shutil
import signal
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, expect, sync_playwright

from tests.hub.repos import bundled_repo
from tests.hub.server import HubServer
from tests.integration.nodes import API_KEY, NodeProcess, agreement, start_cluster, wait_for

pytestmark = pytest.mark.slow

REPO = "exo-test/SmolLM2-135M-dashboard"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Without the background-networking flags Chromium keeps dialing Google's hosts, which a
# closed network refuses; --no-sandbox because CI runs as root.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = (
    Path(
        os.environ.get("EXO_TEST_ARTIFACTS", Path(__file__).resolve().parents[2] / "test-artifacts")
    )
    / "dashboard"
)


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubServer]:
    server = HubServer(tmp_path_factory.mktemp("hub-root"))
    server.add_repo(REPO, bundled_repo(tmp_path_factory.mktemp("hub-repos") / "bundled"))
    with server:
        yield server


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, models_dir: Path, hub: HubServer
) -> Iterator[list[NodeProcess]]:
    nodes = start_cluster(tmp_path_factory.mktemp("dash"), models_dir, 3, env=hub.client_env())
    try:
        wait_for(lambda: agreement(nodes, 3), 60, "three nodes in agreement")
        yield nodes
    finally:
        for node in nodes:
            node.stop(signal.SIGKILL)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert Path(CHROMIUM).exists(), "install Debian's chromium (scripts/install.sh --dev)"
    # Not the runners' preloaded OpenBLAS and gemv shim (scripts/test.sh runs pytest with
    # them): Chromium's processes die at start with them.
    env: dict[str, str | float | bool] = {
        k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "OPENBLAS_CORETYPE")
    }
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, env=env)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser: Browser, cluster: list[NodeProcess]) -> Iterator[Page]:
    """The dashboard of the first node, collecting console errors and uncaught exceptions."""
    context = browser.new_context(viewport={"width": 1400, "height": 1200})
    opened = context.new_page()
    problems: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            problems.append(f"console: {message.text}")

    opened.on("console", on_console)
    opened.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    opened.goto(cluster[0].url + "/")
    try:
        yield opened
        assert problems == []
    finally:
        context.close()


def snap(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def node_id(node: NodeProcess) -> str:
    return str(node.state()["node_id"])


# Counts DOM changes that show the last assistant reply with text but not yet done.
WATCH_PARTIAL_REPLY = """() => {
  window.exoPartialReplies = 0;
  new MutationObserver(() => {
    const replies = document.querySelectorAll('#transcript li.assistant');
    const reply = replies[replies.length - 1];
    const text = reply && reply.querySelector('.content');
    if (reply && !reply.hasAttribute('data-done') && text && text.textContent) {
      window.exoPartialReplies += 1;
    }
  }).observe(document.querySelector('#transcript'),
             {subtree: true, childList: true, characterData: true, attributes: true});
}"""


def test_the_page_shows_places_chats_and_deletes(page: Page, cluster: list[NodeProcess]) -> None:
    expect(page.locator("#connection")).to_have_attribute("data-state", "live")
    ids = sorted(node_id(n) for n in cluster)
    for nid in ids:
        expect(page.locator(f'#nodes tr[data-node="{nid}"]')).to_have_attribute("data-state", "up")
        expect(page.locator(f'#topology g.node[data-node="{nid}"]')).to_be_visible()
    master = cluster[0].state()["master"]
    expect(page.locator("#master")).to_have_attribute("title", master)
    # Every pair's measured link, drawn once.
    expect(page.locator("#topology line.link")).to_have_count(3, timeout=30_000)
    snap(page, "1-cluster")

    # Placement: previews with memory and predicted speed; tensor refused with the reason.
    page.fill("#preview-model", "smollm2-135m")
    page.click("#preview-form button[type=submit]")
    refused = page.locator('#previews tr[data-preview="tensor|2"]')
    expect(refused).to_contain_text("9 attention heads do not divide by 2 nodes")
    chosen = page.locator('#previews tr[data-preview="pipeline|2"]')
    expect(chosen).to_have_attribute("data-valid", "true")
    snap(page, "2-previews")
    chosen.locator("button", has_text="Launch").click()
    instance = page.locator("#instances tr[data-instance]")
    expect(instance).to_have_count(1)
    expect(instance).to_have_attribute("data-status", "ready", timeout=240_000)
    expect(instance).to_contain_text("pipeline")
    snap(page, "3-instance-ready")

    # Chat: the reply streams in (text shows before the reply is done), then its stats.
    page.fill("#chat-model", "smollm2-135m")
    page.fill("#chat-input", "What is the capital of France? Answer in one sentence.")
    # Watched in the page itself: polling from here could miss a short reply's partial
    # state (it failed once in CI when the whole reply landed between two polls).
    page.evaluate(WATCH_PARTIAL_REPLY)
    page.click("#chat-send")
    reply = page.locator("#transcript li.assistant").last
    expect(reply.locator(".content")).not_to_have_text("", timeout=120_000)
    expect(reply).to_have_attribute("data-done", "true", timeout=240_000)
    seen_partial = page.evaluate("window.exoPartialReplies")
    assert seen_partial > 0, "the reply arrived whole, not streamed"
    expect(reply.locator(".stats")).to_contain_text("TTFT")
    expect(reply.locator(".stats")).to_contain_text("tok/s")
    assert (reply.locator(".content").text_content() or "").strip()  # sampled: any text
    # The instance's counters reach the page (tallies, about once a second).
    expect(page.locator("#instances tr[data-instance] td.tps")).not_to_have_text("0.0")
    snap(page, "4-chat")

    page.locator("#instances tr[data-instance] button", has_text="Delete").click()
    expect(page.locator("#instances tr[data-instance]")).to_have_count(0, timeout=30_000)
    assert cluster[0].get("/instances")["instances"] == []


def test_a_download_moves_stops_and_starts_again(
    page: Page, cluster: list[NodeProcess], hub: HubServer
) -> None:
    target = node_id(cluster[1])
    cluster[0].get(f"/models/{REPO}")  # read from the hub and added to the cluster
    hub.set_throttle(400_000)  # bytes per second per connection: slow enough to watch
    try:
        page.select_option("#download-model", REPO)
        page.select_option("#download-node", target)
        page.click("#download-form button[type=submit]")
        row = page.locator(f'#downloads tr[data-download="{target}|{REPO}"]')
        expect(row).to_have_attribute("data-phase", "downloading", timeout=30_000)
        first = int(row.get_attribute("data-bytes") or 0)
        wait_for(
            lambda: int(row.get_attribute("data-bytes") or 0) > first or None,
            30,
            "download progress on the page",
        )
        expect(row).to_contain_text("/s")  # its rate, and an ETA from it
        snap(page, "5-download-moving")

        row.locator("button", has_text="Stop").click()
        expect(row).to_have_attribute("data-phase", "stopped", timeout=30_000)
        served = hub.bytes_served(REPO)
        time.sleep(2)
        # Stopped means stopped: at most the chunks already in flight arrive after.
        assert hub.bytes_served(REPO) - served < 4 * 1024 * 1024
        snap(page, "6-download-stopped")
    finally:
        hub.set_throttle(None)
    row.locator("button", has_text="Start").click()
    expect(row).to_have_attribute("data-phase", "complete", timeout=120_000)
    snap(page, "7-download-complete")


def test_a_killed_node_is_shown_down_within_five_seconds(
    page: Page, cluster: list[NodeProcess]
) -> None:
    master = cluster[0].state()["master"]
    victim = next(n for n in cluster[1:] if node_id(n) != master)
    victim_id = node_id(victim)
    row = page.locator(f'#nodes tr[data-node="{victim_id}"]')
    expect(row).to_have_attribute("data-state", "up")
    assert victim.process is not None
    victim.process.kill()
    killed = time.monotonic()
    expect(row).to_have_attribute("data-state", "down", timeout=5_000)
    print(f"shown down {time.monotonic() - killed:.2f} s after SIGKILL")
    expect(page.locator(f'#topology g.node.down[data-node="{victim_id}"]')).to_be_visible()
    snap(page, "8-node-down")
    # Back with the same identity: shown up again.
    victim.process.wait(10)
    victim.start()
    expect(row).to_have_attribute("data-state", "up", timeout=30_000)


def test_a_keyed_node_asks_for_its_key_once(browser: Browser, keyed_node: NodeProcess) -> None:
    context = browser.new_context(viewport={"width": 1400, "height": 1200})
    page = context.new_page()
    # Chromium logs every 401 answer as an error; those, and only those, are expected
    # (and the network errors of the stream while its node restarts, below).
    expected = ["status of 401"]
    problems: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error" and not any(e in message.text for e in expected):
            problems.append(f"console: {message.text}")

    page.on("console", on_console)
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    submit = "#key-form button[type=submit]"
    try:
        page.goto(keyed_node.url + "/")
        expect(page.locator("#key-card")).to_be_visible()
        expect(page.locator("#connection")).to_have_attribute("data-state", "locked")
        expect(page.locator("#key-message")).to_contain_text("asks for an API key")
        expect(page.locator("#nodes tr[data-node]")).to_have_count(0)
        snap(page, "9-api-key-asked")
        page.fill("#key-input", "sk-not-the-key")
        page.click(submit)
        expect(page.locator("#key-message")).to_contain_text("refused")
        page.fill("#key-input", API_KEY)
        page.click(submit)
        expect(page.locator("#key-card")).to_be_hidden()
        expect(page.locator("#connection")).to_have_attribute("data-state", "live")
        row = page.locator(f'#nodes tr[data-node="{node_id(keyed_node)}"]')
        expect(row).to_have_attribute("data-state", "up")
        expect(page.locator('#model-names option[value="smollm2-135m"]')).to_have_count(1)
        # An action, with the key too: a placement preview.
        page.fill("#preview-model", "smollm2-135m")
        page.click("#preview-form button[type=submit]")
        preview = page.locator('#previews tr[data-preview="pipeline|1"]')
        expect(preview).to_have_attribute("data-valid", "true")
        snap(page, "10-api-key-given")

        # Asked once: a reload uses the stored key.
        page.reload()
        expect(page.locator("#connection")).to_have_attribute("data-state", "live")
        expect(page.locator("#key-card")).to_be_hidden()
        expect(row).to_have_attribute("data-state", "up")

        # The stream is followed again, with the key, after its node restarts.
        expected.append("net::ERR_")
        keyed_node.stop()
        expect(page.locator("#connection")).to_have_attribute("data-state", "lost")
        keyed_node.start()
        expect(page.locator("#connection")).to_have_attribute("data-state", "live", timeout=45_000)
        expect(page.locator("#key-card")).to_be_hidden()

        # A stored key the node does not take brings the form back.
        page.evaluate("localStorage.setItem('exo-api-key', 'sk-stale')")
        page.reload()
        expect(page.locator("#key-card")).to_be_visible()
        expect(page.locator("#key-message")).to_contain_text("refused")
        assert problems == []
    finally:
        context.close()


def test_browsers_and_scripts_get_different_answers_at_the_root(
    cluster: list[NodeProcess],
) -> None:
    with urllib.request.urlopen(cluster[0].url + "/", timeout=10) as answer:
        assert answer.read() == b"Ollama is running"
