"""An empty stop string would match before every token: it is refused, naming stop, by every HTTP front end
(OpenAI's, /generate, /mii) and by the Python API, instead of being dropped. No stop string is [] or nothing."""
import pytest

import fastgen_core as fg

MSGS = [{"role": "user", "content": "hello"}]


def post(server, path, body):
    r = server["http"].post(path, json=body)
    return r.status_code, r.json()


STOPS = [("/v1/completions", {"prompt": "x", "stop": ""}),
         ("/v1/completions", {"prompt": "x", "stop": ["END", ""]}),
         ("/v1/chat/completions", {"messages": MSGS, "stop": ""}),
         ("/generate", {"prompts": "x", "stop": ""}),
         ("/mii/{name}", {"prompts": "x", "stop": ""})]


@pytest.mark.parametrize("path,body", STOPS, ids=[f"{p}-{i}" for i, (p, _) in enumerate(STOPS)])
def test_an_empty_stop_string_is_refused_naming_stop(cli_server, path, body):
    status, answer = post(cli_server, path.format(name=cli_server["name"]), body)
    assert status == 400, answer
    err = answer["error"]
    assert err["param"] == "stop" and err["message"].startswith("stop must be a list of non-empty strings"), err
    assert repr(body["stop"]) in err["message"]


def test_no_stop_string_is_still_an_empty_list_or_nothing(cli_server):
    for stop in ([], None):
        status, answer = post(cli_server, "/v1/completions", {"prompt": "x", "max_tokens": 2, "stop": stop})
        assert status == 200, answer


@pytest.mark.parametrize("stop", ["", [""], ["END", ""]])
def test_an_empty_stop_string_is_refused_by_the_python_api(pipe, stop):
    with pytest.raises(fg.InvalidRequestError, match=r"stop must be a list of non-empty strings") as e:
        pipe("Hi", max_new_tokens=2, stop=stop)
    assert repr(stop) in str(e.value) and e.value.param == "stop"
    with pytest.raises(fg.InvalidRequestError, match="stop"):
        fg.SamplingParams(stop=stop)
