"""A name that is neither a local folder nor a reachable Hub repo: both places named, the Hub's absence found
in one short connection attempt (no retries), the cache still used when the Hub is down."""

from __future__ import annotations

import pytest
import torch
from test_hub import hub  # noqa: F401  (the loopback Hub fixture)

from tokenizer import ImageTokenizer
from tokenizer.hub import HubError, RepoNotFoundError, unreachable_reason

CLOSED = "http://127.0.0.1:1"  # nothing listens on port 1: connection refused at once


@pytest.fixture
def hub_down(hub, monkeypatch):  # noqa: F811
    """The loopback Hub's cache and settings, with the endpoint pointing where nothing answers."""
    from huggingface_hub import constants

    def down():
        monkeypatch.setattr(constants, "ENDPOINT", CLOSED)
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", CLOSED + "/{repo_id}/resolve/{revision}/{filename}")
    return down


def test_mistyped_folder_name_names_both_places(hub_down, tiny_tokenizer, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tiny_tokenizer.save_pretrained("my-tokenizer")
    hub_down()
    with pytest.raises(RepoNotFoundError) as caught:
        ImageTokenizer.from_pretrained("my-tokenizr")
    message = str(caught.value)
    assert f"my-tokenizr: no local folder of that name ({tmp_path / 'my-tokenizr'})" in message
    assert "did you mean 'my-tokenizer'?" in message
    assert f"the Hub ({CLOSED}) cannot be reached (ConnectionRefusedError" in message
    assert "local cache" in message and "has no copy of it" in message


def test_hub_reachable_but_no_such_repo_also_says_no_local_folder(hub, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.chdir(tmp_path)
    with pytest.raises(HubError, match=r"alice/nope: no local folder of that name \(.*alice/nope\), and no Hub "
                                       r"repo of that name at http://127\.0\.0\.1"):
        ImageTokenizer.from_pretrained("alice/nope")


def test_cached_repo_loads_when_the_hub_is_down(hub, hub_down, tiny_tokenizer):  # noqa: F811
    tiny_tokenizer.push_to_hub("alice/vq-tiny")
    ImageTokenizer.from_pretrained("alice/vq-tiny")  # fills the cache
    seen = len(hub.state.requests)
    hub_down()
    cached = ImageTokenizer.from_pretrained("alice/vq-tiny")
    assert len(hub.state.requests) == seen
    x = torch.rand(3, 8, 8)
    assert torch.equal(cached.encode(x), tiny_tokenizer.encode(x))


def test_path_like_names_never_go_to_the_hub(hub, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    seen = len(hub.state.requests)
    with pytest.raises(FileNotFoundError, match=r"\./model: no such file or folder \(did you mean 'models'\?\)"):
        ImageTokenizer.from_pretrained("./model")
    assert len(hub.state.requests) == seen


def test_unreachable_reason(monkeypatch):
    for name in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "https_proxy", "http_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    assert "ConnectionRefusedError" in unreachable_reason(CLOSED)
    assert "gaierror" in unreachable_reason("https://no-such-host.invalid")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    assert unreachable_reason(CLOSED) is None  # behind a proxy the client decides


@pytest.mark.parametrize("repo", ["", "a b/c", "no/such/thing", "x" * 200, "alice/../etc"])
def test_push_to_invalid_repo_id_is_a_hub_error(hub, tiny_tokenizer, repo):  # noqa: F811
    seen = len(hub.state.requests)
    with pytest.raises(HubError, match="not a valid Hub repo id"):
        tiny_tokenizer.push_to_hub(repo)
    assert len(hub.state.requests) == seen


def test_push_when_the_hub_is_down_fails_at_once_and_clearly(hub, tiny_tokenizer, monkeypatch):  # noqa: F811
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", CLOSED)
    with pytest.raises(HubError, match=rf"alice/x: cannot push: the Hub \({CLOSED}\) cannot be reached "
                                       r"\(ConnectionRefusedError"):
        tiny_tokenizer.push_to_hub("alice/x")
