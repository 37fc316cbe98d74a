"""The Deploy tab in a real browser, logged in through Gradio's real password login, with a space.yaml policy:
a non-admin sees the plan but is refused a deploy; the admin's deploy runs (and stops at the placeholder name)."""
from __future__ import annotations

import os
import re

import pytest

from conftest import AppServer

pytestmark = [pytest.mark.browser, pytest.mark.integration]


@pytest.fixture
def policy_server(wb_home, tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text("space_id: alice/forge\nhardware: t4-medium\n"
                      "access: {admins: [alice], reviewers: any, visitors: read-only}\n")
    env = dict(os.environ, WORKBENCH_POLICY=str(policy))
    server = AppServer(env, ["--auth", "alice:pw-a", "--auth", "bob:pw-b"])
    yield server
    server.stop()


def login(page, url, user, password):
    page.goto(url)
    page.get_by_label("username").fill(user)
    page.get_by_label("password").fill(password)
    page.get_by_role("button", name="Login").click()
    page.get_by_role("tab", name="Deploy").click()


def test_deploy_tab_respects_the_allowlist(policy_server, page, _browser):
    login(page, policy_server.url, "bob", "pw-b")
    page.locator("#wb-whoami").get_by_text(re.compile("Signed in as bob · reviewer")).wait_for()
    page.get_by_role("button", name="Show plan (dry run)").click()
    page.locator("#deploy-plan").get_by_text(re.compile("api.create_repo")).first.wait_for()
    page.get_by_role("button", name="Deploy now").click()
    page.get_by_text(re.compile("Only admins may deploy here; 'bob' is not on the admin allowlist")).first.wait_for()
    page.get_by_role("button", name="Push to the Hub").click()
    page.get_by_text(re.compile("Only admins may push here")).first.wait_for()

    admin = _browser.new_context().new_page()
    admin.set_default_timeout(30_000)
    try:
        login(admin, policy_server.url, "alice", "pw-a")
        admin.locator("#wb-whoami").get_by_text(re.compile("Signed in as alice · admin")).wait_for()
        admin.get_by_role("button", name="Deploy now").click()  # the shipped space.yaml: stops before the Hub
        admin.locator("#deploy-plan").get_by_text(re.compile("still says 'your-username'")).first.wait_for()
        admin.get_by_role("button", name="Push to the Hub").click()
        admin.get_by_text(re.compile("Pick a run with a finished adapter first")).first.wait_for()
    finally:
        admin.context.close()
