import pytest

from stateset_agents.toolcalls import format_tool_call, parse_message


def test_documented_tag_format_with_text():
    msg = "Let me check. " + format_tool_call("lookup_order", {"order_id": "ORD-1"})
    p = parse_message(msg)
    assert p.text == "Let me check."
    assert [(c.name, c.arguments, c.error) for c in p.calls] == [("lookup_order", {"order_id": "ORD-1"}, None)]


def test_several_tagged_calls():
    msg = format_tool_call("a", {"x": 1}) + "\n" + format_tool_call("b", {})
    assert [c.name for c in parse_message(msg).calls] == ["a", "b"]


@pytest.mark.parametrize("msg", [
    '{"name": "lookup_order", "arguments": {"order_id": "ORD-1"}}',
    '```json\n{"name": "lookup_order", "arguments": {"order_id": "ORD-1"}}\n```',
    '{"type": "function", "function": {"name": "lookup_order", "arguments": "{\\"order_id\\": \\"ORD-1\\"}"}}',
    '[{"name": "lookup_order", "arguments": {"order_id": "ORD-1"}}]',
    '<tool_call>\n{"name": "lookup_order", "arguments": {"order_id": "ORD-1"}}\n</tool_call>',
])
def test_chat_template_json_forms(msg):
    p = parse_message(msg)
    assert p.text == ""
    assert [(c.name, c.arguments, c.error) for c in p.calls] == [("lookup_order", {"order_id": "ORD-1"}, None)]


def test_plain_text_and_json_that_is_not_a_call():
    assert parse_message("Hello {there}").calls == []
    assert parse_message('{"order": 1}').calls == []


def test_malformed_tagged_call_is_reported_not_dropped():
    p = parse_message("<tool_call>{name: lookup_order}</tool_call>")
    assert len(p.calls) == 1 and p.calls[0].name is None
    assert p.calls[0].error.startswith("tool call is not valid JSON")


def test_unclosed_tag_still_parses():
    p = parse_message('<tool_call>{"name": "a", "arguments": {}}')
    assert p.calls[0].name == "a" and p.calls[0].error is None


def test_bad_argument_string():
    p = parse_message('<tool_call>{"name": "a", "arguments": "{oops"}</tool_call>')
    assert p.calls[0].error.startswith("arguments of 'a' are not valid JSON")


def test_strip_tool_calls_keeps_surrounding_whitespace():
    from stateset_agents.toolcalls import strip_tool_calls

    msg = "  Checking. " + format_tool_call("a", {}) + " done <tool_call>{\"name\": \"b\""
    assert strip_tool_calls(msg) == "  Checking.  done "
    assert parse_message(msg).text == "Checking.  done"


def test_serving_and_envs_share_the_one_parser():
    import stateset_agents.envs as envs
    import stateset_agents.toolcalls as toolcalls

    assert envs.parse_message is toolcalls.parse_message and envs.format_tool_call is toolcalls.format_tool_call
