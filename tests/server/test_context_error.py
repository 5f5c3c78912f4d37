"""A request over the model's context (prompt + the tokens asked) is refused in the request's own terms: the
field it sent, max_tokens or max_completion_tokens (or max_tokens' default), named in the message and as the
OpenAI error's param, never the engine's max_new_tokens."""
import pytest


def post(server, path, body):
    r = server["http"].post(path, json=body)
    return r.status_code, r.json()


LONG = "x" * 225           # about 225 of the tiny model's 256 tokens of context (and the chat template's 20 more)
OVER = [
    ("/v1/completions", {"prompt": LONG, "max_tokens": 40}, "max_tokens", "max_tokens (40)"),
    ("/v1/completions", {"prompt": "x" * 250}, "max_tokens", "max_tokens (16, the default)"),
    ("/v1/completions", {"prompt": ["hi", LONG], "max_tokens": 40}, "max_tokens", "prompt 1: "),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": LONG}], "max_tokens": 40}, "max_tokens",
     "max_tokens (40)"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": LONG}], "max_completion_tokens": 40},
     "max_completion_tokens", "max_completion_tokens (40)"),
]


@pytest.mark.parametrize("path,body,field,words", OVER, ids=[f"{o[0]}-{o[3]}" for o in OVER])
def test_the_context_error_names_the_field_the_request_sent(cli_server, path, body, field, words):
    status, answer = post(cli_server, path, body)
    assert status == 400, answer
    err = answer["error"]
    assert err["param"] == field, err
    assert words in err["message"] and "exceeds the model's context of 256 tokens" in err["message"], err
    assert f"give {field} <= " in err["message"] and "max_new_tokens" not in err["message"], err
