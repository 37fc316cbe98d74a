"""The fast UI tier: the real app built in this process (`launch(prevent_thread_lock=True)`) and driven through
its real HTTP API with gradio_client — seconds instead of a browser's minute, same handlers and server."""
from __future__ import annotations

import pytest

from conftest import free_port


@pytest.fixture
def client():
    from gradio_client import Client

    from workbench.ui.app import build_app

    demo = build_app()
    demo.queue().launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    try:
        yield Client(demo.local_url, verbose=False)
    finally:
        demo.close()


def test_data_tab_loads_and_maps_the_sample(client):
    msg, *mapping = client.predict("sample (shipped)", "", None, api_name="/_load")
    assert "Loaded **78 rows** from the shipped sample" in msg
    guessed = [m["value"] for m in mapping]
    assert guessed[:2] == ["question", "answer"], guessed  # instruction <- question, output <- answer
    summary, table, *_ = client.predict(*guessed, api_name="/apply_map")
    assert "**78 rows**" in summary
    assert 0 < len(table["data"]) <= 78 and {"instruction", "output"} <= set(table["headers"])


def test_a_visitor_without_a_policy_is_an_admin_and_a_bad_path_gets_a_plain_error(client):
    msg, *_ = client.predict("file path", "/etc/passwd", None, api_name="/_load")
    assert "wb-error" in msg and "Only files inside" in msg
