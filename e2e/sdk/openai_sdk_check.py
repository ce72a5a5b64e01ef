"""The unmodified OpenAI Python SDK against a running Agentry dev runtime (`make dev`).

Not part of `make test` (it needs Python and `pip install openai`):

    python3 e2e/sdk/openai_sdk_check.py http://127.0.0.1:8080 "$ACME_KEY"

Exits non-zero on the first mismatch. Expects the example tenant `acme` (offline provider).
"""

import sys

import openai
from openai import OpenAI

base, key = sys.argv[1], sys.argv[2]
client = OpenAI(base_url=base + "/v1", api_key=key, max_retries=0)

ids = [m.id for m in client.models.list()]
assert "agent/general" in ids and "small" in ids, ids

answer = client.chat.completions.create(
    model="agent/general",
    messages=[{"role": "user", "content": "What is your return policy?"}],
)
assert answer.choices[0].finish_reason == "stop", answer
assert answer.choices[0].message.content, answer
assert answer.usage.total_tokens > 0, answer

answer = client.chat.completions.create(
    model="small",
    messages=[
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Hello there."}]},
    ],
    max_completion_tokens=50, temperature=0.2, seed=1, user="u-1",
)
assert answer.choices[0].message.content == "I can help with that: Hello there.", answer

# Client tools on a catalog model: the offline provider calls a tool it is asked for by name.
tools = [{"type": "function", "function": {
    "name": "lookup", "description": "Look an order up",
    "parameters": {"type": "object", "properties": {"id": {"type": "string"}}}}}]
asked = [{"role": "user", "content": 'call lookup with {"id": "A-1"}'}]
answer = client.chat.completions.create(model="small", tools=tools, messages=asked)
call = answer.choices[0].message.tool_calls[0]
assert answer.choices[0].finish_reason == "tool_calls", answer
assert (call.function.name, call.function.arguments) == ("lookup", '{"id": "A-1"}'), call
answer = client.chat.completions.create(model="small", tools=tools, messages=asked + [
    answer.choices[0].message.model_dump(exclude_none=True),
    {"role": "tool", "tool_call_id": call.id, "content": '{"status": "shipped"}'},
])
assert "shipped" in answer.choices[0].message.content, answer

text, usage = "", None
for chunk in client.chat.completions.create(
        model="agent/general", stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "Hello there."}]):
    if chunk.choices and chunk.choices[0].delta.content:
        text += chunk.choices[0].delta.content
    if chunk.usage:
        usage = chunk.usage
assert text == "I can help with that: Hello there.", text
assert usage is not None and usage.total_tokens > 0, usage

failures = [
    (openai.AuthenticationError, "invalid_api_key",
     lambda: OpenAI(base_url=base + "/v1", api_key="agk_nope", max_retries=0).models.list()),
    (openai.NotFoundError, "model_not_found",
     lambda: client.chat.completions.create(
         model="gpt-9", messages=[{"role": "user", "content": "x"}])),
    (openai.BadRequestError, "invalid_request",
     lambda: client.chat.completions.create(
         model="small", messages=[{"role": "system", "content": "x"}])),
    (openai.BadRequestError, "invalid_request",
     lambda: client.chat.completions.create(model="small", messages=[{"role": "user", "content": [
         {"type": "image_url", "image_url": {"url": "http://example.com/x.png"}}]}])),
]
for expected, code, call in failures:
    try:
        call()
    except expected as e:
        assert e.code == code, (code, e.body)
    else:
        raise AssertionError(f"no {expected.__name__}")
print("ok: models, agent, catalog model, client tools, streaming with usage, 4 error cases")
