"""`broker report`: a self-contained incident report (HTML with inline SVG, Markdown, JSON), checked
in a real headless Chromium: the page loads and renders, and its timeline has one bar per lease."""

# ruff: noqa: F811 - the PostgreSQL fixtures come from tests/support/pg.py, imported by name

from __future__ import annotations

import html.parser
import json
import shutil
import subprocess

import pytest

from tests.support.brokerproc import credential, run_broker
from tests.support.pg import Host, fleet_db, pg  # noqa: F401 - pytest fixtures

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class Page(html.parser.HTMLParser):
    """What the test checks of a page: bars, revocation marks, scripts, outside references."""

    def __init__(self) -> None:
        super().__init__()
        self.bars: list[dict[str, str | None]] = []
        self.marks = 0
        self.scripts = 0
        self.external: list[str] = []
        self.in_svg = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "svg":
            self.in_svg += 1
        if tag == "script":
            self.scripts += 1
        for name in ("src", "href"):
            if found.get(name):
                self.external.append(str(found[name]))
        if tag == "rect" and self.in_svg and "lease" in (found.get("class") or "").split():
            self.bars.append(found)
        if tag == "line" and "revocation" in (found.get("class") or "").split():
            self.marks += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "svg":
            self.in_svg -= 1


def parse(text: str) -> Page:
    page = Page()
    page.feed(text)
    page.close()
    return page


def render_in_chromium(path, tmp_path) -> tuple[bytes, str]:
    """A screenshot (PNG bytes) and the DOM Chromium built from file://path."""
    png = tmp_path / "report.png"
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--window-size=1200,900",
        "--user-data-dir=" + str(tmp_path / "chromium"),
    ]
    shot = subprocess.run(
        [CHROMIUM, *flags, f"--screenshot={png}", f"file://{path}"], capture_output=True, text=True, timeout=120
    )
    assert shot.returncode == 0, shot.stderr[-2000:]
    dom = subprocess.run(
        [CHROMIUM, *flags, "--dump-dom", f"file://{path}"], capture_output=True, text=True, timeout=120
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    return png.read_bytes(), dom.stdout


@pytest.fixture
def leases(vault, aws_env, monkeypatch):
    """Four real leases on one host (two users' tokens), one of them revoked."""
    vault.add_token("hvs.alice", display_name="oidc-alice", entity_id="e-alice")
    monkeypatch.setenv("VAULT_TOKEN", "hvs.alice")
    monkeypatch.setenv("BROKER_HOST", "laptop-<b>&1")  # escaped everywhere
    keys = [
        credential("--no-cache", "--mount", "aws", "--role", "deploy", "--ttl", "1h")["AccessKeyId"] for _ in range(2)
    ]
    keys += [credential("--no-cache", "--mount", "aws", "--role", "ci")["AccessKeyId"] for _ in range(2)]
    assert run_broker("revoke", "--access-key", keys[0], "--yes").returncode == 0
    return keys


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")
def test_html_report_renders_in_chromium_with_one_bar_per_lease(leases, tmp_path):
    result = run_broker("report", "--format", "html", "--issued-after", "1h")
    assert result.returncode == 0, result.stderr
    page = parse(result.stdout)
    assert sorted(bar["data-access-key"] for bar in page.bars) == sorted(leases)
    assert page.marks == 1 and page.scripts == 0 and page.external == []
    assert "laptop-&lt;b&gt;&amp;1" in result.stdout and "<b>&1" not in result.stdout
    assert "oidc-alice" in result.stdout and "put-role-policy" in result.stdout  # live STS: deny policies
    path = tmp_path / "report.html"
    path.write_text(result.stdout)
    png, dom = render_in_chromium(path, tmp_path)
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000
    loaded = parse(dom)
    assert len(loaded.bars) == len(leases) and loaded.marks == 1
    assert "Credential incident report" in dom


def test_markdown_and_json_reports(leases):
    md = run_broker("report", "--format", "md", "--access-key", leases[0], "--access-key", leases[2])
    assert md.returncode == 0, md.stderr
    assert md.stdout.startswith("# Credential incident report") and md.stdout.count(leases[0]) == 1
    assert leases[1] not in md.stdout
    data = json.loads(run_broker("report", "--format", "json").stdout)
    assert data["counts"]["leases"] == 4 and data["counts"]["by_state"] == {"active": 3, "revoked": 1}
    assert {r["access_key_id"] for r in data["leases"]} == set(leases)
    assert data["counts"]["live_sts"] == 2 and data["deny_policies"]


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")
def test_fleet_report_groups_by_host(tmp_path, pg, fleet_db, vault, aws_env):
    hosts = [Host(tmp_path, f"host-{x}", pg.url(f"host_{x}", fleet_db), user=f"user{x}") for x in "ab"]
    for host in hosts:
        for _ in range(2):
            assert host.broker("credential-process", "--no-cache", "--mount", "aws", "--role", "ci").returncode == 0
        assert host.broker("ledger", "sync").returncode == 0
    desk = Host(tmp_path, "desk", pg.url("resp_1", fleet_db), user="oncall")
    result = desk.broker("report", "--fleet", "--format", "html", "--role", "ci")
    assert result.returncode == 0, result.stderr
    page = parse(result.stdout)
    assert len(page.bars) == 4 and "host-a" in result.stdout and "host-b" in result.stdout
    path = tmp_path / "fleet.html"
    path.write_text(result.stdout)
    png, dom = render_in_chromium(path, tmp_path)
    assert png.startswith(b"\x89PNG") and len(parse(dom).bars) == 4
